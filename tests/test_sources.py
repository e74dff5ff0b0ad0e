"""Decoders deliver every frame once, in order, with the same indices and times."""

from __future__ import annotations

import gc
import itertools
import queue
import threading
import time
import weakref
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from av.bitstream import BitStreamFilterContext

from ordering import by_video, in_order
from vidpipe.graphs import Batch
from vidpipe.engine import BatchResult, Chunk, FrameProducer, Unit, UnitEnd, VideoEnd, VideoStart
from vidpipe.engine.batching import Batcher, padding
from vidpipe.engine.decode import DONE
from vidpipe.engine.order import Orderer
from vidpipe.engine.plan import TRACKED_SEGMENT_FRAMES, plan_units
from vidpipe.errors import VidpipeError
from vidpipe.sources import (FFmpegNvdecSource, FrameBatch, NvdecSource, NvdecStreamSource, PyAVSource, VideoInfo,
                             _annexb_filter, _open, ffmpeg_nvdec_available, open_source, probe, scan_packets)
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


@pytest.mark.parametrize("seed", range(5))
def test_batches_mix_units_and_results_come_back_in_order(seed):
    """Chunks of several files' segments arrive interleaved at random (each segment's own in
    order); they are packed into full batches across segments, and the results come out in each
    file's order, one VideoStart/VideoEnd per file, every frame once."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: int(torch.randint(n, (1,), generator=g))  # noqa: E731
    units, seq = [], 0
    for f in range(3):
        n_seg, length = 1 + rand(4), 5 + rand(20)
        info = VideoInfo(f"v{f}", 8, 8, n_seg * length, 30.0, "h264", None)
        for s in range(n_seg):
            units.append(Unit(seq, info, info.path, s * length, (s + 1) * length, first=s == 0, last=s == n_seg - 1))
            seq += 1
    streams = []
    for u in units:  # each unit: chunks of 1-6 frames, then its end
        items, i = [], u.start
        while i < u.stop:
            n = min(1 + rand(6), u.stop - i)
            items.append(Chunk(u, FrameBatch(u.path, torch.full((n, 3, 1, 1), u.seq, dtype=torch.uint8),
                                             list(range(i, i + n)), [i / 30 for i in range(i, i + n)])))
            i += n
        streams.append(items + [UnitEnd(u, u.stop - u.start)])
    released = []
    batcher = Batcher(lambda h, w: Batch(8))
    order = Orderer(lambda: released.append(1), lambda info: info.num_frames)
    out = []

    def launch(batch, pieces):
        frames = torch.cat(batch.parts)
        assert len(frames) == batch.n == sum(len(p.indices) for p in pieces) <= 8
        row = 0
        for p in pieces:  # the rows hold the frames of the units the pieces name
            assert (frames[row:row + len(p.indices)] == p.unit.seq).all()
            order.add(p.unit, BatchResult(p.unit.info, p.indices, p.times, None, None, row))
            row += len(p.indices)

    while any(streams):
        live = [s for s in streams if s]
        item = live[rand(len(live))].pop(0)
        if isinstance(item, Chunk):
            for batch in batcher.add(item):
                launch(*batch)
        else:
            order.end(item)
        if rand(4) == 0:  # the GPU went idle now and then: short batches
            for batch in batcher.partial():
                launch(*batch)
        out += list(order.ready())
    for batch in batcher.partial():
        launch(*batch)
    out += list(order.ready())
    assert len(released) == len(units)
    for f in range(3):
        items = [o for o in out if (o.info.path if not isinstance(o, VideoEnd) else o.path) == f"v{f}"]
        assert isinstance(items[0], VideoStart) and isinstance(items[-1], VideoEnd) and items[-1].ok
        frames = [i for r in items[1:-1] for i in r.indices]
        assert frames == list(range(items[0].info.num_frames)) and items[-1].decoded == len(frames)
    starts = [o.info.path for o in out if isinstance(o, VideoStart)]
    assert sorted(starts) == ["v0", "v1", "v2"]  # each once; inputs interleave, each in its own order


def test_a_replaced_live_chunk_counts_each_of_its_frames_dropped():
    """Policy "latest": a live chunk replaced before it was taken counts its frames (two when a decode
    call gave two), not one."""
    producer = FrameProducer(["cam"], "pyav", torch.device("cpu"), 4)
    producer.start()  # no input can be probed: its end comes first, then nothing
    producer.close()
    unit = Unit(0, None, "cam")

    def chunk(first: int, n: int) -> Chunk:
        frames = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
        return Chunk(unit, FrameBatch("cam", frames, list(range(first, first + n)), [0.0] * n), admitted=False)

    producer._newest_in(chunk(0, 2))
    producer._newest_in(chunk(2, 1))  # replaces the waiting two
    assert producer._dropped == {0: 2} and producer._newest[0].batch.indices == [2]


def test_live_frames_dropped_in_a_burst_are_told_from_frames_the_consumer_left():
    """Policy "latest": a frame replaced soon after it came (the decoder handed two over at once) counts
    as dropped in a burst; one that waited a frame period and more for a consumer that did not come
    counts as dropped only. The unit's end carries both counts."""
    producer = FrameProducer(["cam"], "pyav", torch.device("cpu"), 4)
    producer.start()  # no input can be probed: its end comes first, then nothing
    producer.close()
    unit = Unit(0, VideoInfo("cam", 8, 8, 0, 25.0, "h264", None), "cam")  # a frame period: 40 ms

    def chunk(i: int) -> Chunk:
        return Chunk(unit, FrameBatch("cam", torch.zeros(1, 3, 2, 2, dtype=torch.uint8), [i], [i / 25]),
                     admitted=False)

    producer._put(chunk(0))
    producer._put(chunk(1))  # at once: a burst
    time.sleep(0.05)
    producer._put(chunk(2))  # frame 1 waited 50 ms: the consumer was late
    producer._put(chunk(3))  # a burst again
    producer._put(UnitEnd(unit, decoded=4))
    items = [producer._ready.get_nowait()[-1] for _ in range(producer._ready.qsize())]
    end = next(i for i in items if isinstance(i, UnitEnd) and i.unit is unit)
    assert (end.dropped, end.dropped_in_bursts, end.decoded) == (3, 2, 1)


