"""The pipeline end to end on the CPU (and the GPU when present): detector API, engine modes,
sinks, and the detect command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

import vidpipe
from vidpipe import Config, Detector
from vidpipe.engine import Chunk, FrameProducer, run
from vidpipe.profiling import PeakMemory
from vidpipe.sinks import JsonlSink, open_sink
from vidpipe.synth import make_clip, repeat_clip

CLI = [sys.executable, "-m", "vidpipe.cli"]


def detector(model, **kw) -> Detector:
    return Detector(Config(weights="random", device=kw.pop("device", "cpu"), batch_size=kw.pop("batch_size", 4),
                           **kw), model=model)


def collect(det: Detector, path) -> list:
    return list(vidpipe.detect(path, det))


def test_detect_api_yields_every_frame(random_model, tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=6, width=96, height=64)
    results = collect(detector(random_model), clip)
    assert [r.frame for r in results] == list(range(6))
    r = results[0]
    assert r.width == 96 and r.height == 64 and r.boxes.shape[1:] == (4,)
    assert np.all(r.scores[:-1] >= r.scores[1:]) and np.all((r.labels >= 1) & (r.labels <= 80))
    assert len(r.labels) > 0 and r.boxes[:, 2].max() > 1.0  # pixels, not normalised


def test_overlap_matches_serial(random_model, tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=7, width=80, height=60)
    serial = collect(detector(random_model, overlap=False), clip)
    overlap = collect(detector(random_model, overlap=True, batch_size=3), clip)
    assert len(serial) == len(overlap) == 7
    for a, b in zip(serial, overlap):
        assert np.array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-5, atol=1e-4)


def test_runs_shorten_the_gil_interval_and_the_last_one_gives_it_back(random_model, tmp_path):
    """While runs go on, Python's switch interval is Config.gil_interval_ms (decode threads waiting for the
    GIL get it back sooner); when two overlap, the first to end leaves it, the last restores the process's."""
    clip = make_clip(tmp_path / "c.mp4", frames=6, width=64, height=48)
    before = sys.getswitchinterval()
    one = vidpipe.detect(clip, detector(random_model, gil_interval_ms=0.25))
    two = vidpipe.detect(clip, detector(random_model, gil_interval_ms=0.25))
    next(one), next(two)
    assert sys.getswitchinterval() == pytest.approx(0.00025)
    assert len(list(one)) == 5 and sys.getswitchinterval() == pytest.approx(0.00025)  # `two` still runs
    assert len(list(two)) == 5 and sys.getswitchinterval() == before


def test_sinks_write_atomically(random_model, tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=5, width=64, height=48)
    det = detector(random_model)
    for fmt, name in (("jsonl", "o.jsonl"), ("coco", "o.json"), ("parquet", "o.parquet")):
        target = tmp_path / name
        report = run(det, [str(clip)], lambda i: open_sink(fmt, target, i.path, i.width, i.height))
        assert report.frames == 5 and not report.failed
        assert target.is_file() and not (tmp_path / (name + ".partial")).exists()
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(5))
    assert set(lines[0]) == {"video", "frame", "time", "width", "height", "detections"}
    d = lines[0]["detections"][0]
    assert set(d) == {"box", "score", "class_id", "class_name"} and 1 <= d["class_id"] <= 80
    coco = json.loads((tmp_path / "o.json").read_text())
    assert coco and {"image_id", "category_id", "bbox", "score"} == set(coco[0])
    import pyarrow.parquet as pq
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.num_rows == sum(len(x["detections"]) for x in lines)
    assert sorted(set(table.column("frame").to_pylist())) == [x["frame"] for x in lines if x["detections"]]


