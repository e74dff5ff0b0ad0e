"""Measurement helpers: GPU timing with events, peak memory sampling, GIL load, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Callable

import torch


@contextmanager
def nvtx_range(name: str):
    """An NVTX range (Nsight Systems) and, while a profiler runs (``--trace``), a profiler label
    around a stage. Cheap otherwise: it wraps every chunk, launch and write (~10 us with the label)."""
    label = torch.profiler.record_function(name) if torch.autograd.profiler._is_profiler_enabled else nullcontext()
    with label:
        if _CUDA:
            torch.cuda.nvtx.range_push(name)
            try:
                yield
            finally:
                torch.cuda.nvtx.range_pop()
        else:
            yield


_CUDA = torch.cuda.is_available()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_repeats(fn: Callable[[], object], device: torch.device, *, repeats: int = 5,
                 warmup: int = 1) -> list[float]:
    """Wall seconds of ``fn()`` per repeat, the device synchronised around each."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def gpu_ms(fn: Callable[[], object], *, iters: int = 20, repeats: int = 5, warmup: int = 3) -> list[float]:
    """Milliseconds per call of ``fn`` measured with CUDA events, one figure per repeat."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / iters)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> float:
    """(max - min) / median, the run-to-run spread as a fraction."""
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m if m else 0.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak host RSS (sampled every 10 ms) and peak CUDA allocator memory inside a ``with``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host_peak = 0
        self.gpu_peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.host_peak = max(self.host_peak, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.host_peak = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.host_peak = max(self.host_peak, _rss_bytes())
        if self.device.type == "cuda":
            self.gpu_peak = torch.cuda.max_memory_allocated(self.device)


class GilLoad:
    """Estimates how much of the time the GIL is taken: a probe thread asks for it every 5 ms and
    records how long it waited. ``wait_share`` = waited / elapsed (0 = free, ~1 = always held)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.waited = 0.0
        self.elapsed = 0.0
        self._stop = threading.Event()

    def _probe(self) -> None:
        t_start = time.perf_counter()
        while not self._stop.is_set():
            t0 = time.perf_counter()
            time.sleep(self.interval)  # releases the GIL; waking up needs it back
            late = time.perf_counter() - t0 - self.interval
            self.waited += max(0.0, late)
        self.elapsed = time.perf_counter() - t_start

    def __enter__(self) -> GilLoad:
        self._thread = threading.Thread(target=self._probe, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def wait_share(self) -> float:
        return self.waited / self.elapsed if self.elapsed else 0.0


def machine_facts(device: torch.device) -> dict[str, str]:
    facts = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_cores": str(os.cpu_count()),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        try:
            import subprocess
            facts["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:
            facts["driver"] = "unknown"
    else:
        facts["gpu"] = "none (CPU)"
    try:
        import PyNvVideoCodec as nvc
        facts["PyNvVideoCodec"] = getattr(nvc, "__version__", "?")
    except Exception:
        pass
    import av
    facts["PyAV"] = av.__version__
    return facts