def test_an_input_that_has_not_ended_holds_back_no_other():
    """A live stream never ends: the inputs after it are emitted, each whole and in its own order,
    while its own results keep coming out as they are ready."""
    a, b = VideoInfo("live", 8, 8, 0, 30.0, "h264", None), VideoInfo("file", 8, 8, 6, 30.0, "h264", None)
    live, file = Unit(0, a, "live", 0, None), Unit(1, b, "file", 0, 6)
    released = []
    order = Orderer(lambda: released.append(1), lambda info: info.num_frames)
    order.add(file, BatchResult(b, [0, 1, 2, 3, 4, 5], [0.0] * 6, None, None))
    order.end(UnitEnd(file, 6))
    order.add(live, BatchResult(a, [0, 1], [0.0, 0.03], None, None))
    out = list(order.ready())
    by_video = {v: [type(o).__name__ for o in out if (o.path if isinstance(o, VideoEnd) else o.info.path) == v]
                for v in ("live", "file")}
    assert by_video == {"live": ["VideoStart", "BatchResult"], "file": ["VideoStart", "BatchResult", "VideoEnd"]}
    assert len(released) == 1  # the file's unit; the stream's is still open


def test_short_batches_only_within_the_padding_or_when_stale(tmp_path):
    """A one-file run may send batches out short by the padding its last batch would carry;
    other batches go out short once their first frames have waited long enough."""
    clip = make_clip(tmp_path / "c.mp4", frames=21)
    assert padding([str(clip)], lambda info: info.num_frames, 8) == 3
    assert padding([str(clip)] * 2, lambda info: info.num_frames, 8) == 0  # lengths unknown up front
    assert padding([str(tmp_path / "missing.mp4")], lambda info: info.num_frames, 8) == 0
    info = VideoInfo("v", 8, 8, 30, 30.0, "h264", None)
    units = {1: Unit(0, info, "v", 0, 30), 2: Unit(1, info, "w", 0, 30)}  # a frame size each
    batcher = Batcher(lambda h, w: Batch(8))

    def chunk(start: int, n: int, size: int = 1) -> Chunk:
        return Chunk(units[size], FrameBatch("v", torch.zeros(n, 3, size, size, dtype=torch.uint8),
                                             list(range(start, start + n)), [0.0] * n))

    assert list(batcher.add(chunk(0, 5))) == [] and list(batcher.add(chunk(5, 6, size=2))) == []
    assert batcher.partial(short=1) == [] and batcher.stale(wait=60.0) == []  # 3 and 2 frames short
    [(batch, pieces)] = batcher.partial(short=4)  # not both: 5 short in all
    assert batch.n == 5 and [p.indices for p in pieces] == [[0, 1, 2, 3, 4]]
    assert [b.n for b, _ in batcher.stale(wait=0.0)] == [6] and batcher.open == {}


@pytest.mark.parametrize("threaded", [False, True])
def test_producer_orders_several_inputs_and_reports_bad_ones(tmp_path, threaded):
    a = make_clip(tmp_path / "a.mp4", frames=9)
    b = make_clip(tmp_path / "b.mp4", frames=5, width=32, height=32)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    items = list(in_order(FrameProducer([str(a), str(bad), str(b)], "pyav", torch.device("cpu"), 8,
                                        threaded=threaded, workers=2)))
    groups = {(g[0].info.path if isinstance(g[0], VideoStart) else g[0].path): g for g in by_video(items)}
    assert len(groups) == 3
    for path, n in ((str(a), 9), (str(b), 5)):
        kinds = [type(i).__name__ for i in groups[path]]
        assert kinds[0] == "VideoStart" and kinds[-1] == "VideoEnd" and set(kinds[1:-1]) == {"FrameBatch"}
        assert groups[path][-1].ok and groups[path][-1].decoded == n
        assert [j for i in groups[path][1:-1] for j in i.indices] == list(range(n))
    [end] = groups[str(bad)]
    assert end.error and "not a readable video" in end.error and end.fatal


def test_producer_bounds_the_chunks_that_exist(tmp_path):
    """Workers wait for room before they allocate a chunk: a consumer that frees nothing gets
    ``workers + 2`` chunks, and each freed chunk lets one more be decoded."""
    clips = [str(make_clip(tmp_path / f"{i}.mp4", frames=40)) for i in range(2)]
    producer = FrameProducer(clips, "pyav", torch.device("cpu"), 8, workers=2)
    try:
        def chunks_until_quiet() -> int:
            n = 0
            while (item := producer.get(timeout=1.0)) is not None:
                n += isinstance(item, Chunk)
            return n

        assert chunks_until_quiet() == 4
        producer.free()
        producer.free()
        assert chunks_until_quiet() == 2
    finally:
        producer.close()


