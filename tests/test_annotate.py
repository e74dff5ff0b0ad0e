"""Annotated video: detections drawn on the frames' device (outlines exact on fresh random boxes,
labels spelled as Python formats them, GPU equal to CPU), lines and zones with their counts glyph
for glyph, converted to yuv420p as FFmpeg converts, and a run's MP4 decoded back: every frame
there, the box drawn where it was detected, the line where it was given."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
import torch

from drawn_clip import encode_rgb
from vidpipe import Config, Detector
from vidpipe.analytics import parse_line, parse_zone
from vidpipe.draw import BAR, REGION, TEXT, Regions, _atlas, _cover, _labels, annotate, to_yuv420
from vidpipe.engine import run
from vidpipe.models.boxes import BoxesFamily
from vidpipe.sinks import RollingVideoSink, VideoSink, open_sink

NAMES = ("person", "bicycle", "traffic light")


def random_detections(seed: int, n: int = 3, d: int = 7, h: int = 90, w: int = 130, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, d, 2, generator=g) * torch.tensor([w, h])
    wh = torch.rand(n, d, 2, generator=g) * torch.tensor([w, h]) / 2
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)  # some reach past the frame
    labels = torch.randint(0, len(NAMES), (n, d), generator=g)
    scores = torch.rand(n, d, generator=g)
    counts = torch.randint(0, d + 1, (n,), generator=g)
    ids = torch.randint(-1, 20000, (n, d), generator=g)
    frames = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    return [t.to(device) for t in (frames, boxes, labels, scores, counts, ids)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rectangles_count_exactly_their_pixels(seed):
    frames, boxes, _, _, counts, _ = random_detections(seed)
    n, _, h, w = frames.shape
    valid = torch.arange(boxes.shape[1]) < counts[:, None]
    b = boxes.round().long()
    x1, x2 = b[..., 0].clamp(0, w - 1), b[..., 2].clamp(0, w - 1)
    y1, y2 = b[..., 1].clamp(0, h - 1), b[..., 3].clamp(0, h - 1)
    expect = np.zeros((n, h, w), int)
    for i in range(n):
        for j in range(int(counts[i])):
            expect[i, y1[i, j]:y2[i, j] + 1, x1[i, j]:x2[i, j] + 1] += 1
    assert np.array_equal(_cover(n, h, w, x1, y1, x2, y2, valid).numpy(), expect)


@pytest.mark.parametrize("seed", [0, 1])
def test_labels_read_as_python_writes_them(seed):
    _, _, labels, scores, _, ids = random_detections(seed)
    for tracked in (True, False):
        codes, length = _labels(labels, scores, ids if tracked else None, NAMES)
        for c, k, lab, s, t in zip(codes.view(-1, codes.shape[-1]).tolist(), length.view(-1).tolist(),
                                   labels.view(-1).tolist(), scores.view(-1).tolist(), ids.view(-1).tolist()):
            track = (f" #{t % 10000}" if t >= 0 else " #-") if tracked else ""
            expect = f"{NAMES[lab]}{track} .{min(round(s * 100), 99):02d}"[:24]
            assert "".join(map(chr, c[:k])) == expect


def test_outlines_are_drawn_and_the_rest_is_untouched():
    frames, boxes, labels, scores, counts, ids = random_detections(5)
    out = annotate(frames, boxes, labels, scores, counts, ids, NAMES)
    changed = (out != frames).any(1)
    n, _, h, w = frames.shape
    b = boxes.round().long()
    for i in range(n):
        if counts[i] == 0:
            assert not changed[i].any()
        for j in range(int(counts[i])):
            x1, x2 = int(b[i, j, 0].clamp(0, w - 1)), int(b[i, j, 2].clamp(0, w - 1))
            y2 = int(b[i, j, 3].clamp(0, h - 1))
            bottom = out[i, :, y2, x1:x2 + 1]  # the bottom edge: outline green unless a later label covers it
            assert ((bottom == torch.tensor([0, 255, 0])[:, None]).all(0) | (bottom == 0).all(0)
                    | (bottom == 255).all(0)).all()


def test_lines_and_zones_are_drawn_with_their_counts():
    """A line and a zone on frames without detections: the outlines in their colour, everything else
    untouched but the labels, and each label spelled glyph for glyph from that frame's (fresh random)
    counts."""
    g = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    n, h, w = 4, 120, 200
    frames = torch.from_numpy(g.integers(0, 256, (n, 3, h, w), dtype=np.uint8))
    line, zone = parse_line("door:20,60,60,110"), parse_zone("lobby:120,95,190,95,190,118,120,118")
    regions = Regions.make(h, w, [line], [zone], torch.device("cpu"))
    counted = [{"lines": {"door": {"in": {"person": int(g.integers(0, 50)), "car": int(g.integers(0, 50))},
                                   "out": {"person": int(g.integers(0, 50))}}},
                "zones": {"lobby": {"car": int(g.integers(0, 9))}}} for _ in range(n)]
    texts = regions.labels(counted, n)
    zeros = torch.zeros(n, 0)
    out = annotate(frames, zeros.view(n, 0, 4), zeros.long(), zeros, torch.zeros(n, dtype=torch.long), None, NAMES,
                   regions, texts)
    atlas, gh, gw = _atlas("cpu")
    labelled = torch.zeros(h, w, dtype=torch.bool)
    for i in range(n):
        c = counted[i]
        crossed = sum(c["lines"]["door"]["in"].values()), c["lines"]["door"]["out"]["person"]
        assert texts[i] == ["door in {} out {}".format(*crossed), f"lobby {c['zones']['lobby']['car']}"]
        for text, x, top in zip(texts[i], regions.x.tolist(), regions.top.tolist()):
            labelled[top:top + gh, x:x + len(text) * gw] = True
            for k, ch in enumerate(text):
                cell = out[i, :, top:top + gh, x + k * gw:x + (k + 1) * gw]
                on = atlas[ord(ch)][:, :cell.shape[-1]]
                assert (cell[:, on] == torch.tensor(TEXT)[:, None]).all() and \
                    (cell[:, ~on] == torch.tensor(BAR)[:, None]).all(), (i, text, k)
    outline = regions.outline & ~labelled
    assert outline[90, 40:50].any() and outline[95, 150] and outline[110, 190]  # the line, the zone's edges
    assert (out.permute(0, 2, 3, 1)[:, outline] == torch.tensor(REGION)).all()
    rest = ~(regions.outline | labelled)
    assert torch.equal(out.permute(0, 2, 3, 1)[:, rest], frames.permute(0, 2, 3, 1)[:, rest])


def test_yuv420_as_ffmpeg_converts():
    """On smooth random pictures (chroma subsampling filters differ only on pixel noise)."""
    coarse = torch.rand(4, 3, 8, 12, generator=torch.Generator().manual_seed(3)) * 255
    frames = torch.nn.functional.interpolate(coarse, size=(64, 96), mode="bilinear").round().to(torch.uint8)
    ours = to_yuv420(frames).numpy().astype(int)
    for i in range(len(frames)):
        rgb = av.VideoFrame.from_ndarray(frames[i].permute(1, 2, 0).contiguous().numpy(), format="rgb24")
        ref = rgb.reformat(format="yuv420p").to_ndarray().astype(int)
        assert np.abs(ours[i] - ref).max() <= 3 and np.abs(ours[i] - ref).mean() < 1


@pytest.mark.cuda
def test_drawing_on_the_gpu_equals_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    line, zone = parse_line("door:5,5,120,80"), parse_zone("lobby:60,40,125,40,125,85")
    for seed in (0, 1):
        cpu = random_detections(seed)
        gpu = random_detections(seed, device="cuda")
        assert torch.equal(annotate(*cpu, NAMES), annotate(*gpu, NAMES).cpu())
        assert annotate(*gpu, NAMES).is_cuda
        n, _, h, w = cpu[0].shape
        texts = [[f"door in {i} out {seed}", f"lobby {i + 1}"] for i in range(n)]
        on_cpu = annotate(*cpu, NAMES, Regions.make(h, w, [line], [zone], torch.device("cpu")), texts)
        on_gpu = annotate(*gpu, NAMES, Regions.make(h, w, [line], [zone], torch.device("cuda")), texts)
        assert torch.equal(on_cpu, on_gpu.cpu()) and not torch.equal(on_cpu, annotate(*cpu, NAMES))


class Spot(torch.nn.Module):
    """A box around the bright pixels (the clip's white square)."""

    def forward(self, x: torch.Tensor):
        mask = (x.float().mean(1) > 0.5).float()
        n = mask.sum((1, 2)).clamp(min=1)
        cx = (mask.sum(1) * torch.arange(x.shape[-1], device=x.device)).sum(1) / n
        cy = (mask.sum(2) * torch.arange(x.shape[-2], device=x.device)).sum(1) / n
        boxes = torch.stack([cx - 10, cy - 10, cx + 10, cy + 10], 1)[:, None]
        return boxes, x.new_full((x.shape[0], 1), 0.9), torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)


