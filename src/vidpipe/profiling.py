"""Measurement helpers: GPU timing with events, peak memory sampling, GIL load, where threads are,
machine facts."""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
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
        # Asked at each use, not at import: importing vidpipe must not start CUDA (a worker
        # process is told its GPU through CUDA_VISIBLE_DEVICES, read once when CUDA starts).
        if torch.cuda.is_initialized():
            torch.cuda.nvtx.range_push(name)
            try:
                yield
            finally:
                torch.cuda.nvtx.range_pop()
        else:
            yield



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


class _Sampler:
    """Runs :meth:`_tick` every ``interval`` seconds in a thread inside a ``with``."""

    interval = 0.01

    def _tick(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._tick()

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"vidpipe-sampler-{type(self).__name__}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class PeakMemory(_Sampler):
    """Peak host RSS (sampled every 10 ms) and peak CUDA allocator memory inside a ``with``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host_peak = 0
        self.gpu_peak = 0

    def _tick(self) -> None:
        self.host_peak = max(self.host_peak, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.host_peak = _rss_bytes()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.host_peak = max(self.host_peak, _rss_bytes())
        if self.device.type == "cuda":
            self.gpu_peak = torch.cuda.max_memory_allocated(self.device)


class GilLoad(_Sampler):
    """Estimates how much of the time the GIL is taken: a probe thread asks for it every 5 ms and
    records how long it waited. ``wait_share`` = waited / elapsed (0 = free, ~1 = always held)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.waited = 0.0
        self.elapsed = 0.0

    def _loop(self) -> None:
        t_start = time.perf_counter()
        while not self._stop.is_set():
            t0 = time.perf_counter()
            time.sleep(self.interval)  # releases the GIL; waking up needs it back
            late = time.perf_counter() - t0 - self.interval
            self.waited += max(0.0, late)
        self.elapsed = time.perf_counter() - t_start

    @property
    def wait_share(self) -> float:
        return self.waited / self.elapsed if self.elapsed else 0.0


class ThreadStacks(_Sampler):
    """Where this process's threads are, sampled every ``interval`` s inside a ``with``. Per group of
    threads (a thread's name without its number: ``vidpipe-decode``, ``MainThread``): the share of
    samples at each place (the innermost vidpipe line, and the call it is in when that is elsewhere),
    and the cores the group kept busy (``/proc/self/task``, Linux; threads that ended before the
    ``with`` did are not counted). A thread waiting for the GIL, a lock or the GPU shows where it
    waits and uses no CPU there. Each sample takes the GIL (tens of microseconds at 100 threads)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.places: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.threads: defaultdict[str, set[int]] = defaultdict(set)
        self._groups: dict[int, str | None] = {}  # thread ident -> its group (None: the measurement's own)
        self._cpu0: dict[int, tuple[str, float]] = {}  # native id -> (group, CPU seconds when first seen)
        self.cpu: Counter[str] = Counter()  # group -> CPU seconds inside the with
        self.elapsed = 0.0

    def __enter__(self) -> ThreadStacks:
        self._t0 = time.perf_counter()
        return super().__enter__()

    def _tick(self) -> None:
        frames = sys._current_frames()
        if frames.keys() - self._groups.keys():  # threads not seen before: named once, not every sample
            self._meet(frames.keys() - self._groups.keys())
        for ident, frame in frames.items():
            if (group := self._groups.get(ident)) is not None:
                self.places[group][_place(frame)] += 1

    def _meet(self, idents: set[int]) -> None:
        """New threads' groups, and their CPU time so far."""
        threads = {t.ident: t for t in threading.enumerate()}
        for ident in idents:
            thread = threads.get(ident)
            if thread is None:  # not a Python thread, or already gone: looked up again if sampled again
                continue
            group = None if thread.name.startswith("vidpipe-sampler-") else re.sub(r"[-_]?\d+$", "", thread.name)
            self._groups[ident] = group
            if group is not None:
                self.threads[group].add(ident)
                if thread.native_id is not None:
                    self._cpu0[thread.native_id] = (group, _thread_cpu(thread.native_id) or 0.0)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.elapsed = time.perf_counter() - self._t0
        for tid, (group, t0) in self._cpu0.items():
            if (t1 := _thread_cpu(tid)) is not None:
                self.cpu[group] += t1 - t0

    def describe(self, top: int = 4) -> list[str]:
        """A line per group, busiest first: threads, cores busy, and the ``top`` places by share."""
        lines = []
        for group in sorted(self.places, key=lambda g: -self.cpu[g]):
            places = self.places[group]
            n = sum(places.values())
            shares = "; ".join(f"{count / n:.0%} {place}" for place, count in places.most_common(top))
            lines.append(f"{group} ({len(self.threads[group])} threads, {self.cpu[group] / max(self.elapsed, 1e-9):.2f} "
                         f"cores): {shares}")
        return lines


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _place(frame) -> str:
    """``file:line function`` of the innermost vidpipe frame, with the call it is in (innermost) if
    that is outside vidpipe."""
    inner, f = frame, frame
    while f is not None and not f.f_code.co_filename.startswith(_PACKAGE):
        f = f.f_back
    outside = f"{os.path.basename(inner.f_code.co_filename)} {inner.f_code.co_name}"
    if f is None:
        return outside
    here = f"{f.f_code.co_filename[len(_PACKAGE):]}:{f.f_lineno} {f.f_code.co_name}"
    return here if f is inner else f"{here} > {outside}"


def _thread_cpu(native_id: int) -> float | None:
    """CPU seconds (user + system) a thread of this process has used; None where not readable."""
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GpuUtilization(_Sampler):
    """Every GPU's utilisation (NVML's ``gpu`` and ``decoder`` percentages, which ``nvidia-smi dmon
    -s u`` shows) sampled every ``interval`` s inside a ``with``, keyed by GPU UUID, each sample
    ``(time.perf_counter(), percent)``; read through NVML, so this process starts no CUDA context.
    Empty where NVML (``nvidia-ml-py``) is missing."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.gpu: dict[str, list[tuple[float, int]]] = {}
        self.decoder: dict[str, list[tuple[float, int]]] = {}
        self.memory: dict[str, list[tuple[float, int]]] = {}  # bytes used on the GPU, by every process
        self._handles: dict[str, object] = {}

    def __enter__(self) -> GpuUtilization:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                uuid = pynvml.nvmlDeviceGetUUID(h)
                self._handles[uuid.decode() if isinstance(uuid, bytes) else uuid] = h
        except Exception:  # no NVML: nothing to sample
            self._nvml = None
        return super().__enter__()

    def _tick(self) -> None:
        for uuid, h in self._handles.items():
            now = time.perf_counter()
            self.gpu.setdefault(uuid, []).append((now, self._nvml.nvmlDeviceGetUtilizationRates(h).gpu))
            self.decoder.setdefault(uuid, []).append((now, self._nvml.nvmlDeviceGetDecoderUtilization(h)[0]))
            self.memory.setdefault(uuid, []).append((now, self._nvml.nvmlDeviceGetMemoryInfo(h).used))

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        if self._nvml is not None:
            self._nvml.nvmlShutdown()

    def busiest(self) -> dict[str, int]:
        """The highest utilisation sampled on each GPU."""
        return {uuid: max((v for _, v in xs), default=0) for uuid, xs in self.gpu.items()}

    def describe(self, t0: float = 0.0, t1: float = float("inf")) -> str:
        """``GPU-1234…: median 97% (min 91%, 12 samples); …``, of the samples taken between
        ``t0`` and ``t1`` (``perf_counter`` times), for a results table."""
        parts = []
        for uuid, xs in self.gpu.items():
            vs = [v for t, v in xs if t0 <= t <= t1]
            if vs:
                parts.append(f"{uuid[:12]}…: median {statistics.median(vs):.0f}% (min {min(vs)}%, {len(vs)} samples)")
        return "; ".join(parts) or "no NVML samples"


class HostMemory(_Sampler):
    """Resident memory of this process and every process it started (worker processes, formatting
    processes), summed, sampled every ``interval`` s inside a ``with``. Linux only (elsewhere no samples)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (perf_counter, bytes)

    def _tick(self) -> None:
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            except (OSError, IndexError):
                continue  # gone meanwhile
            pid = int(entry.name)
            parents[pid], rss[pid] = int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        tree, grew = {os.getpid()}, True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in tree} - tree
            tree |= more
            grew = bool(more)
        if rss:
            self.samples.append((time.perf_counter(), sum(rss.get(pid, 0) for pid in tree)))