def test_the_consumer_takes_every_ready_item_in_one_turn(tmp_path):
    """``get_many`` hands over every item decoded while the consumer was busy, in order, and DONE
    after the last: the scheduler's turn (one copy into the graph's input, one query of the GPU) is
    per ready set, not per frame."""
    clips = [str(make_clip(tmp_path / f"{i}.mp4", frames=24)) for i in range(3)]
    producer = FrameProducer(clips, "pyav", torch.device("cpu"), 4, workers=3)
    turns, items = [], []
    try:
        while (got := producer.get_many(timeout=5.0)) is not DONE:
            turns.append(len(got))
            items += got
            for item in got:
                if isinstance(item, Chunk):
                    producer.free()
            time.sleep(0.05)  # a busy consumer: the workers decode meanwhile
    finally:
        producer.close()
    assert max(turns) > 1 and sum(turns) == len(items)
    for u in range(3):
        mine = [i for i in items if i.unit.seq == u]
        assert [i for c in mine[:-1] for i in c.batch.indices] == list(range(24)) and isinstance(mine[-1], UnitEnd)
    # Cameras whose frames keep coming: a turn takes what was waiting when it began, and ends.
    arriving = itertools.count()

    class Endless(queue.PriorityQueue):
        def get_nowait(self):
            item = super().get_nowait()
            self.put((0, next(arriving), "later"))  # another comes as each is taken
            return item

    producer._ready = Endless()
    for _ in range(5):
        producer._ready.put((0, next(arriving), "waiting"))
    assert producer.get_many() == ["waiting"] * 5


def test_a_live_units_last_frame_comes_before_its_end(tmp_path):
    """Under ``latest`` a live frame waits in its unit's slot: when the consumer comes late, the unit's
    newest frame and its end are both waiting, and the frame must come first (the end finishes the
    unit's output)."""
    clip = str(make_clip(tmp_path / "cam.mp4", frames=6, width=64, height=48, bframes=False))
    producer = FrameProducer([clip], "pyav", torch.device("cpu"), 4, realtime=True, live_policy="latest")
    producer.start()
    time.sleep(0.6)  # six frames at 30 fps: decoded and ended while nobody took them
    try:
        items = producer.get_many(timeout=5.0)
    finally:
        producer.close()
    assert [type(i).__name__ for i in items] == ["Chunk", "UnitEnd"], items
    assert items[0].batch.indices == [5] and items[1].dropped == 5


def test_the_schedulers_turn_takes_every_chunk_that_is_ready(tmp_path, monkeypatch):
    """The scheduler's turn (with CUDA graphs one copy into a graph's input, one query of the GPU, the
    results handed on) is per ready set: with the consumer slower than its decoders, a turn takes
    several chunks, and every frame is still detected once."""
    from test_annotate import Spot
    from vidpipe import Config, Detector
    from vidpipe.engine.schedule import Scheduler, process
    from vidpipe.models.boxes import BoxesFamily

    clips = [str(make_clip(tmp_path / f"{i}.mp4", frames=24)) for i in range(3)]
    det = Detector(Config(device="cpu", batch_size=4), model=BoxesFamily(Spot(), ["thing"]))
    turns, chunks = [], []
    commit, take = Batcher.commit, Scheduler.take
    monkeypatch.setattr(Batcher, "commit", lambda self: turns.append(1) or commit(self))
    monkeypatch.setattr(Scheduler, "take", lambda self, c: chunks.append(time.sleep(0.02)) or take(self, c))
    results = [r for r in process(det, clips) if isinstance(r, BatchResult)]
    assert sorted((r.info.path, i) for r in results for i in r.indices) == [(c, i) for c in clips for i in range(24)]
    assert len(turns) < len(chunks)


def test_a_graphs_batch_copies_its_parts_in_at_commit(tmp_path):
    """With a CUDA graph (its input stood in for on the CPU) frames added go into the input at the
    next commit, all added since the last one on their rows; the batch's frames commit first."""
    graph = SimpleNamespace(frames=torch.zeros((8, 3, 2, 2), dtype=torch.uint8), filling=None)
    parts = [torch.randint(1, 255, (k, 3, 2, 2), dtype=torch.uint8) for k in (1, 2, 1, 3)]
    batch = Batch(8, graph)
    for p in parts[:3]:
        batch.add(p)
    assert graph.filling is batch and not graph.frames.any()  # nothing copied yet
    batcher = Batcher(lambda h, w: batch)
    batcher.open[2, 2] = (batch, [])
    batcher.commit()
    assert torch.equal(graph.frames[:4], torch.cat(parts[:3])) and not graph.frames[4:].any()
    batch.add(parts[3])
    assert torch.equal(batch.frames(), torch.cat(parts)) and torch.equal(graph.frames[:7], torch.cat(parts))


def test_waiting_workers_hold_no_chunk(tmp_path, monkeypatch):
    """A worker waiting for room has handed over every chunk it made: once the consumer drops
    them, none is alive (GPU memory at 1080p was 12 workers' last chunks higher)."""
    alive = weakref.WeakSet()
    made = PyAVSource._batch

    def tracked(self, *args):
        batch = made(self, *args)
        alive.add(batch.frames)
        return batch

    monkeypatch.setattr(PyAVSource, "_batch", tracked)
    clips = [str(make_clip(tmp_path / f"{i}.mp4", frames=40)) for i in range(2)]
    producer = FrameProducer(clips, "pyav", torch.device("cpu"), 8, workers=2)
    try:
        held = []
        while (item := producer.get(timeout=1.0)) is not None:
            held.append(item)
        assert sum(isinstance(i, Chunk) for i in held) == 4 == len(alive)
        del held, item
        gc.collect()
        assert len(alive) == 0
    finally:
        producer.close()


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


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_only_packets_that_need_it_go_through_the_annexb_filter(tmp_path, codec):
    """A camera's stream (MPEG-TS here, RTSP alike) is Annex B already: NVDEC's packet path skips the
    filter for it, which would have passed each of its packets through unchanged (FFmpeg's own test,
    checked packet by packet); an MP4's packets get the filter, which rewrites every one of them."""
    spec = {"h264": {}, "hevc": dict(codec="libx265", width=192, height=144)}[codec]
    mp4 = make_clip(tmp_path / "c.mp4", frames=30, seed=int(torch.randint(1 << 30, ())), **spec)
    ts = repeat_clip(mp4, tmp_path / "c.ts", 1)
    for path, annexb in ((mp4, False), (ts, True)):
        unchanged = []
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            assert (_annexb_filter(codec, stream) is None) == annexb
            bsf = BitStreamFilterContext(f"{codec}_mp4toannexb", stream)
            for p in c.demux(stream):
                if p.size:
                    before = [(bytes(p), p.pts)]  # taken now: the filter takes the packet's data
                    unchanged.append([(bytes(q), q.pts) for q in bsf.filter(p)] == before)
        assert unchanged == [annexb] * 30