def test_json_lines_per_video_with_a_file_given_twice(random_model, tmp_path):
    """The writer formats results as they land, before ordering: each video's output is still
    its own, in order, identical to a run on that file alone (one file given twice included)."""
    a = make_clip(tmp_path / "a.mp4", frames=7, width=64, height=48)
    b = make_clip(tmp_path / "b.mp4", frames=5, width=80, height=48, seed=2)
    det = detector(random_model, decoders=2)
    # Inputs interleave, each in its own order: outputs are named per input, not by start order.
    outs = {str(a): [tmp_path / "out0.jsonl", tmp_path / "out2.jsonl"], str(b): [tmp_path / "out1.jsonl"]}
    calls = {"formatter": 0, "write": 0}

    class Counted(JsonlSink):  # write() formats in turn; formatter() alone, ahead of its turn
        def formatter(self):
            calls["formatter"] += 1
            return super().formatter()

        def write(self, *args):
            calls["write"] += 1
            super().write(*args)

    run(det, [str(a), str(b), str(a)], lambda i: Counted(outs[i.path].pop(0), i.path, i.width, i.height))
    assert calls["formatter"] > calls["write"]  # some results were formatted before their turn
    for i, clip in enumerate((a, b, a)):
        alone = tmp_path / f"alone{i}.jsonl"
        run(det, [str(clip)], lambda v: open_sink("jsonl", alone, v.path, v.width, v.height))
        assert (tmp_path / f"out{i}.jsonl").read_text() == alone.read_text()


def _formatted_here(marks: str, formatter, *args) -> str:
    (Path(marks) / str(os.getpid())).touch()
    return formatter(*args)


def test_formatting_processes_write_the_same_text(random_model, tmp_path):
    """With --formatters, the text is made in other processes (the effect checked: which process
    ran the formatter) and the output is byte for byte the in-thread one."""
    clip = make_clip(tmp_path / "a.mp4", frames=20, width=64, height=48)
    marks = tmp_path / "marks"
    marks.mkdir()

    class Marked(JsonlSink):
        def formatter(self):
            return partial(_formatted_here, str(marks), super().formatter())

    outs = {}
    for n in (0, 2):
        det = detector(random_model, formatters=n)
        outs[n] = tmp_path / f"out{n}.jsonl"
        run(det, [str(clip)], lambda v: Marked(outs[n], v.path, v.width, v.height))
        pids = {int(p.name) for p in marks.iterdir()}
        assert (pids == {os.getpid()}) if n == 0 else (pids and os.getpid() not in pids), (n, pids)
        for p in marks.iterdir():
            p.unlink()
    assert outs[2].read_text() == outs[0].read_text() and outs[0].read_text().count("\n") == 20


def _formatted_beside_another(marks: str, formatter, indices, *args) -> str:
    """Marks this batch's formatting as started, then waits (up to 20 s) until another batch's has
    started too; a batch that never saw one is marked ``alone``."""
    (Path(marks) / f"start-{indices[0]}").touch()
    deadline = time.monotonic() + 20
    while len(list(Path(marks).glob("start-*"))) < 2:
        if time.monotonic() > deadline:
            (Path(marks) / f"alone-{indices[0]}").touch()
            break
        time.sleep(0.01)
    return formatter(indices, *args)


def test_batches_are_formatted_in_several_lanes_at_once(tmp_path):
    """Results put in the scheduler's order (each issued, then in its turn) are formatted in two
    lanes at once: the writer does not wait for one batch's text before the next batch goes out.
    The first batch's formatting waits until another's has started: on a writer that waited for
    each text in turn, it is left alone for 20 s. The output is every frame once, in order."""
    from fractions import Fraction

    from vidpipe.engine.items import BatchResult, VideoEnd, VideoStart
    from vidpipe.engine.write import Writer
    from vidpipe.postprocess import Detections
    from vidpipe.sources import VideoInfo

    marks = tmp_path / "marks"
    marks.mkdir()

    class Waiting(JsonlSink):
        def formatter(self):
            return partial(_formatted_beside_another, str(marks), super().formatter())

    out, n, batches = tmp_path / "o.jsonl", 4, 6
    info = VideoInfo(str(out), 64, 48, n * batches, 30.0, "h264", Fraction(1, 30))
    writer = Writer(lambda i: Waiting(out, i.path, i.width, i.height), True, None, None, formatters=2)
    writer.put(VideoStart(info))
    rng = np.random.default_rng()
    for k in range(batches):
        det = Detections(torch.from_numpy(rng.random((n, 3, 4), dtype=np.float32) * 48),
                         torch.zeros(n, 3, dtype=torch.int64), torch.from_numpy(rng.random((n, 3), dtype=np.float32)),
                         torch.full((n,), 3))
        result = BatchResult(info, list(range(k * n, (k + 1) * n)), [0.0] * n, det, None)
        writer.issue(result)
        writer.put(result)
    writer.put(VideoEnd(info.path, n * batches, n * batches, info=info))
    report = writer.finish(True)
    assert report.frames == n * batches and not report.failed
    assert not list(marks.glob("alone-*"))
    assert [json.loads(line)["frame"] for line in out.read_text().splitlines()] == list(range(n * batches))


