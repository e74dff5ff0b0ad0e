"""Scale-out paths give the same detections as the local path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vidpipe.synth import make_clip

CLI = [sys.executable, "-m", "vidpipe.cli", "detect"]
COMMON = ["--weights", "random", "--device", "cpu", "--batch-size", "2"]


def detections(outdir):
    return {p.name: [json.loads(x)["detections"] for x in p.read_text().splitlines()]
            for p in sorted(outdir.iterdir()) if p.suffix == ".jsonl"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i, name in enumerate("abc"):
        make_clip(root / f"{name}.mp4", frames=3 + i, width=64, height=48, seed=i)
    local = root.parent / "local"
    r = subprocess.run([*CLI, str(root), "-o", str(local), *COMMON], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return root, detections(local)


def test_worker_processes_match_local(corpus, tmp_path):
    root, expected = corpus
    r = subprocess.run([*CLI, str(root), "-o", str(tmp_path), *COMMON, "--devices", "cpu", "--procs-per-device", "2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert detections(tmp_path) == expected


def assert_close(got, expected):
    """Same detections up to float rounding: Ray runs actors with one BLAS thread, which changes
    the CPU convolutions' summation order in the last bits."""
    assert got.keys() == expected.keys()
    for name in expected:
        assert len(got[name]) == len(expected[name])
        for frame_got, frame_exp in zip(got[name], expected[name]):
            assert [d["class_id"] for d in frame_got] == [d["class_id"] for d in frame_exp]
            for a, b in zip(frame_got, frame_exp):
                assert a["box"] == pytest.approx(b["box"], abs=0.05)
                assert a["score"] == pytest.approx(b["score"], abs=1e-3)