def test_leading_pictures_are_found_by_the_packet_scan(tmp_path):
    """x265's open GOPs put frames shown before a keyframe after it in decode order; x264's closed ones
    do not."""
    hevc = make_clip(tmp_path / "h.mp4", frames=24, width=192, height=144, codec="libx265", gop=12)
    h264 = make_clip(tmp_path / "a.mp4", frames=24, width=64, height=48, gop=12)
    assert scan_packets(str(hevc)).leading and not scan_packets(str(h264)).leading


@pytest.mark.nvdec
@pytest.mark.parametrize("stream_decoder", ["ffmpeg", "pynvvideocodec", "auto"])
def test_nvdec_decodes_leading_pictures_whole_and_in_parts(tmp_path, stream_decoder):
    """An open-GOP HEVC file on NVDEC, by either decoder of files SimpleDecoder cannot take (auto: the
    packet path, files' faster): every frame is FFmpeg's but for YUV->RGB rounding (SimpleDecoder was
    8-16 levels off on the two frames before the second keyframe), and parts cut at the keyframes
    reassemble the whole exactly."""
    if stream_decoder == "ffmpeg" and not ffmpeg_nvdec_available():
        pytest.skip("this PyAV does not decode on NVDEC")
    path = str(make_clip(tmp_path / "h.mp4", frames=36, width=192, height=144, codec="libx265", gop=12,
                         seed=int(torch.randint(1 << 30, ()))))
    src = open_source(path, "nvdec", torch.device("cuda"), stream_decoder=stream_decoder)
    assert type(src) is {"ffmpeg": FFmpegNvdecSource, "pynvvideocodec": NvdecStreamSource,
                         "auto": NvdecStreamSource}[stream_decoder]
    whole, idx, _ = decode_all(src)
    ref, *_ = decode_all(PyAVSource(path, "cuda"))
    assert idx == list(range(36)) and (whole.float() - ref.float()).abs().mean((1, 2, 3)).max() < 3.0
    parts = [torch.cat([b.frames.cpu() for b in src.batches(5, a, b)]) for a, b in ((0, 12), (12, 24), (24, 36))]
    assert torch.equal(torch.cat(parts), whole.cpu())


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_parts_decoded_in_one_kept_container_reassemble_the_whole(tmp_path, codec):
    """A source that keeps its container between parts (FFmpeg's NVDEC decoding: one decoder per worker
    and file) seeks in it for each part: any parts, in any order, after the file's end too, are the
    whole's frames; closing lets the container go and the source opens another."""

    class Kept(PyAVSource):
        keeps_open = True

    spec = {"h264": {}, "hevc": dict(codec="libx265", width=192, height=144)}[codec]
    path = str(make_clip(tmp_path / "a.mp4", frames=60, gop=12, seed=int(torch.randint(1 << 30, ())), **spec))
    whole, idx, _ = decode_all(PyAVSource(path))
    assert idx == list(range(60))
    src, opened = Kept(path), []
    src._container = lambda: opened.append(1) or PyAVSource._container(src)
    cuts = sorted(torch.randperm(59)[:3].add(1).tolist())
    parts = list(zip([0, *cuts], [*cuts, 60]))
    for a, b in [*parts[::-1], (0, 60), *parts]:
        got = [x for x in src.batches(5, a, b)]
        assert [i for x in got for i in x.indices] == list(range(a, b))
        assert torch.equal(torch.cat([x.frames for x in got]), whole[a:b])
    assert len(opened) == 1
    src.close()
    assert torch.equal(torch.cat([x.frames for x in src.batches(5, 30, 60)]), whole[30:]) and len(opened) == 2


def test_the_probe_names_the_pixel_format(tmp_path):
    """What open_source tells 10-bit video apart by (FFmpeg's NVDEC frames are converted from 8-bit 4:2:0)."""
    for pix_fmt in ("yuv420p", "yuv420p10le"):
        clip = make_clip(tmp_path / f"{pix_fmt}.mp4", frames=4, width=64, height=48, codec="libx265", pix_fmt=pix_fmt)
        assert probe(str(clip)).pix_fmt == pix_fmt


@pytest.mark.nvdec
def test_ten_bit_video_is_not_given_to_the_nv12_conversion(tmp_path):
    """A 10-bit HEVC file with open GOPs: FFmpeg's NVDEC frames would be P010, which the NV12 conversion
    cannot read, so PyNvVideoCodec decodes its packets instead, and every frame comes."""
    if not ffmpeg_nvdec_available():
        pytest.skip("this PyAV does not decode on NVDEC")
    path = str(make_clip(tmp_path / "h.mp4", frames=24, width=192, height=144, codec="libx265", gop=12,
                         pix_fmt="yuv420p10le"))
    src = open_source(path, "nvdec", torch.device("cuda"), stream_decoder="ffmpeg")
    assert type(src) is NvdecStreamSource
    assert decode_all(src)[1] == list(range(24))