def peak(samples: list[tuple[float, int]], t0: float = 0.0, t1: float = float("inf")) -> int | None:
    """The largest of ``(time, value)`` samples taken between ``t0`` and ``t1`` (None if none)."""
    return max((v for t, v in samples if t0 <= t <= t1), default=None)


class HostCpu(_Sampler):
    """The whole host's CPU time, read from ``/proc/stat`` every ``interval`` s inside a ``with``:
    :meth:`busy` gives the cores busy on average between two ``perf_counter`` times. Linux only
    (elsewhere no samples)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (perf_counter, busy jiffies, all jiffies)

    def _tick(self) -> None:
        try:
            with open("/proc/stat") as f:
                jiffies = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return
        idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0)  # idle + iowait
        self.samples.append((time.perf_counter(), sum(jiffies) - idle, sum(jiffies)))

    def busy(self, t0: float = 0.0, t1: float = float("inf")) -> float | None:
        """Cores busy on average between ``t0`` and ``t1`` (None without two samples there)."""
        inside = [x for x in self.samples if t0 <= x[0] <= t1]
        if len(inside) < 2:
            return None
        (_, b0, a0), (_, b1, a1) = inside[0], inside[-1]
        return (b1 - b0) / max(a1 - a0, 1) * (os.cpu_count() or 1)


def machine_facts(device: torch.device) -> dict[str, str]:
    facts = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_cores": str(os.cpu_count()),
        # The host's kernel (a sandbox's shows in it): one code's live figures moved between machines, 48 served
        # cameras in one process 11.7 to 27.8 frames/s each (``vidpipe bench --suite live``).
        "kernel": platform.release(),
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
