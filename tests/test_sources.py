"""Decoders deliver every frame once, in order, with the same indices and times."""

from __future__ import annotations

import pytest
import torch

from vidpipe.engine import FrameProducer, _Rebatcher
from vidpipe.errors import VidpipeError
from vidpipe.sources import FrameBatch, NvdecSource, PyAVSource, probe, scan_packets
from vidpipe.synth import make_clip, repeat_clip

CLIPS = {
    "h264-bframes": dict(frames=30, width=64, height=48),
    "h264-odd-size": dict(frames=10, width=322, height=242),
    "single-frame": dict(frames=1, width=64, height=48),
    "hevc": dict(frames=12, width=192, height=144, codec="libx265"),  # NVDEC's HEVC minimum is 144
    "vfr": dict(frames=20, width=64, height=48, vfr=True),
    "no-bframes": dict(frames=15, width=48, height=32, bframes=False),
    "rotated": dict(frames=10, width=64, height=48, rotation=90),
}


def decode_all(source, batch_size=7):
    frames, indices, times = [], [], []
    for b in source.batches(batch_size):
        assert isinstance(b, FrameBatch) and b.frames.dtype == torch.uint8 and b.frames.shape[1] == 3
        frames.append(b.frames.cpu())
        indices += b.indices
        times += b.times
    return torch.cat(frames), indices, times


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_pyav_every_frame_once_in_order(tmp_path, name):
    spec = CLIPS[name]
    path = make_clip(tmp_path / f"{name}.mp4", **spec)
    frames, indices, times = decode_all(PyAVSource(path))
    assert indices == list(range(spec["frames"]))
    assert frames.shape == (spec["frames"], 3, spec["height"], spec["width"])
    assert times[0] == 0.0 and all(a < b for a, b in zip(times, times[1:]))


def test_rotation_metadata_is_reported_not_applied(tmp_path):
    import av

    path = make_clip(tmp_path / "r.mp4", frames=4, width=64, height=48, rotation=90)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).rotation == 90
    frames, _, _ = decode_all(PyAVSource(path))
    assert frames.shape == (4, 3, 48, 64)  # as stored


def test_pyav_max_frames(clip):
    _, indices, _ = decode_all(PyAVSource(clip, max_frames=10), batch_size=4)
    assert indices == list(range(10))


def test_shared_clip_counts(shared_clip):
    info = probe(shared_clip)
    assert (info.width, info.height, info.num_frames) == (384, 288, 1552)
    n = sum(len(b) for b in PyAVSource(shared_clip, max_frames=300).batches(64))
    assert n == 300


def test_keyframes_and_repeat(tmp_path):
    import av

    path = make_clip(tmp_path / "a.mp4", frames=36, gop=12)
    with av.open(str(path)) as c:
        decoded_keys = [i for i, f in enumerate(c.decode(video=0)) if f.key_frame]
    assert list(scan_packets(str(path)).keyframes) == decoded_keys and len(decoded_keys) >= 3
    long = repeat_clip(path, tmp_path / "long.mp4", 3)
    _, indices, times = decode_all(PyAVSource(long), batch_size=16)
    assert indices == list(range(108)) and all(a < b for a, b in zip(times, times[1:]))


def test_rebatcher_regroups_exactly():
    rb = _Rebatcher(8)
    out = []
    start = 0
    for n in (3, 5, 8, 2, 9, 1):
        chunk = FrameBatch("v", torch.arange(start, start + n).view(n, 1, 1, 1).expand(n, 3, 1, 1).to(torch.uint8),
                           list(range(start, start + n)), [float(i) for i in range(start, start + n)])
        out += list(rb.push(chunk))
        start += n
    out += list(rb.flush())
    assert [len(b) for b in out] == [8, 8, 8, 4]
    assert [i for b in out for i in b.indices] == list(range(28))
    assert torch.equal(torch.cat([b.frames[:, 0, 0, 0] for b in out]), torch.arange(28, dtype=torch.uint8))