def test_stream_timeouts_are_ffmpegs_not_a_python_callback(tmp_path, monkeypatch):
    """A stream's reads time out by FFmpeg's own socket timeouts: PyAV's (``av.open(timeout=...)``) call
    Python's clock from FFmpeg's polls, taking the GIL many times a frame from a thread that otherwise
    runs without it. Here reading a stream calls Python's clock no more often than PyAV does without
    a timeout (once a packet, from Python)."""
    import functools
    import time as time_module
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    repeat_clip(make_clip(tmp_path / "c.mp4", frames=60, width=64, height=48), tmp_path / "c.ts", 1)
    quiet = type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reader, calls, real = threading.get_ident(), [], time_module.monotonic
    monkeypatch.setattr(time_module, "monotonic",
                        lambda: (calls.append(1) if threading.get_ident() == reader else None) or real())
    url = f"http://127.0.0.1:{server.server_address[1]}/c.ts"
    counts = []
    for opened in (lambda: av.open(url), lambda: _open(url, 5.0)):  # PyAV's own calls per packet, then ours
        calls.clear()
        with opened() as c:
            assert sum(1 for p in c.demux(c.streams.video[0]) if p.size) == 60
        counts.append(len(calls))
    server.shutdown()
    assert counts[1] == counts[0], counts


def test_a_silent_stream_times_out_after_its_own_timeout_and_says_so():
    """A server that accepts and never answers: the source gives up after its timeout (FFmpeg's socket
    timeout), and its error names that timeout, not the default one."""
    import socket
    from fractions import Fraction

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    url = f"http://127.0.0.1:{server.getsockname()[1]}/a.ts"
    src = PyAVSource(url, reconnects=0, timeout=1.0, info=VideoInfo(url, 64, 48, 0, 30.0, "h264", Fraction(1, 30)))
    t0 = time.monotonic()
    with pytest.raises(VidpipeError, match=r"no answer within 1 s"):
        list(src.batches(4))
    server.close()
    assert time.monotonic() - t0 < 5


def test_the_packet_scan_names_the_container(tmp_path):
    """What the planner and open_source tell MPEG-TS files apart by (no exact seeks)."""
    clip = make_clip(tmp_path / "a.mp4", frames=12)
    ts = repeat_clip(clip, tmp_path / "a.ts", 1)
    assert scan_packets(str(ts)).container == "mpegts" and scan_packets(str(clip)).container != "mpegts"


@pytest.mark.parametrize("ext", ["ts", "h264", "mpg"])
def test_parts_of_an_unseekable_file_reassemble_the_whole(tmp_path, ext):
    """With B-frames a seek in MPEG-TS landed frames after the keyframe sought (no index), so a part lost
    its first frames; parts are decoded from the file's start instead, the frames before them skipped.
    So are a raw H.264 stream's, which has no timestamps (its parts failed: nothing to seek by), and an
    MPEG-PS file's, some of whose packets carry none."""
    clip = make_clip(tmp_path / "a.mp4", frames=48, width=96, height=64, gop=12, seed=3)
    path = str(repeat_clip(clip, tmp_path / "a.ts", 2) if ext == "ts" else
               make_clip(tmp_path / f"a.{ext}", frames=96, width=96, height=64, gop=12, seed=3))
    whole, idx, _ = decode_all(PyAVSource(path))
    assert idx == list(range(96))
    for a, b in ((0, 36), (13, 60), (60, 96)):
        part = list(PyAVSource(path).batches(5, a, b))
        assert [i for p in part for i in p.indices] == list(range(a, b))
        assert torch.equal(torch.cat([p.frames for p in part]), whole[a:b])


def test_an_nvdec_file_without_a_frame_count_is_planned_with_the_scans(tmp_path):
    """NVDEC plans: a Matroska file (no count in its header) is cut into parts whose video expects the
    scan's frame count, so frames a part fails to deliver are reported lost; an MPEG-TS file and a raw
    H.264 stream (nothing to seek by) are one part each."""
    clip = make_clip(tmp_path / "a.mp4", frames=48, width=96, height=64, gop=12, seed=3)
    mkv, ts = (str(repeat_clip(clip, tmp_path / f"a.{ext}", 2)) for ext in ("mkv", "ts"))
    raw = str(make_clip(tmp_path / "a.h264", frames=96, width=96, height=64, gop=12, seed=3))
    assert probe(mkv).num_frames == probe(ts).num_frames == probe(raw).num_frames == 0
    parts, *whole = (plan_units(p, None, "nvdec", 4, segment_min=12) for p in (mkv, ts, raw))
    assert len(parts) > 1 and {u.info.num_frames for u in parts} == {96}
    assert [[(u.start, u.stop, u.info.num_frames) for u in w] for w in whole] == [[(0, None, 96)]] * 2


