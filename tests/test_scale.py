"""Scale-out paths give the same detections as the local path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vidpipe.synth import make_clip

CLI = [sys.executable, "-m", "vidpipe.cli", "detect"]
COMMON = ["--weights", "random", "--device", "cpu", "--batch-size", "2"]


def detections(outdir):
    return {p.name: [json.loads(x)["detections"] for x in p.read_text().splitlines()]
            for p in sorted(outdir.iterdir())}


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


@pytest.mark.parametrize("visible,device,expect", [(None, "cuda:1", "1"), ("4,6", "cuda:1", "6"),
                                                   (None, "cpu", None)])
def test_each_worker_sees_only_its_gpu(monkeypatch, visible, device, expect):
    from vidpipe.scale import _only_gpu

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert _only_gpu(device) == ("cpu" if expect is None else "cuda:0")
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == (visible if expect is None else expect)