@pytest.mark.parametrize("threaded", [False, True])
def test_producer_orders_several_inputs_and_reports_bad_ones(tmp_path, threaded):
    a = make_clip(tmp_path / "a.mp4", frames=9)
    b = make_clip(tmp_path / "b.mp4", frames=5, width=32, height=32)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    items = list(FrameProducer([str(a), str(bad), str(b)], "pyav", torch.device("cpu"), 4,
                               threaded=threaded, workers=2))
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["VideoStart", "FrameBatch", "FrameBatch", "FrameBatch", "VideoEnd", "VideoEnd",
                     "VideoStart", "FrameBatch", "FrameBatch", "VideoEnd"]
    assert items[5].error and "not a readable video" in items[5].error and items[5].fatal
    assert items[4].ok and items[4].decoded == 9 and items[9].decoded == 5


@pytest.mark.parametrize("case,message", [
    ("missing", "no such file"), ("empty", "empty file"), ("text", "not a readable video"),
    ("audio", "no video stream"), ("dir", "is a directory"),
])
def test_probe_errors(tmp_path, case, message):
    path = tmp_path / "x.mp4"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("hello\n" * 100)
    elif case == "audio":
        import av
        import numpy as np
        path = tmp_path / "x.m4a"
        with av.open(str(path), "w") as out:
            s = out.add_stream("aac", rate=16000)
            for i in range(10):
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, i * 1024
                for p in s.encode(frame):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
    elif case == "dir":
        path = tmp_path
    with pytest.raises(VidpipeError, match=message):
        probe(path)


@pytest.mark.nvdec
@pytest.mark.parametrize("name", sorted(CLIPS))
def test_nvdec_matches_pyav(tmp_path, name):
    spec = CLIPS[name]
    path = make_clip(tmp_path / f"{name}.mp4", **spec)
    f_nv, i_nv, t_nv = decode_all(NvdecSource(path, "cuda"))
    f_av, i_av, t_av = decode_all(PyAVSource(path, "cuda"))
    assert i_nv == i_av and len(i_nv) == spec["frames"]
    assert t_nv == pytest.approx(t_av, abs=1e-6)
    # NVDEC's and FFmpeg's YUV->RGB conversions differ by rounding, not by frame
    assert (f_nv.float() - f_av.float()).abs().mean() < 3.0


@pytest.mark.nvdec
def test_nvdec_segments_reassemble_exactly(shared_clip):
    whole, idx, times = decode_all(NvdecSource(shared_clip, "cuda"), batch_size=64)
    items = list(FrameProducer([str(shared_clip)], "nvdec", torch.device("cuda"), 64, workers=4))
    batches = [i for i in items if isinstance(i, FrameBatch)]
    assert [i for b in batches for i in b.indices] == idx
    assert [t for b in batches for t in b.times] == times
    assert torch.equal(torch.cat([b.frames.cpu() for b in batches]), whole)
    assert all(len(b) == 64 for b in batches[:-1])


@pytest.mark.nvdec
def test_pooled_nvdec_sessions_switch_files(tmp_path):
    """Decode threads re-point pooled NVDEC sessions at each new file (different sizes too)."""
    a = make_clip(tmp_path / "a.mp4", frames=40, width=320, height=240, gop=10)
    b = make_clip(tmp_path / "b.mp4", frames=25, width=256, height=144, gop=10, seed=3)
    expect = {str(p): decode_all(NvdecSource(p, "cuda"), batch_size=8)[0] for p in (a, b)}
    for _ in range(2):  # the second round finds the sessions of the first in the pool
        items = list(FrameProducer([str(a), str(b), str(a)], "nvdec", torch.device("cuda"), 8, workers=2,
                                   segment_min=8))
        got: dict[str, list] = {}
        for item in items:
            if isinstance(item, FrameBatch):
                got.setdefault(item.video, []).append(item.frames.cpu())
        for path, frames in expect.items():
            repeats = 2 if path == str(a) else 1
            assert torch.equal(torch.cat(got[path]), torch.cat([frames] * repeats))