def test_ray_local_cluster_matches_local(corpus, tmp_path):
    pytest.importorskip("ray")
    root, expected = corpus
    r = subprocess.run([*CLI, str(root), "-o", str(tmp_path), *COMMON, "--ray"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert_close(detections(tmp_path), expected)


@pytest.mark.parametrize("fmt", ["jsonl", "coco", "parquet"])
def test_long_file_is_split_across_workers_and_joined(tmp_path, fmt):
    clip = make_clip(tmp_path / "long.mp4", frames=24, width=64, height=48, gop=6)
    ext = {"jsonl": ".jsonl", "coco": ".json", "parquet": ".parquet"}[fmt]
    local, split = tmp_path / f"local{ext}", tmp_path / f"split{ext}"
    base = [*CLI, str(clip), *COMMON, "--format", fmt]
    r = subprocess.run([*base, "-o", str(local)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*base, "-o", str(split), "--devices", "cpu", "--procs-per-device", "2", "--split-frames", "8"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "24 frames from 1 of 1 inputs" in r.stderr
    assert not list(tmp_path.glob("split*.part*"))
    if fmt == "parquet":
        import pyarrow.parquet as pq
        a, b = pq.read_table(local).to_pylist(), pq.read_table(split).to_pylist()
        assert [(x["frame"], x["class_id"], x["x1"]) for x in a] == [(x["frame"], x["class_id"], x["x1"]) for x in b]
    elif fmt == "coco":
        assert json.loads(local.read_text()) == json.loads(split.read_text())
    else:
        assert local.read_text() == split.read_text()


def test_a_long_file_is_split_only_where_it_can_be_sought(tmp_path):
    """An MP4 is cut at keyframes into a part per worker; the same video as MPEG-TS, where a part would
    decode from the file's start, stays one task, as does a raw H.264 stream (no timestamps)."""
    from vidpipe.scale import plan_tasks
    from vidpipe.synth import repeat_clip

    mp4 = make_clip(tmp_path / "long.mp4", frames=24, width=64, height=48, gop=6)
    ts = repeat_clip(mp4, tmp_path / "long.ts", 1)
    raw = make_clip(tmp_path / "long.h264", frames=24, width=64, height=48, gop=6)
    tasks = plan_tasks({str(mp4): tmp_path / "a.jsonl", str(ts): tmp_path / "b.jsonl",
                        str(raw): tmp_path / "c.jsonl"}, 2, 8)
    parts = [t[2] for t in tasks if t[0] == str(mp4)]
    assert len(parts) == 2 and parts[0][0] == 0 and parts[0][1] == parts[1][0] and parts[1][1] == 24
    assert [t[2] for t in tasks if t[0] in (str(ts), str(raw))] == [None, None]


def test_busy_window_counts_only_while_every_worker_is_busy(monkeypatch):
    from vidpipe import scale

    clock = iter([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    monkeypatch.setattr(scale.time, "perf_counter", lambda: next(clock))
    w = scale.BusyWindow(2)
    for message in [("frames", 0, 64),  # t=0: worker 1 still starting
                    ("frames", 1, 64),  # t=1: both busy, the window opens
                    ("frames", 0, 64), ("frames", 1, 64),  # t=2, 3: counted
                    ("done", 0, None),  # t=4: worker 0 out of work, the window closes
                    ("frames", 1, 64), ("done", 1, None)]:  # the tail: not counted
        w(*message)
    assert w.frames == 128 and w.seconds == 3.0 and w.fps == pytest.approx(128 / 3)


def test_importing_vidpipe_starts_no_cuda():
    """Importing the package and every submodule calls no torch.cuda function: a worker learns its
    GPU from CUDA_VISIBLE_DEVICES, which CUDA reads once, when it starts."""
    code = """
import importlib, pkgutil, torch, torch.cuda
calls = []
for name in ("is_available", "device_count", "_lazy_init", "init", "current_device", "get_device_properties"):
    setattr(torch.cuda, name, (lambda n: lambda *a, **k: calls.append(n))(name))
import vidpipe
for m in pkgutil.walk_packages(vidpipe.__path__, "vidpipe."):
    importlib.import_module(m.name)
print("CALLS", calls)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "CALLS []" in r.stdout, r.stdout


def test_devices_are_named_as_nvidia_smi_names_them(monkeypatch):
    from vidpipe import scale
    from vidpipe.errors import VidpipeError

    uuids = ["GPU-aaaa-1", "GPU-bbbb-2", "GPU-cccc-3"]
    monkeypatch.setattr(scale, "gpu_uuids", lambda: uuids)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [d.visible for d in scale.parse_devices("all")] == uuids
    assert [d.visible for d in scale.parse_devices("2,cuda:0")] == ["GPU-cccc-3", "GPU-aaaa-1"]
    assert {d.device for d in scale.parse_devices("all")} == {"cuda:0"}
    assert [(d.device, d.visible) for d in scale.parse_devices("cpu")] == [("cpu", "")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-aaaa")  # the process's own restriction holds
    assert [d.visible for d in scale.parse_devices("all")] == ["GPU-cccc-3", "GPU-aaaa-1"]
    assert [d.visible for d in scale.parse_devices("1")] == ["GPU-aaaa-1"]
    with pytest.raises(VidpipeError, match="no GPU 2"):
        scale.parse_devices("2")
    with pytest.raises(VidpipeError, match="not all, cpu"):
        scale.parse_devices("gpu0")


def _messages(cfg, clip, out, devices):
    from vidpipe.scale import run_processes

    messages = []
    report = run_processes(cfg, {str(clip): out}, "jsonl", devices, on_message=lambda *m: messages.append(m))
    return report, messages


@pytest.mark.cuda
def test_worker_assigned_a_missing_gpu_sees_no_gpu(tmp_path):
    """Started the way --devices starts workers, but given a GPU that does not exist: after its
    imports and the unpickling of its target, CUDA in the worker sees no device at all."""
    from vidpipe.config import Config
    from vidpipe.scale import Assignment

    clip = make_clip(tmp_path / "c.mp4", frames=8, width=64, height=48)
    missing = Assignment("cuda:0", "GPU-00000000-0000-0000-0000-000000000000", "missing")
    report, messages = _messages(Config(weights="random", batch_size=4), clip, tmp_path / "o.jsonl", [missing])
    hello = [p for kind, _, p in messages if kind == "hello"]
    assert hello and hello[0]["cuda_devices"] == 0 and hello[0]["visible"] == missing.visible
    assert [kind for kind, _, _ in messages if kind == "dead"] and report.failed


@pytest.mark.cuda
def test_worker_computes_on_the_gpu_it_was_given(tmp_path):
    from vidpipe.config import Config
    from vidpipe.scale import parse_devices

    clip = make_clip(tmp_path / "c.mp4", frames=8, width=64, height=48)
    gpu = parse_devices(str(torch.cuda.device_count() - 1))[0]  # the last GPU: not CUDA's default one
    report, messages = _messages(Config(weights="random", batch_size=4, compile="off"), clip,
                                 tmp_path / "o.jsonl", [gpu])
    assert not report.failed and report.frames == 8
    assert [p for kind, _, p in messages if kind == "hello"][0]["cuda_devices"] == 1
    assert [p for kind, _, p in messages if kind == "device"] == [gpu.visible]


@pytest.mark.cuda
def test_devices_all_puts_every_gpu_to_work(tmp_path, shared_clip):
    """Each worker of --devices all computes on a different GPU, and NVML sees every GPU busy."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2+ GPUs")
    from vidpipe.config import Config
    from vidpipe.profiling import GpuUtilization
    from vidpipe.scale import parse_devices, run_processes
    from vidpipe.synth import repeat_clip

    devices = parse_devices("all")
    targets = {}
    for i in range(2 * len(devices)):  # one file each at a time, ~15,000 frames per GPU
        clip = repeat_clip(shared_clip, tmp_path / f"{i}.mp4", 5)
        targets[str(clip)] = tmp_path / f"{i}.jsonl"
    messages = []
    with GpuUtilization() as util:
        report = run_processes(Config(weights="random", compile="off"), targets, "jsonl", devices,
                               split_frames=10**9, on_message=lambda *m: messages.append(m))
    assert not report.failed
    uuids = [p for kind, _, p in messages if kind == "device"]
    assert sorted(uuids) == sorted(d.visible for d in devices)
    busy = util.busiest()
    assert set(busy) == set(uuids) and min(busy.values()) >= 50, busy


def test_a_worker_killed_mid_file_fails_that_file_and_the_others_finish(tmp_path):
    """Two CPU workers over four files; worker 0 is killed once it has started its first file. The run
    ends (nothing the dead worker held blocks the other), the file it was running is reported failed
    with its exit code and leaves no final output, and every other file is written whole."""
    import os
    import signal
    import threading

    from vidpipe.config import Config
    from vidpipe.scale import parse_devices, run_processes

    clips = [make_clip(tmp_path / f"c{i}.mp4", frames=12, width=64, height=48, seed=i) for i in range(4)]
    targets = {str(c): tmp_path / f"{c.stem}.jsonl" for c in clips}
    pids, events = {}, []

    def on_message(kind, worker, payload) -> None:
        events.append((kind, worker))
        if kind == "hello":
            pids[worker] = payload["pid"]
        elif kind == "frames" and worker == 0 and 0 in pids:
            os.kill(pids.pop(0), signal.SIGKILL)

    ran: dict = {}
    # In a thread, so that a parent waiting on the dead worker fails the test instead of hanging it.
    run = threading.Thread(daemon=True, target=lambda: ran.update(report=run_processes(
        Config(weights="random", batch_size=2), targets, "jsonl", parse_devices("cpu") * 2, on_message=on_message)))
    run.start()
    run.join(300)
    assert not run.is_alive(), f"the run did not end after a worker was killed: {events}"
    report = ran["report"]
    failed = [v for v in report.videos if not v.ok]
    assert len(report.videos) == 4 and {v.path for v in report.videos} == set(targets)
    assert len(failed) == 1 and "died while running it (exit code -9)" in failed[0].error, failed
    for path, target in targets.items():
        if path == failed[0].path:
            assert not target.exists()
        else:
            assert len(target.read_text().splitlines()) == 12, target
