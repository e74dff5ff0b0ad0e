"""What crosses between the engine's parts and out of it.

* Planning -> decoding: :class:`Unit` (frames ``[start, stop)`` of one input).
* Decoding -> scheduling: :class:`Chunk` (decoded frames of a unit, on the device) and
  :class:`UnitEnd` (how the unit's decoding ended).
* Scheduling -> writing (in input order): :class:`VideoStart`, :class:`BatchResult` (host
  detections of consecutive frames of one input, valid once its event has completed),
  :class:`VideoEnd`.
* Out of a run: :class:`RunReport`.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ..coco import SSD300_CLASSES, Classes
from ..detector import FrameResult
from ..postprocess import Detections
from ..sources import FrameBatch, VideoInfo
from ..track import Tracker


@dataclass
class VideoStart:
    info: VideoInfo


@dataclass
class VideoEnd:
    """How decoding of one input ended: ``error`` is None when every frame the header promised
    (or ``max_frames``) was decoded."""

    path: str
    decoded: int = 0
    expected: int = 0
    corrupt_packets: int = 0
    error: str | None = None
    fatal: bool = False  # decoding broke off (vs. a damaged file decoded to its end)
    dropped: int = 0  # live frames decoded but skipped by --live-policy latest (not in ``decoded``)
    # Of those, frames replaced within half a frame period of coming: the decoder handed several over at
    # once (a burst), rather than the engine falling behind.
    dropped_in_bursts: int = 0
    stopped: bool = False  # its source was removed while it ran (LiveSources): ended early on request
    analytics: dict | None = None  # with lines or zones: the video's totals (Analytics.totals)
    info: VideoInfo | None = field(default=None, repr=False, compare=False)  # the video's, when it was probed

    @property
    def lost(self) -> int:
        return 0 if self.stopped else max(0, self.expected - self.decoded - self.dropped)

    @property
    def ok(self) -> bool:
        return self.error is None


def finite_rows(arrays: tuple[np.ndarray, ...]) -> np.ndarray:
    """Per frame of ``(boxes, labels, scores, counts)``: every valid box and score finite."""
    boxes, _, scores, counts = arrays
    valid = np.arange(boxes.shape[1]) < counts[:, None]
    return ~((~np.isfinite(boxes).all(-1) | ~np.isfinite(scores)) & valid).any(1)


class HostBatch:
    """One issued batch's detections in host memory (valid once ``event``, if any, has completed), as
    the results of its rows share them: NumPy views and which rows are finite, made once for the batch.
    A live batch holds a result per camera, and each result making its own (a torch slice and a NumPy
    view per tensor, a wait on the event, the finite check) was a third of the writer's share of the
    GIL with 64 cameras on an H200 (``bench/live_writer.py``)."""

    def __init__(self, det: Detections, event: torch.cuda.Event | None) -> None:
        self.det, self.event = det, event
        self._arrays: tuple[np.ndarray, ...] | None = None
        self._finite: np.ndarray | None = None

    def arrays(self) -> tuple[np.ndarray, ...]:
        if self._arrays is None:
            if self.event is not None:
                self.event.synchronize()
            self._arrays = tuple(t.numpy() for t in self.det.astuple())
        return self._arrays

    def finite(self) -> np.ndarray:
        if self._finite is None:
            self._finite = finite_rows(self.arrays())
        return self._finite


@dataclass
class BatchResult:
    """Detections of ``len(indices)`` consecutive frames of ``info.path``: rows ``row ..`` of
    ``det`` (a whole batch) in host memory; valid once ``event`` (if any) has completed."""

    info: VideoInfo
    indices: list[int]
    times: list[float]
    det: Detections
    event: torch.cuda.Event | None
    row: int = 0
    text: str | Future | None = None  # formatted as soon as it landed, ahead of its turn (see write.Writer)
    classes: Classes = SSD300_CLASSES  # names the class ids
    captured: list[float] | None = None  # a live source's frames: wall-clock capture (time.time())
    # With annotated video: these frames' pixels (uint8 [n, 3, H, W] on the device, ready once
    # ``pixels_ready`` has completed), held until written, counted in the run's FrameBudget.
    pixels: torch.Tensor | None = None
    pixels_ready: torch.cuda.Event | None = None
    shared: HostBatch | None = None  # ``det`` and ``event`` as every result of the batch sees them
    # For a live view: the last of these frames (uint8 [1, 3, H, W] on the device, ready once
    # ``preview_ready`` has completed), drawn and encoded by the writer.
    preview: torch.Tensor | None = None
    preview_ready: torch.cuda.Event | None = None
    size: tuple[int, int] | None = None  # the frames' (width, height); None: the video's

    def resized(self) -> tuple[int, int] | None:
        """The frames' (width, height) where it is not their video's (a stream that changed resolution)."""
        return self.size if self.size is not None and self.size != (self.info.width, self.info.height) else None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """boxes, labels, scores, counts of these frames as NumPy views, once the copy has landed."""
        rows = slice(self.row, self.row + len(self.indices))
        if self.shared is not None:
            return tuple(a[rows] for a in self.shared.arrays())
        if self.event is not None:
            self.event.synchronize()
        return tuple(t[rows].numpy() for t in self.det.astuple())

    def finite(self) -> bool:
        """Whether every valid box and score of these frames is finite (a NaN in JSON is invalid JSON)."""
        if self.shared is not None:
            return bool(self.shared.finite()[self.row:self.row + len(self.indices)].all())
        return bool(finite_rows(self.arrays()).all())

    def frames(self, tracker: Tracker | None = None) -> Iterator[FrameResult]:
        """Per-frame results; with ``tracker`` (this video's, fed in frame order) with track ids."""
        b, l, s, c = self.arrays()
        ids = None
        if tracker is not None:
            b, l, s, c, ids = tracker.batch(b, l, s, c)
        for i, (frame, t) in enumerate(zip(self.indices, self.times)):
            yield FrameResult(self.info.path, frame, t, self.info.width, self.info.height,
                              b[i, :c[i]], l[i, :c[i]], s[i, :c[i]], self.classes,
                              None if ids is None else ids[i, :c[i]])


@dataclass(eq=False)
class Unit:
    """Frames ``[start, stop)`` (``stop`` None = to the end) of one input, the ``seq``-th unit in
    input order; ``error`` when the input could not even be probed."""

    seq: int
    info: VideoInfo | None
    path: str
    start: int = 0
    stop: int | None = None
    first: bool = True
    last: bool = True
    error: str | None = None


@dataclass
class Chunk:
    """Consecutive frames of ``unit``; a unit's chunks come in frame order. ``admitted``: it took
    one of the producer's places for chunks (a live frame under the ``latest`` policy takes none)."""

    unit: Unit
    batch: FrameBatch
    admitted: bool = True


@dataclass
class UnitEnd:
    """The end of ``unit``, after all its chunks: frames decoded and handed over, corrupt packets,
    error, live frames decoded but dropped for newer ones (``latest`` policy; of those, how many in
    bursts: :class:`VideoEnd`), and whether it was stopped on request (its source removed)."""

    unit: Unit
    decoded: int = 0
    corrupt: int = 0
    error: str | None = None
    dropped: int = 0
    dropped_in_bursts: int = 0
    stopped: bool = False


class FrameBudget:
    """Frames held for annotated video between the scheduler (which takes room before it keeps a
    batch's frames) and the writer (which gives it back once they are encoded): at most ``limit``,
    so a slow encoder slows the GPU down instead of filling its memory. :meth:`close` releases any
    waiter (the writer stopped)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held, self.closed = limit, 0, False
        self._cond = threading.Condition()

    def take(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.closed or self.held == 0 or self.held + n <= self.limit)
            self.held += n

    def give(self, n: int) -> None:
        with self._cond:
            self.held -= n
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


@dataclass
class RunReport:
    videos: list[VideoEnd] = field(default_factory=list)
    frames: int = 0

    @property
    def failed(self) -> list[VideoEnd]:
        return [v for v in self.videos if not v.ok]