@pytest.mark.nvdec
@pytest.mark.parametrize("ext,bframes", [("ts", False), ("ts", True), ("h264", True)])
@pytest.mark.parametrize("stream_decoder", ["auto", "ffmpeg"])
def test_nvdec_decodes_unseekable_files_whole_in_parts_and_in_a_run(tmp_path, ext, bframes, stream_decoder):
    """An MPEG-TS file (of which SimpleDecoder gave no frame) or a raw H.264 stream on NVDEC, by either
    decoder of such files: every frame, in order, FFmpeg's but for YUV->RGB rounding; parts reassemble
    the whole; a run's decode pool hands over each frame once."""
    if stream_decoder == "ffmpeg" and not ffmpeg_nvdec_available():
        pytest.skip("this PyAV does not decode on NVDEC")
    clip = make_clip(tmp_path / "a.mp4", frames=48, width=96, height=64, bframes=bframes, gop=12, seed=3)
    path = str(repeat_clip(clip, tmp_path / "a.ts", 2) if ext == "ts" else
               make_clip(tmp_path / "a.h264", frames=96, width=96, height=64, bframes=bframes, gop=12, seed=3))
    whole, idx, _ = decode_all(open_source(path, "nvdec", torch.device("cuda"), stream_decoder=stream_decoder))
    ref, *_ = decode_all(PyAVSource(path, "cuda"))
    assert idx == list(range(96)) and (whole.float() - ref.float()).abs().mean((1, 2, 3)).max() < 3.0
    src = open_source(path, "nvdec", torch.device("cuda"), stream_decoder=stream_decoder)
    parts = [torch.cat([b.frames.cpu() for b in src.batches(5, a, b)]) for a, b in ((0, 36), (36, 60), (60, 96))]
    assert torch.equal(torch.cat(parts), whole)
    items = list(FrameProducer([path], "nvdec", torch.device("cuda"), 8, segment_min=12,
                               stream_decoder=stream_decoder))
    chunks = [i for i in items if isinstance(i, Chunk)]
    assert sorted(j for c in chunks for j in c.batch.indices) == list(range(96))
    assert all(e.error is None and not e.corrupt for e in items if isinstance(e, UnitEnd))
    frames = {j: f for c in chunks for j, f in zip(c.batch.indices, c.batch.frames.cpu())}
    assert torch.equal(torch.stack([frames[j] for j in range(96)]), whole)


def one_interval_each(units, keyframes: list[int], segment_min: int) -> bool:
    """Whether every unit starts on a keyframe and holds no later keyframe it could have been cut at."""
    return all(u.start in keyframes and not any(u.start + segment_min <= k < u.stop for k in keyframes) for u in units)


def test_a_tracked_file_is_cut_at_every_keyframe(tmp_path):
    """A file NVDEC decodes in parallel parts (plan only, no GPU): untracked, about two parts per worker;
    for a tracked run one keyframe interval each: the parts that workers finish together (a wave the
    video's tracker, taking frames in order only, gets at once) then hold few frames, not thousands."""
    path = make_clip(tmp_path / "c.mp4", frames=200, width=64, height=48, gop=10)
    keyframes = scan_packets(path).keyframes
    for tracked in (False, True):
        units = plan_units(str(path), None, "nvdec", 4, segment_min=8,
                           **({"segment_max": TRACKED_SEGMENT_FRAMES} if tracked else {}))
        assert units[0].start == 0 and units[-1].stop == 200 and units[0].first and units[-1].last
        assert all(a.stop == b.start for a, b in zip(units, units[1:]))
        assert one_interval_each(units, keyframes, 8) == tracked, [(u.start, u.stop) for u in units]


@pytest.mark.nvdec
def test_a_tracked_run_decodes_its_file_one_keyframe_interval_per_part(tmp_path, monkeypatch, random_model):
    """What the decode workers of a whole run take: a tracked run's parts are one keyframe interval
    each, an untracked run's longer; every frame is written either way."""
    pytest.importorskip("trackers")
    from vidpipe import Config, Detector
    from vidpipe.engine import run
    from vidpipe.sinks import JsonlSink

    path = make_clip(tmp_path / "c.mp4", frames=160, width=320, height=240, gop=10)
    keyframes = scan_packets(path).keyframes
    decoded, decode = [], FrameProducer._decode
    monkeypatch.setattr(FrameProducer, "_decode", lambda self, unit: decoded.append(unit) or decode(self, unit))
    for track in (False, True):
        decoded.clear()
        det = Detector(Config(weights="random", device="cuda", decoder="nvdec", decoders=2, compile="off",
                              batch_size=16, track=track), model=random_model)
        out = tmp_path / f"{track}.jsonl"
        report = run(det, [str(path)], lambda v: JsonlSink(out, v.path, v.width, v.height, det.classes))
        assert report.frames == 160 and not report.failed and len(out.read_text().splitlines()) == 160
        assert len(decoded) > 1, decoded  # 40-frame parts untracked (2 workers), 20 tracked (keyframes 10 apart)
        assert one_interval_each(decoded, keyframes, 16) == track, [(u.start, u.stop) for u in decoded]


@pytest.mark.nvdec
def test_nvdec_segments_reassemble_exactly(shared_clip):
    whole, idx, times = decode_all(NvdecSource(shared_clip, "cuda"), batch_size=64)
    items = list(in_order(FrameProducer([str(shared_clip)], "nvdec", torch.device("cuda"), 64, workers=4)))
    batches = [i for i in items if isinstance(i, FrameBatch)]
    assert [i for b in batches for i in b.indices] == idx
    assert [t for b in batches for t in b.times] == times
    assert torch.equal(torch.cat([b.frames.cpu() for b in batches]), whole)


@pytest.mark.nvdec
def test_pooled_nvdec_sessions_switch_files(tmp_path):
    """Decode threads re-point pooled NVDEC sessions at each new file (different sizes too)."""
    a = make_clip(tmp_path / "a.mp4", frames=40, width=320, height=240, gop=10)
    b = make_clip(tmp_path / "b.mp4", frames=25, width=256, height=144, gop=10, seed=3)
    expect = {str(p): decode_all(NvdecSource(p, "cuda"), batch_size=8)[0] for p in (a, b)}
    for _ in range(2):  # the second round finds the sessions of the first in the pool
        items = list(in_order(FrameProducer([str(a), str(b), str(a)], "nvdec", torch.device("cuda"), 8,
                                            workers=2, segment_min=8)))
        groups = by_video(items)  # each occurrence whole and in order (occurrences may interleave)
        assert sorted(g[0].info.path for g in groups) == sorted([str(a), str(b), str(a)])
        for g in groups:
            assert torch.equal(torch.cat([i.frames.cpu() for i in g[1:-1]]), expect[g[0].info.path])


