"""--kernels auto: a short run on a machine that has not compiled vidpipe's Triton kernels uses the
torch ops and leaves the compiling to a background process; the runs after it use the kernels.
CPU tests run the background process itself (on the CPU: the plumbing, the marker, one compile at
a time); the GPU test checks the effect on a cold Triton cache: which kernels ran in the process,
and the next detector's choice."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from vidpipe import Config, Detector, kernels
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


def test_long_runs_and_live_streams_take_the_kernels_short_ones_decide_later():
    cfg = Config()
    assert cfg.for_run(None).kernels == "triton"  # a live stream: long, compiling pays
    assert cfg.for_run(10**7).kernels == "triton"
    assert cfg.for_run(1552).kernels == "auto"  # the detector decides, knowing the cache
    assert Config(kernels="torch").for_run(10**7).kernels == "torch"


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
def test_a_cold_cache_runs_torch_ops_then_the_compiled_kernels(cold_cache, clip):
    # Eager launches (no graphs), so the profiler sees each kernel the run launches.
    cfg = Config(weights="random", device="cuda", cuda_graphs=False)
    first, ran = run_profiled(Detector(cfg), clip)
    assert not ran  # the torch ops, nothing of vidpipe's compiled here
    assert wait_ready(cfg, 300), [log.read_text() for log in cold_cache.rglob("*.log")]
    warm = Detector(cfg)
    second, ran = run_profiled(warm, clip)
    assert ran == set(VIDPIPE_KERNELS)
    frames = lambda rs: [(r.boxes, r.labels, r.scores) for r in rs]  # noqa: E731
    assert len(first) == len(second) and sum(len(r.labels) for r in first) > 0
    a = agree(frames(second), frames(first), iou=0.9, score_tol=0.02)
    assert a.share >= 0.97 and a.extra_share <= 0.03, a
    assert np.isfinite(first[0].scores).all()
