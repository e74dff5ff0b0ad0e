"""The GPU state of one device in one process: streams, pooled NVDEC sessions, the capture gate.

In: a ``torch.device``. Out: a :class:`DeviceRuntime` that hands out one CUDA stream per role, keeps
idle NVDEC sessions for reuse (a file decoder per decode slot, stream decoders per kind of stream),
and gives the :class:`CaptureGate` that keeps NVDEC's device-synchronising calls out of CUDA-graph
captures on that device. A :class:`~vidpipe.detector.Detector` owns one runtime for its device (tests
create one and :meth:`~DeviceRuntime.close` it); what runtimes share is what guards the GPU itself, one
per GPU in the process (:class:`GpuGuards`): the gate, since an NVDEC call invalidates a capture on its
GPU whichever detector made either, and the lock that keeps NVDEC session creations one at a time.
Nothing touches CUDA until a stream, session or guard is asked for.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Hashable, Iterator

import torch


class CaptureGate:
    """NVDEC calls that may synchronise the whole device would invalidate a CUDA graph being captured
    on another thread: creating, re-pointing, seeking and freeing a session, and a session's first
    decode after those (where NVDEC creates its decoder). On an H200, captures beside fresh sessions'
    ungated first decodes failed 4 times in 61 sessions, beside ungated frees 10 in 34; gated, none
    (``tests/test_sources.py``, the capture test). They run inside :meth:`setup`, which does not
    exclude other setups (a lock would add its own queue to the GIL's: ``seek_to_index`` holds the
    GIL, ~1.5 ms measured, so in practice seeks still run one after another); the detector captures
    inside :meth:`capture`, which waits for running setups and holds new ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._setups = 0
        self._captures = 0  # waiting or running

    @contextmanager
    def setup(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._captures == 0)
            self._setups += 1
        try:
            yield
        finally:
            with self._cond:
                self._setups -= 1
                self._cond.notify_all()

    @contextmanager
    def capture(self) -> Iterator[None]:
        with self._cond:
            self._captures += 1
            self._cond.wait_for(lambda: self._setups == 0)
        try:
            yield
        finally:
            with self._cond:
                self._captures -= 1
                self._cond.notify_all()


class GpuGuards:
    """What every runtime on one GPU in the process shares: the capture gate, and the lock that keeps
    NVDEC session creation and re-pointing one at a time (creations do not run in parallel in the
    driver anyway, and interleaved ones failed)."""

    def __init__(self) -> None:
        self.gate = CaptureGate()
        self.create_lock = threading.Lock()


_guards: dict[int, GpuGuards] = {}
_guards_lock = threading.Lock()


def gpu_guards(device: torch.device) -> GpuGuards:
    """The process's guards of a GPU (``cuda`` without an index: the current one)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _guards_lock:
        return _guards.setdefault(index, GpuGuards())


def warm_up(device: torch.device) -> threading.Thread | None:
    """Start, on a daemon thread, what a device's first batch would otherwise wait for: the CUDA
    context and cuDNN's and cuBLAS's libraries (loaded on their first call). torch releases the GIL
    inside these calls, so they overlap the model build that follows (torchvision's import is mostly
    Python). None on a CPU."""
    if device.type != "cuda":
        return None

    def work() -> None:
        try:
            with torch.cuda.device(device):
                x = torch.zeros(1, 8, 8, 8, device=device, dtype=torch.float16).to(memory_format=torch.channels_last)
                torch.nn.functional.conv2d(x, torch.zeros(8, 8, 3, 3, device=device, dtype=torch.float16))
                a = torch.zeros(64, 64, device=device, dtype=torch.float16)
                torch.mm(a, a)
        except Exception:  # noqa: BLE001 - the detector meets the same failure and reports it in one line
            return

    thread = threading.Thread(target=work, name="vidpipe-warm-up", daemon=True)
    thread.start()
    return thread


class DeviceRuntime:
    """One detector's state on its device (streams, pooled sessions), and the GPU's shared guards.
    Thread-safe."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._guards: GpuGuards | None = None
        self._lock = threading.Lock()
        self._streams: dict[object, torch.cuda.Stream] = {}
        self._sessions: dict[Hashable, list[tuple]] = {}

    @property
    def gate(self) -> CaptureGate:
        """The device's capture gate (shared by every runtime on this GPU in the process)."""
        return self._shared().gate

    @property
    def create_lock(self) -> threading.Lock:
        """Held while an NVDEC session is created or re-pointed on this GPU (by any runtime)."""
        return self._shared().create_lock

    def _shared(self) -> GpuGuards:
        if self._guards is None:
            self._guards = gpu_guards(self.device) if self.device.type == "cuda" else GpuGuards()
        return self._guards

    def stream(self, role: object) -> torch.cuda.Stream | None:
        """One stream per ``role`` (None on a CPU). The caching allocator keeps freed blocks per
        stream, so a new stream per input (torch hands out 32 in turn) would cache a batch's worth
        of frames on each of them: GB of reserved memory over a corpus."""
        if self.device.type != "cuda":
            return None
        with self._lock:
            if role not in self._streams:
                self._streams[role] = torch.cuda.Stream(self.device)
            return self._streams[role]

    def take_session(self, key: Hashable) -> tuple | None:
        """An NVDEC session pooled under ``key`` (a decode slot, or a kind of stream), removed from the
        pool while in use; None if there is none."""
        with self._lock:
            idle = self._sessions.get(key)
            return idle.pop() if idle else None

    def put_session(self, key: Hashable, session: tuple) -> None:
        with self._lock:
            self._sessions.setdefault(key, []).append(session)

    def close(self) -> None:
        """Drop the pooled sessions and streams (their memory goes back once nothing uses them)."""
        with self.gate.setup(), self._lock:  # a session freed here frees device memory: a device-wide sync
            self._sessions.clear()
            self._streams.clear()
