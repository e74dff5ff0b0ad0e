"""--kernels auto: a run on a machine that has not compiled vidpipe's Triton kernels starts on the
torch ops and leaves the compiling to a background process; it takes the kernels when they are
ready, and the runs after it start with them.
CPU tests run the background process itself (on the CPU: the plumbing, the marker, one compile at
a time); the GPU test checks the effect on a cold Triton cache: which kernels ran in the process,
and the next detector's choice."""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from vidpipe import Config, Detector, kernels
from vidpipe import detector as detector_module
from vidpipe.agreement import agree
from vidpipe.api import detect


def wait_ready(cfg: Config, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if kernels.ready(cfg):
            return True
        time.sleep(0.5)
    return False


@pytest.fixture
def cold_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    return tmp_path / "triton"


def test_the_marker_follows_what_the_kernels_are_specialised_on():
    """An IoU threshold whose float32 midpoint rounds the other way compiles another NMS kernel
    (TIE_UP), so it has its own marker; a score threshold (a float argument) does not."""
    pytest.importorskip("triton")
    from vidpipe.nms import _threshold

    assert _threshold(0.7)[1] != _threshold(0.45)[1]  # the two thresholds do compile differently
    yolo = Config(model="yolo11m.yaml")
    assert kernels.key(yolo.replace(iou_threshold=0.7)) != kernels.key(yolo.replace(iou_threshold=0.45))
    assert kernels.key(yolo.replace(score_threshold=0.3)) == kernels.key(yolo.replace(score_threshold=0.4))


def test_background_compile_writes_the_marker_once(cold_cache):
    triton = pytest.importorskip("triton")  # noqa: F841 - the key names Triton's version
    cfg = Config(weights="random", device="cpu", batch_size=2)
    assert kernels.choose(cfg, "cuda") == "torch"  # cold: nothing compiled here yet
    assert kernels.compile_in_background(cfg, "cpu", 48, 64)
    assert not kernels.compile_in_background(cfg, "cpu", 48, 64)  # one at a time
    assert wait_ready(cfg, 240), [log.read_text() for log in cold_cache.rglob("*.log")]
    assert kernels.choose(cfg, "cuda") == "triton"
    assert not list(cold_cache.rglob("*.compiling"))
    other = cfg.replace(per_class_candidates=100)  # other constants: other kernels
    assert kernels.choose(other, "cuda") == "torch"
    assert kernels.choose(cfg.replace(track=True, score_threshold=0.5), "cuda") == "triton"  # not compiled in


VIDPIPE_KERNELS = ("_resize_normalize_kernel", "_boxes_kernel", "_select_kernel", "_candidates_kernel",
                   "_nms_kernel", "_best_kernel")


def run_profiled(det: Detector, clip) -> tuple[list, set[str]]:
    """The results, and the names of vidpipe's Triton kernels the GPU ran meanwhile."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        results = list(detect(clip, det))
        torch.cuda.synchronize()
    return results, {e.name for e in prof.events() if e.name in VIDPIPE_KERNELS}


@pytest.mark.cuda
def test_a_cold_cache_runs_torch_ops_then_takes_the_compiled_kernels(cold_cache, clip):
    # Eager launches (no graphs), so the profiler sees each kernel the run launches.
    cfg = Config(weights="random", device="cuda", cuda_graphs=False)
    det, graphed = Detector(cfg), Detector(cfg.replace(cuda_graphs=True))
    first, ran = run_profiled(det, clip)
    assert not ran  # the torch ops, nothing of vidpipe's compiled here
    list(detect(clip, graphed))
    assert all(g.post_eager is not None for g in graphed._graphs.values())  # torch ops read counts on the host
    assert wait_ready(cfg, 300), [log.read_text() for log in cold_cache.rglob("*.log")]
    time.sleep(detector_module.KERNELS_POLL_S)
    second, ran = run_profiled(det, clip)  # the same detector: it takes them
    assert ran == set(VIDPIPE_KERNELS)
    third = list(detect(clip, graphed))  # captured again, post-processing inside the graph now
    assert graphed._graphs and all(g.post_eager is None for g in graphed._graphs.values())
    _, ran = run_profiled(Detector(cfg), clip)  # a new one starts with them
    assert ran == set(VIDPIPE_KERNELS)
    frames = lambda rs: [(r.boxes, r.labels, r.scores) for r in rs]  # noqa: E731
    assert len(first) == len(second) and sum(len(r.labels) for r in first) > 0
    for other in (second, third):
        a = agree(frames(other), frames(first), iou=0.9, score_tol=0.02)
        assert a.share >= 0.97 and a.extra_share <= 0.03, a
    assert np.isfinite(first[0].scores).all()


@pytest.fixture
def key_calls(monkeypatch):
    """Triton's key function, recorded: the thread of each call; the key cleared, so it is computed anew."""
    cache = pytest.importorskip("triton.runtime.cache")
    original = cache.triton_key
    original.cache_clear()
    calls: list[str] = []

    def recorded():
        calls.append(threading.current_thread().name)
        return original()

    monkeypatch.setattr(cache, "triton_key", recorded)
    yield calls, original
    original.cache_clear()


def test_the_triton_key_is_computed_on_a_thread_at_a_short_switch_interval(key_calls, monkeypatch):
    calls, original = key_calls
    intervals = []
    monkeypatch.setattr(kernels, "switch_interval", lambda s: (intervals.append(s), nullcontext())[1])
    thread = kernels.key_ahead(0.0002)
    thread.join()
    assert calls == ["vidpipe-triton-key"] and original.cache_info().currsize == 1
    assert intervals == [0.0002]


@pytest.mark.cuda
def test_a_detector_launches_its_first_kernel_with_the_key_computed_ahead(key_calls, clip):
    """The key is computed once, on the detector's thread, before its first batch (not by the first launch)."""
    calls, original = key_calls
    det = Detector(Config(weights="random", device="cuda", kernels="triton"))
    assert len(list(detect(clip, det))) > 0
    assert calls[0] == "vidpipe-triton-key" and original.cache_info().misses == 1