@pytest.mark.nvdec
@pytest.mark.parametrize("kind", ["pooled", "stream", "ffmpeg"])
def test_sessions_opened_and_freed_beside_captures_leave_them_valid(tmp_path, kind):
    """A decode thread keeps opening NVDEC sessions (each one's first decode creates NVDEC's decoder)
    and freeing them (the runtime's close frees the pooled ones; FFmpeg's as its pass ends) while this
    thread captures CUDA graphs on the same device, as a detector does: every capture succeeds.
    Without the gate around those calls, captures failed ("operation failed due to a previous error
    during capture") on the H200."""
    import threading

    from vidpipe.runtime import DeviceRuntime

    if kind == "ffmpeg" and not ffmpeg_nvdec_available():
        pytest.skip("needs PyAV with CUDA decoding")
    clips = [make_clip(tmp_path / "a.mp4", frames=8, width=1920, height=1080),
             make_clip(tmp_path / "b.mp4", frames=8, width=384, height=288, seed=1)]
    runtime = DeviceRuntime("cuda")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.Conv2d(32, 32, 3, padding=1))
    net = net.cuda().half().eval()
    x = torch.randn(8, 3, 540, 960, device="cuda", dtype=torch.half)
    opened, worker_error = [], []

    def decode() -> None:
        try:
            for i in range(48):
                if kind == "pooled":
                    src = NvdecSource(clips[i % 2], "cuda", runtime=runtime, slot=i % 4)
                elif kind == "ffmpeg":
                    src = FFmpegNvdecSource(clips[i % 2], "cuda", runtime=runtime)
                else:
                    src = NvdecStreamSource(clips[i % 2], "cuda", runtime=runtime)
                next(src.batches(4))  # a stream's session goes back to the pool as the pass is dropped here
                opened.append(i)
                if i % 4 == 3:
                    runtime.close()  # frees the pooled sessions
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            worker_error.append(e)

    with torch.inference_mode():
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            expect = net(x)
        torch.cuda.synchronize()
        worker = threading.Thread(target=decode)
        worker.start()
        failures, captures = [], 0
        while worker.is_alive():
            graph = torch.cuda.CUDAGraph()
            try:
                with runtime.gate.capture(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    y = net(x)
                graph.replay()
                torch.cuda.current_stream().synchronize()
                assert torch.allclose(y, expect, atol=1e-2)  # the graph computes what eager did
                captures += 1
            except RuntimeError as e:
                failures.append(str(e).splitlines()[0])
        worker.join()
    assert not worker_error and len(opened) == 48
    assert captures >= 20, "the captures did not overlap the sessions' set-up"
    assert failures == []


def hold_and_watch_decode(monkeypatch, method: str, path: str) -> tuple[list, list]:
    """PyAVSource's generator ``method`` also kept in ``kept`` (a reference from outside, as a cycle
    would hold it), and ``path`` appended to ``ended`` when a decode pass under it ends."""
    kept, ended = [], []
    real, decode = getattr(PyAVSource, method), PyAVSource._decode

    def keep(self, *args):
        kept.append(real(self, *args))
        return kept[-1]

    def ending(self, c, stream):
        try:
            yield from decode(self, c, stream)
        finally:
            ended.append(path)

    monkeypatch.setattr(PyAVSource, method, keep)
    monkeypatch.setattr(PyAVSource, "_decode", ending)
    return kept, ended


@pytest.mark.parametrize("held,span", [("_frames", None), ("_timed_frames", None), ("_range", (0, 20))])
def test_a_pass_cut_short_ends_its_decode_at_once(tmp_path, monkeypatch, held, span):
    """Closing a source's batches closes every generator under it down to the decode pass (where a
    stream's NVDEC session goes back to the pool), even while something else still holds one of
    them, as a reference cycle would: on the H200 a stream's session came back to the pool only at a
    later garbage collection, after the next stream had made a session of its own."""
    path = str(make_clip(tmp_path / "a.mp4", frames=30))
    kept, ended = hold_and_watch_decode(monkeypatch, held, path)
    batches = PyAVSource(path).batches(1, *(span or ()))
    next(batches)
    batches.close()
    assert kept and ended == [path]


def test_the_engine_closes_a_pass_it_stops_early(tmp_path, monkeypatch):
    """The engine closes the source's pass it stops early (a --loop file at --max-frames, a removed
    source) itself, so the decode under it ends at once even while something else holds the pass."""
    path = str(make_clip(tmp_path / "a.mp4", frames=12))
    kept, ended = hold_and_watch_decode(monkeypatch, "batches", path)
    items = list(FrameProducer([path], "pyav", torch.device("cpu"), 4, max_frames=5, loop=True))
    assert sum(len(i.batch) for i in items if isinstance(i, Chunk)) == 5
    assert kept and ended == [path]


@pytest.mark.nvdec
def test_a_stream_session_is_reused_by_the_next_stream_of_its_kind(tmp_path, caplog):
    """A stream's NVDEC session goes back to the runtime's pool when its pass ends, whole or cut
    short, and the next stream of the same codec, size and reordering decodes on it the frames a
    fresh session gives (freeing a session held every other camera ~26 ms). Another size gets a
    session of its own."""
    from vidpipe.runtime import DeviceRuntime

    a = str(make_clip(tmp_path / "a.mp4", frames=40, width=320, height=240, gop=10))
    b = str(make_clip(tmp_path / "b.mp4", frames=30, width=320, height=240, gop=15, seed=5))
    c = str(make_clip(tmp_path / "c.mp4", frames=12, width=256, height=144, seed=2))
    fresh = {p: decode_all(NvdecStreamSource(p, "cuda"), batch_size=1)[0] for p in (a, b, c)}
    runtime = DeviceRuntime("cuda")
    made, seen = [], []
    real = NvdecStreamSource._session

    def session(self, stream):
        pooled = {k: len(v) for k, v in runtime._sessions.items()}
        dec, key = real(self, stream)
        made.append(dec)  # kept alive: a freed session's address could be the next one's
        seen.append((key, pooled))
        return dec, key

    NvdecStreamSource._session = session
    try:
        got = decode_all(NvdecStreamSource(a, "cuda", runtime=runtime), batch_size=1)[0]
        cut = NvdecStreamSource(b, "cuda", runtime=runtime).batches(1)
        first = [next(cut).frames.cpu() for _ in range(7)]  # mid-stream, frames still in NVDEC's reorder queue
        cut.close()
        again = decode_all(NvdecStreamSource(b, "cuda", runtime=runtime), batch_size=1)[0]
        other = decode_all(NvdecStreamSource(c, "cuda", runtime=runtime), batch_size=1)[0]
    finally:
        NvdecStreamSource._session = real
    assert torch.equal(got, fresh[a]) and torch.equal(torch.cat(first), fresh[b][:7])
    assert torch.equal(again, fresh[b]) and torch.equal(other, fresh[c])
    assert made[0] is made[1], "the second stream did not get the first's session"
    assert made[1] is made[2], f"a pass cut short did not leave its session: {seen} {caplog.text}"
    assert made[3] is not made[0]  # another size, a session of its own
    runtime.close()


def test_capture_gate_lets_setups_overlap_and_captures_wait_for_them():
    import threading

    from vidpipe.runtime import CaptureGate

    gate, events = CaptureGate(), []
    inside, release = threading.Barrier(3), threading.Event()

    def setup(i):
        with gate.setup():
            inside.wait(timeout=5)  # both setups are inside at once
            release.wait(timeout=5)
            events.append(f"setup{i}")

    def capture():
        with gate.capture():
            events.append("capture")

    threads = [threading.Thread(target=setup, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    inside.wait(timeout=5)
    cap = threading.Thread(target=capture)
    cap.start()
    cap.join(timeout=0.2)
    assert cap.is_alive() and events == []  # the capture waits for the running setups
    release.set()
    for t in threads + [cap]:
        t.join(timeout=5)
    assert sorted(events[:2]) == ["setup0", "setup1"] and events[2] == "capture"


def test_runtimes_on_one_gpu_share_its_guards():
    """An NVDEC call of one detector's runtime holds a capture of another detector on the same GPU
    (it would invalidate it), not one on another GPU; and session creations on one GPU take turns
    whichever runtime makes them. No CUDA needed: the guards are chosen by index."""
    import threading

    from vidpipe.runtime import DeviceRuntime

    a, b, other = DeviceRuntime("cuda:0"), DeviceRuntime("cuda:0"), DeviceRuntime("cuda:1")
    captured = {"b": threading.Event(), "other": threading.Event()}

    def capture(runtime, name):
        with runtime.gate.capture():
            captured[name].set()

    with a.gate.setup():
        threads = [threading.Thread(target=capture, args=(r, n)) for r, n in ((b, "b"), (other, "other"))]
        for t in threads:
            t.start()
        assert captured["other"].wait(timeout=5)  # another GPU's capture goes on
        assert not captured["b"].wait(timeout=0.3)  # this GPU's waits for the set-up
    assert captured["b"].wait(timeout=5)
    for t in threads:
        t.join(timeout=5)
    with a.create_lock:
        assert not b.create_lock.acquire(timeout=0.1)
        assert other.create_lock.acquire(timeout=5)
        other.create_lock.release()


def test_packet_scan_and_probe_follow_a_file_replaced_under_its_name(tmp_path):
    path = make_clip(tmp_path / "v.mp4", frames=10, width=64)
    assert len(scan_packets(str(path)).times) == 10 and probe(path).num_frames == 10
    make_clip(tmp_path / "v.mp4", frames=20, width=96, seed=1)
    assert len(scan_packets(str(path)).times) == 20
    assert (probe(path).num_frames, probe(path).width) == (20, 96)


def _raw_h264(path, fps: int, frames: int):
    """A raw H.264 stream as an encoder writes one by default: its frame rate in its SPS's timing
    (make_clip's 1/90000 time base would put 90,000 there)."""
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=fps, options={"bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            image = np.full((48, 64, 3), 8 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.mark.parametrize("codec,fps", [("h264", 24), ("h264", 60), ("hevc", 24), ("hevc", 60)])
def test_a_raw_stream_runs_at_the_rate_its_own_headers_give(tmp_path, codec, fps):
    """A raw H.264/HEVC stream has no container rate (FFmpeg's raw demuxer says 25 whatever it holds):
    its rate, its frames' times and the planner's times come from the stream's own timing."""
    raw = (_raw_h264(tmp_path / "a.h264", fps, 12) if codec == "h264" else
           make_clip(tmp_path / "a.hevc", frames=12, fps=fps, codec="libx265", width=64, height=48, bframes=False))
    assert probe(raw).fps == fps
    _, indices, times = decode_all(PyAVSource(raw))
    assert indices == list(range(12)) and times == pytest.approx([i / fps for i in range(12)])
    assert scan_packets(str(raw)).times == pytest.approx([i / fps for i in range(12)])