def square_clip(path, frames: int = 30):
    images = [np.zeros((96, 160, 3), np.uint8) for _ in range(frames)]
    for f, img in enumerate(images):
        img[40:52, 10 + 4 * f:22 + 4 * f] = 255
    return encode_rgb(path, images)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_a_run_writes_every_frame_with_its_box_drawn(tmp_path, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("trackers")  # the run tracks (labels with track ids)
    clip = square_clip(tmp_path / "square.mp4")
    det = Detector(Config(device=device, batch_size=8, track=True), model=BoxesFamily(Spot(), ["thing"]))
    video = tmp_path / "annotated" / "square.mp4"
    report = run(det, [str(clip)], lambda v: open_sink("jsonl", tmp_path / "o.jsonl", v.path, v.width, v.height),
                 video_for=lambda v: VideoSink(video, v.width, v.height, v.fps, det.classes))
    assert not report.failed
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24").astype(int) for f in c.decode(video=0)]
    assert len(frames) == 30
    for f, img in enumerate(frames):
        cx = 16 + 4 * f  # the square covers x 10+4f .. 21+4f; the box is 20 px around its centre
        left = img[40:52, round(cx - 10.5)]
        assert (left[:, 1] > 150).all() and (left[:, 0] < 110).all() and (left[:, 2] < 110).all(), f  # green
        assert (img[44:48, cx - 3:cx + 3] > 180).all()  # the square itself is untouched


def test_a_run_draws_its_line_and_zone_in_every_frame(tmp_path):
    """The run's own counts reach its video: the zone's label shows, frame by frame, the number of
    objects the JSON output says were inside (the square enters the zone half-way)."""
    import json

    pytest.importorskip("supervision")
    clip = square_clip(tmp_path / "square.mp4", frames=20)
    lines, zones = ("door:80,0,80,95",), ("right:60,30,158,30,158,94,60,94",)
    det = Detector(Config(device="cpu", batch_size=8, track=True, lines=lines, zones=zones),
                   model=BoxesFamily(Spot(), ["thing"]))
    video = tmp_path / "annotated" / "square.mp4"
    report = run(det, [str(clip)], lambda v: open_sink("jsonl", tmp_path / "o.jsonl", v.path, v.width, v.height),
                 video_for=lambda v: VideoSink(video, v.width, v.height, v.fps, det.classes, lines, zones))
    assert not report.failed
    inside = [sum(json.loads(x)["zones"]["right"].values()) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert 0 in inside and 1 in inside
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24").astype(int) for f in c.decode(video=0)]
    assert len(frames) == 20
    regions = Regions.make(96, 160, [], [parse_zone(zones[0])], torch.device("cpu"))
    atlas, gh, gw = _atlas("cpu")
    x, top = int(regions.x[0]) + len("right ") * gw, int(regions.top[0])
    digits = {n: atlas[ord(str(n))].numpy() for n in (0, 1)}
    for f, img in enumerate(frames):
        for y, x0 in ((75, 80), (90, 80), (78, 158), (94, 130)):  # the line, the zone's right and bottom edges
            r, g, b = img[y, x0]
            assert r > 150 and g < 110 and b > 150, (f, y, x0, img[y, x0])  # magenta
        bright = img[top:top + gh, x:x + gw].mean(-1) > 128  # the count's glyph, white on the dark bar
        shown = max(digits, key=lambda n: (digits[n] == bright).sum())
        assert shown == inside[f], f


def test_frames_of_another_size_are_scaled_to_the_videos(tmp_path):
    """A source that changed resolution: frames larger and smaller than the video's are scaled to its
    size (not cropped: the bright right half of a 128x96 frame stays on the right), and the zone is
    drawn on frames of each size (its outline remade for each)."""
    sink = VideoSink(tmp_path / "v.mp4", 64, 48, 10.0, zones=("box:8,8,40,8,40,30,8,30",))
    for i, (h, w) in enumerate(((48, 64), (96, 128), (24, 32))):
        frames = torch.full((2, 3, h, w), 20, dtype=torch.uint8)
        frames[..., w // 2:] = 220
        sink.write(frames, None, [2 * i, 2 * i + 1], np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.int64),
                   np.zeros((2, 0), np.float32), np.zeros(2, np.int64), counted=[{"zones": {"box": {}}}] * 2)
    sink.close(complete=True)
    with av.open(str(tmp_path / "v.mp4")) as c:
        got = [f.to_ndarray(format="rgb24").astype(int) for f in c.decode(video=0)]
    assert len(got) == 6 and all(img.shape == (48, 64, 3) for img in got)
    for img in got:
        assert abs(img[40:, 22:30].mean() - 20) < 8 and abs(img[40:, 36:60].mean() - 220) < 8  # halves kept
        magenta = (img[..., 0] > 120) & (img[..., 1] < 80) & (img[..., 2] > 120)
        assert magenta.sum() >= 8  # the zone, drawn in the frame's own pixels before scaling


def test_a_live_video_rolls_into_files_of_its_seconds(tmp_path):
    """Frames 0..34 of a 10 frames/s stream (frame 12 dropped) in batches that straddle the cuts, one
    second per file: four files cut at frames 10, 20 and 30, each starting at time 0, each frame
    where its index says (its brightness encodes the index)."""
    sink = RollingVideoSink(tmp_path / "v", "cam", 64, 48, 10.0, seconds=1.0)
    indices = [i for i in range(35) if i != 12]
    for batch in ([0, 7], [7, 16], [16, 30], [30, 35]):
        idx = [i for i in indices if batch[0] <= i < batch[1]]
        frames = torch.tensor([i * 7 for i in idx], dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 48, 64)
        n = len(idx)
        sink.write(frames, None, idx, np.zeros((n, 0, 4), np.float32), np.zeros((n, 0), np.int64),
                   np.zeros((n, 0), np.float32), np.zeros(n, np.int64))
    sink.close(complete=True)
    assert [p.name for p in sink.files] == [f"cam-{k:07d}.mp4" for k in (0, 10, 20, 30)]
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == [p.name for p in sink.files]  # no partials
    for first, path in zip((0, 10, 20, 30), sink.files):
        with av.open(str(path)) as c:
            got = [(round(float(f.time) * 10), f.to_ndarray(format="rgb24").mean()) for f in c.decode(video=0)]
        expect = [i for i in indices if first <= i < first + 10]
        assert [t for t, _ in got] == [i - first for i in expect], path
        assert all(abs(m - i * 7) < 4 for (_, m), i in zip(got, expect)), path


def test_save_video_of_a_live_input_rolls(tmp_path):
    """The command line: a --loop input (live) with --save-video writes files of --video-segment
    seconds, every frame in one of them; a file input writes one."""
    import subprocess
    import sys

    from vidpipe.synth import make_clip

    clip = make_clip(tmp_path / "clip.mp4", frames=12, width=64, height=48, fps=30, bframes=False)
    base = [sys.executable, "-m", "vidpipe.cli", "detect", str(clip), "--weights", "random", "--device", "cpu"]
    r = subprocess.run([*base, "-o", str(tmp_path / "o.jsonl"), "--loop", "--max-frames", "24", "--live-policy", "all",
                        "--save-video", str(tmp_path / "v"), "--video-segment", "0.4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "v").iterdir())
    assert [p.name for p in files] == ["clip-0000000.mp4", "clip-0000012.mp4"]
    for path in files:
        with av.open(str(path)) as c:
            assert sum(1 for _ in c.decode(video=0)) == 12
    r = subprocess.run([*base, "-o", str(tmp_path / "f.jsonl"), "--save-video", str(tmp_path / "w")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and [p.name for p in (tmp_path / "w").iterdir()] == ["clip.mp4"], r.stderr


def test_save_video_with_worker_processes_is_refused_in_one_line(tmp_path):
    import subprocess
    import sys

    clip = square_clip(tmp_path / "square.mp4", frames=2)
    r = subprocess.run([sys.executable, "-m", "vidpipe.cli", "detect", str(clip), "-o", str(tmp_path / "o.jsonl"),
                        "--save-video", str(tmp_path / "v"), "--devices", "cpu"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("vidpipe: error: --save-video runs in")