@pytest.mark.parametrize("cores, expected", [(1, 2), (8, 2), (12, 3), (16, 4), (128, 4)])
def test_default_formatters_follow_the_cores(monkeypatch, cores, expected):
    """GPU runs format in one process per 4 CPU cores, 2 to 4; CPU runs and --no-overlap in the
    writer thread; --formatters wins."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert Config().formatters_for(torch.device("cuda")) == expected
    assert Config().formatters_for(torch.device("cpu")) == 0
    assert Config(overlap=False).formatters_for(torch.device("cuda")) == 0
    assert Config(formatters=1).formatters_for(torch.device("cuda")) == 1


def test_lanes_import_what_they_format_with_as_they_start():
    """A pool's lanes import the sinks (and NumPy) as they start, not when the first batch's text is
    wanted: asked before any batch, each lane has them."""
    from vidpipe.engine.write import FormatPool

    pool = FormatPool.get(2)
    try:
        assert [lane.submit(eval, "'vidpipe.sinks' in __import__('sys').modules").result()
                for lane in pool.lanes] == [True, True]
    finally:
        FormatPool.close_all()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir() or (os.cpu_count() or 1) < 2, reason="needs Linux, 2+ cores")
def test_lanes_run_numpy_in_one_thread(monkeypatch):
    """A lane has NumPy loaded and one thread: no BLAS thread per core in each lane (they spun beside
    the GPU's warm-up), though this process's environment does not ask for one."""
    from vidpipe.engine.write import LANE_ENV, FormatPool

    FormatPool.close_all()  # lanes started now, in this environment
    for name in LANE_ENV:
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    pool = FormatPool.get(2)
    try:
        assert [lane.submit(eval, "len(__import__('os').listdir('/proc/self/task'))").result()
                for lane in pool.lanes] == [1, 1]
        assert dict(os.environ) == before  # this process's environment is left as it was
    finally:
        FormatPool.close_all()


def test_closing_the_pools_stops_every_lane():
    """FormatPool.close_all (run before the CLI leaves with os._exit) stops and reaps every worker
    of every pool: none is left running or a zombie."""
    from vidpipe.engine.write import FormatPool

    pools = [FormatPool.get(2), FormatPool.get(3)]
    pids = {lane.submit(os.getpid).result() for pool in pools for lane in pool.lanes}
    assert len(pids) == 5 and os.getpid() not in pids
    FormatPool.close_all()
    for pid in pids:
        with pytest.raises(ProcessLookupError):  # reaped: not even a zombie
            os.kill(pid, 0)
    assert FormatPool.get(2) is not pools[0]  # a later run starts a new pool
    FormatPool.close_all()


def test_a_batchs_results_share_its_host_arrays_and_fail_alone(monkeypatch):
    """Results of one batch (one per camera in a live batch) read the batch's host arrays made once
    (HostBatch): each sees exactly the rows it would have read alone, the finite check runs once for
    all of them, and a non-finite value fails only the result whose valid detections hold it (padding
    past a frame's count is not looked at)."""
    from fractions import Fraction

    from vidpipe.engine import items
    from vidpipe.engine.items import BatchResult, HostBatch
    from vidpipe.postprocess import Detections
    from vidpipe.sources import VideoInfo

    rng = np.random.default_rng()
    n, d = int(rng.integers(6, 20)), int(rng.integers(2, 30))
    counts = torch.from_numpy(rng.integers(0, d + 1, n))
    det = Detections(torch.from_numpy(rng.normal(size=(n, d, 4)).astype(np.float32)),
                     torch.from_numpy(rng.integers(0, 80, (n, d))), torch.rand(n, d), counts)
    bad = int(rng.choice(np.flatnonzero(counts.numpy() > 0)))
    det.boxes[bad, int(rng.integers(0, int(counts[bad]))), int(rng.integers(0, 4))] = float("nan")
    padded = [i for i in range(n) if counts[i] < d]
    if padded:  # not a detection: must not count
        det.scores[padded[0], d - 1] = float("inf")
    info = VideoInfo("v", 64, 48, n, 30.0, "h264", Fraction(1, 30))
    cuts = sorted(set(rng.choice(np.arange(1, n), int(rng.integers(1, n - 1)), replace=False).tolist()))
    spans = list(zip([0, *cuts], [*cuts, n]))
    checks, finite_rows = [], items.finite_rows
    monkeypatch.setattr(items, "finite_rows", lambda arrays: checks.append(1) or finite_rows(arrays))
    shared = HostBatch(det, None)
    for a, b in spans:
        own = BatchResult(info, list(range(a, b)), [0.0] * (b - a), det, None, a)
        mine = BatchResult(info, list(range(a, b)), [0.0] * (b - a), det, None, a, shared=shared)
        for x, y in zip(own.arrays(), mine.arrays()):
            np.testing.assert_array_equal(x, y)
        assert own.finite() == (not a <= bad < b), (a, b, bad)
        before = len(checks)
        assert mine.finite() == (not a <= bad < b), (a, b, bad)
        shared_checks = len(checks) - before
        assert shared_checks == (1 if a == 0 else 0), "the batch's finite check was not made once"


def test_interrupted_sink_stays_partial(tmp_path):
    sink = open_sink("jsonl", tmp_path / "x.jsonl", "v", 10, 10)
    sink.write([0], [0.0], np.zeros((1, 1, 4), np.float32), np.ones((1, 1), np.int64),
               np.ones((1, 1), np.float32), np.array([1]))
    sink.close(complete=False)
    assert not (tmp_path / "x.jsonl").exists() and [p.name for p in tmp_path.glob("x.jsonl.*.partial")] == \
        [sink.partial.name]


def test_decode_memory_stays_flat_on_long_input(tmp_path):
    """Bounded queues: decoding a 20x longer clip must not grow host memory by more than 25 MiB."""
    clip = make_clip(tmp_path / "c.mp4", frames=60, width=320, height=240, gop=30)
    long = repeat_clip(clip, tmp_path / "long.mp4", 20)
    peaks = []
    for path in (clip, long):
        with PeakMemory(torch.device("cpu")) as mem:
            n = sum(len(i.batch) for i in FrameProducer([str(path)], "pyav", torch.device("cpu"), 16, workers=2)
                    if isinstance(i, Chunk))
        peaks.append((n, mem.host_peak))
    assert peaks[1][0] == 20 * peaks[0][0]
    assert peaks[1][1] - peaks[0][1] < 25 * 2**20


def cli(*args, **kw):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600, **kw)


def test_cli_version_and_help():
    assert cli("--version").stdout.startswith("vidpipe ")
    out = cli("detect", "--help").stdout
    for flag in ("--weights", "--decoder", "--batch-size", "--max-frames", "--iou-threshold", "--format"):
        assert flag in out


def test_cli_detect_jsonl(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=6, width=64, height=48)
    out = tmp_path / "out.jsonl"
    r = cli("detect", clip, "-o", out, "--weights", "random", "--device", "cpu", "--batch-size", "4",
            "--max-frames", "5")
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 5 and "frames/s end to end" in r.stderr.splitlines()[-1]


def test_cli_corpus_bad_file_and_resume(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "a.mp4", frames=3)
    make_clip(src / "c.mp4", frames=2)
    (src / "b.mp4").write_bytes(b"\x00" * 100)
    outdir = tmp_path / "out"
    args = ["detect", src, "-o", outdir, "--weights", "random", "--device", "cpu", "--batch-size", "2"]
    r = cli(*args)
    assert r.returncode == 1
    assert "b.mp4" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in outdir.iterdir() if p.suffix != ".vidpipe") == ["a.jsonl", "c.jsonl"]
    assert len((outdir / "c.jsonl").read_text().splitlines()) == 2
    assert cli(*args, "--allow-failures").returncode == 0
    mtime = (outdir / "a.jsonl").stat().st_mtime_ns
    (src / "b.mp4").unlink()
    r = cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert (outdir / "a.jsonl").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("args,message", [
    (["/nonexistent.mp4"], "no such file"),
    (["--weights", "/nonexistent.pt", "CLIP"], "weights file not found"),
    (["--device", "cuda:7", "CLIP"], "CUDA"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    clip = make_clip(tmp_path / "c.mp4", frames=2)
    args = [str(clip) if a == "CLIP" else a for a in args]
    if "--weights" not in args:
        args += ["--weights", "random"]
    r = cli("detect", *args, "-o", tmp_path / "o.jsonl", "--device", "cpu") if "--device" not in args else \
        cli("detect", *args, "-o", tmp_path / "o.jsonl")
    assert r.returncode in (1, 2)
    errors = [x for x in r.stderr.splitlines() if "error" in x]
    assert errors and message in errors[0] and "Traceback" not in r.stderr


def test_cli_sigint_keeps_partial(tmp_path):
    clip = repeat_clip(make_clip(tmp_path / "c.mp4", frames=30, width=64, height=48), tmp_path / "l.mp4", 20)
    out = tmp_path / "o.jsonl"
    p = subprocess.Popen([*CLI, "detect", str(clip), "-o", str(out), "--weights", "random", "--device", "cpu",
                          "--batch-size", "2"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.stat().st_size for p in tmp_path.glob("o.jsonl.*.partial")):
        time.sleep(0.2)
    [partial] = tmp_path.glob("o.jsonl.*.partial")
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert time.time() - t0 < 5
    assert p.returncode == 130, err
    assert partial.exists() and not out.exists()
    lines = partial.read_text().splitlines()
    assert all(json.loads(x)["frame"] == i for i, x in enumerate(lines))


@pytest.mark.cuda
def test_gpu_pipeline_matches_cpu(random_model, tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=8, width=128, height=96)
    cpu = collect(detector(random_model), clip)
    gpu = collect(Detector(Config(weights="random", device="cuda", precision="fp32", compile="off",
                                  decoder="pyav", batch_size=4), model=random_model), clip)
    random_model.cpu().float()
    agree = np.mean([np.array_equal(a.labels, b.labels) for a, b in zip(cpu, gpu)])
    assert len(gpu) == 8 and agree >= 0.75


@pytest.mark.nvdec
def test_gpu_engine_identical_to_straightforward(shared_clip, random_model):
    base = dict(weights="random", device="cuda", precision="fp16", compile="off", batch_size=32, max_frames=600,
                kernels="triton")
    simple = collect(Detector(Config(**base, overlap=False, decoder="nvdec", cuda_graphs=False), model=random_model),
                     shared_clip)
    engine = collect(Detector(Config(**base, overlap=True, decoder="nvdec", decoders=4), model=random_model),
                     shared_clip)
    random_model.cpu().float()
    assert [r.frame for r in engine] == list(range(600))
    for a, b in zip(simple, engine):
        assert np.array_equal(a.labels, b.labels) and np.allclose(a.boxes, b.boxes, atol=1e-3)


@pytest.mark.nvdec
def test_gpu_engine_mixes_files_and_sizes_in_batches(tmp_path, random_model):
    """Batches span segments and files (two frame sizes, one file twice); results come back per
    input, each in its own order (inputs interleave), the same as the one-file-at-a-time loop
    without graphs."""
    from vidpipe.engine import iter_results

    a = make_clip(tmp_path / "a.mp4", frames=40, width=320, height=240, gop=10)
    b = make_clip(tmp_path / "b.mp4", frames=25, width=256, height=144, gop=10, seed=3)
    base = dict(weights="random", device="cuda", precision="fp16", compile="off", batch_size=16, decoder="nvdec",
                kernels="triton")
    simple = Detector(Config(**base, overlap=False, cuda_graphs=False), model=random_model)
    alone = {p: collect(simple, p) for p in (a, b)}
    got = list(iter_results(Detector(Config(**base, decoders=3), model=random_model), [str(a), str(b), str(a)]))
    random_model.cpu().float()
    assert [r.frame for r in got if r.video == str(b)] == list(range(25))
    # a's two runs interleave; each must be whole and in order: frame f goes to a run that is at f.
    at = [0, 0]
    for r in got:
        if r.video == str(a):
            at[at.index(r.frame)] += 1  # ValueError: a frame out of order, lost or repeated
    assert at == [40, 40]
    for r in got:
        x = alone[a if r.video == str(a) else b][r.frame]
        assert np.array_equal(x.labels, r.labels) and np.allclose(x.boxes, r.boxes, atol=1e-3)


@pytest.mark.cuda
def test_infer_while_a_batch_fills_the_graph_input(random_model):
    """A batch being gathered owns the CUDA graph's input: infer() on frames of the same size in
    between runs without the graph, and both give what they give alone, to the bit."""
    det = Detector(Config(weights="random", device="cuda", precision="fp16", compile="off", batch_size=8,
                          kernels="triton"), model=random_model)
    g = torch.Generator().manual_seed(0)
    a, b = [(torch.rand(8, 3, 96, 128, generator=g) * 255).to(torch.uint8).cuda() for _ in range(2)]
    alone_a, alone_b = det.infer(a), det.infer(b)
    batch = det.batch(96, 128)
    assert batch.graph is not None
    batch.add(a[:5])
    between = det.infer(b)
    batch.add(a[5:])
    host, event = det.submit(batch)
    event.synchronize()
    random_model.cpu().float()
    for x, y in zip(alone_b.astuple(), between.astuple()):
        assert torch.equal(x, y)
    for x, y in zip(alone_a.astuple(), host.astuple()):
        assert torch.equal(x.cpu(), y)


@pytest.mark.cuda
def test_short_batches_run_on_the_smallest_captured_tier(random_model):
    """Live runs' batches (``short``) run on the smallest captured tier that holds them: that tier's
    network computed that many rows, and its detections are a full batch's to fp16 rounding."""
    det = Detector(Config(weights="random", device="cuda", precision="fp16", compile="off", batch_size=16,
                          kernels="triton"), model=random_model)
    rng = np.random.default_rng()
    frames = torch.from_numpy(rng.integers(0, 256, (16, 3, 96, 128), dtype=np.uint8)).cuda()
    full = det.infer(frames)
    tiers = [2, 4, 6, 8, 12, 16]  # TIERS of a batch of 16, and the batch
    for n in sorted(rng.choice(np.arange(1, 17), 6, replace=False)):
        batch = det.batch(96, 128, short=True)
        batch.add(frames[:n])
        host, event = det.submit(batch)
        event.synchronize()
        tier = min(k for k in tiers if k >= n)
        assert sorted(batch.graph.pairs[0]) == tiers and batch.graph.tier(n) == tier
        assert all(t.shape[0] == tier for t in batch.graph.pairs[0][tier][2].astuple())
        assert int(host.counts.sum()) > 0
        for i in range(n):  # the full batch's boxes (order may differ where fp16 ties scores)
            ours, theirs = host.boxes[i, :int(host.counts[i])], full.boxes[i, :int(full.counts[i])].cpu()
            assert abs(len(ours) - len(theirs)) <= max(1, len(theirs) // 20)
            if len(ours) and len(theirs):
                matched = (torch.cdist(ours, theirs, p=float("inf")).min(1).values < 1.0).float().mean()
                assert matched >= 0.95
    assert det.batch(96, 128).graph.tiers == [16]  # files: the full batch only
    random_model.cpu().float()


@pytest.mark.cuda
def test_more_sizes_than_kept_graphs_run_eagerly_instead_of_recapturing(random_model, monkeypatch):
    """Frames of more sizes at once than graphs are kept for (cameras of several resolutions): the
    extra size runs eagerly rather than evicting a size in use, which would capture again batch after
    batch; once a kept size goes idle the new one is captured."""
    import vidpipe.detector as detector

    monkeypatch.setattr(detector, "MAX_GRAPHS", 2)
    det = Detector(Config(weights="random", device="cuda", precision="fp16", compile="off", batch_size=4,
                          kernels="triton"), model=random_model)
    captures = []
    capture = det._capture
    monkeypatch.setattr(det, "_capture", lambda h, w, short=False: captures.append((h, w)) or capture(h, w, short))
    rng = np.random.default_rng()
    sizes = [(64, 96), (96, 128), (128, 160)]
    frames = {s: torch.from_numpy(rng.integers(0, 256, (4, 3, *s), dtype=np.uint8)).cuda() for s in sizes}
    for _ in range(3):
        for s in sizes:
            batch = det.batch(*s, short=True)
            batch.add(frames[s])
            host, event = det.submit(batch)
            if event is not None:
                event.synchronize()
            assert int(host.counts.sum()) > 0
    assert captures == sizes[:2]  # the third size ran eagerly each time
    monkeypatch.setattr(detector, "IN_USE_S", 0.0)  # the kept sizes now count as idle
    assert det.batch(*sizes[2], short=True).graph is not None and captures == sizes
    random_model.cpu().float()


@pytest.mark.nvdec
def test_cuda_graphs_match_eager(shared_clip, random_model):
    base = dict(weights="random", device="cuda", precision="fp16", batch_size=64, max_frames=300, kernels="triton")
    eager = collect(Detector(Config(**base, compile="off", cuda_graphs=False), model=random_model), shared_clip)
    graphs = collect(Detector(Config(**base, compile="on", cuda_graphs=True), model=random_model), shared_clip)
    random_model.cpu().float()
    assert [r.frame for r in graphs] == list(range(300))
    agree = np.mean([np.array_equal(a.labels, b.labels) for a, b in zip(eager, graphs)])
    assert agree >= 0.9


def test_ladder_runs_every_rung_it_can(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=8, width=96, height=64)
    prefix = tmp_path / "ladder"
    r = subprocess.run([sys.executable, "-m", "vidpipe.cli", "ladder", str(clip), "--slow-frames", "2",
                        "--compare-frames", "2", "--out", str(prefix)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "ladder.json").read_text())["rows"]
    assert [row["rung"][0] for row in rows] == [str(i) for i in range(9)]
    ran = [row for row in rows if "skipped" not in row]
    assert [row["frames"] for row in ran[:2]] == [2, 2] and all(row["fps"] > 0 for row in ran)
    assert all(row["agreement"] == 1.0 for row in ran[2:])  # fp32 rungs: identical detections
    if not torch.cuda.is_available():
        assert all(row["skipped"] == "no CUDA GPU" for row in rows[4:])
    assert (tmp_path / "ladder.md").read_text().count("\n| ") == 10


def test_out_of_memory_retries_with_half_the_batch(random_model, caplog, monkeypatch):
    """A CUDA OOM cannot happen on a CPU, so the allocator's error is raised for batches over 2."""
    det = detector(random_model, batch_size=8)
    frames = (torch.rand(8, 3, 48, 64) * 255).to(torch.uint8)
    expected = det.infer(frames)
    real = det._infer

    def tight_memory(batch):
        if batch.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch)

    monkeypatch.setattr(det, "_infer", tight_memory)
    with caplog.at_level("WARNING"):
        got = det.infer(frames)
    assert det.batch_size == 2 and "retrying with batch size" in caplog.text
    for a, b in zip(expected.astuple(), got.astuple()):
        torch.testing.assert_close(a, b)


def test_progress_lines_without_a_terminal(tmp_path):
    """With no TTY (a CI log, nohup) a progress line still comes every few seconds."""
    clip = make_clip(tmp_path / "c.mp4", frames=40, width=64, height=48)
    r = cli("detect", clip, "-o", tmp_path / "o.jsonl", "--weights", "random", "--device", "cpu", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    progress = [x for x in r.stderr.splitlines() if " of 40 frames, " in x and "frames/s" in x]
    assert progress, r.stderr
