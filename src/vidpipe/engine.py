"""Scheduling: decode ahead in threads, compute on a dedicated CUDA stream, write in a thread.

Inputs go in as paths; out come, in input order, ``VideoStart``, :class:`BatchResult` (host
detections of consecutive frames, ready once their event fires) and ``VideoEnd`` for each input.

* Decoding runs in worker threads (PyNvVideoCodec and FFmpeg release the GIL). A file NVDEC
  decodes is cut at keyframes into segments decoded in parallel; every unit has its own queue and
  the consumer drains units in order, so frames come out exactly once, in order. At most
  workers + 1 units are decoded ahead, each holding at most ``SEGMENT_BYTES / (workers + 1)``,
  so memory is bounded however long the input.
* The consumer only issues work: preprocess, model and post-processing are queued on one compute
  stream, results go to pinned host memory with ``non_blocking`` copies and an event; nothing on
  this path waits for the GPU.
* The writer thread waits for each batch's event and serialises it.

With ``Config.overlap=False`` the same loop runs serially in the calling thread (the article's
starting point): decode, infer, copy back and write one batch after another.
"""

from __future__ import annotations

import logging
import queue
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from .detector import Detector, FrameResult
from .errors import VidpipeError
from .postprocess import Detections
from .profiling import nvtx_range
from .sources import (FrameBatch, NvdecSource, PyAVSource, VideoInfo, is_stream_url, open_source, probe,
                      resolve_decoder, scan_packets)
from .sinks import Sink

log = logging.getLogger(__name__)
_DONE = object()
SEGMENT_BYTES = 8 << 30  # decoded frames that parallel NVDEC segments may hold ahead, all together
SEGMENT_FRAMES = 128  # preferred segment length; cuts fall on the next keyframe


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

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.decoded)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BatchResult:
    """Detections of ``len(indices)`` consecutive frames of ``info.path`` in host memory; valid
    once ``event`` (if any) has completed."""

    info: VideoInfo
    indices: list[int]
    times: list[float]
    det: Detections
    event: torch.cuda.Event | None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """boxes, labels, scores, counts as NumPy views, once the copy has landed."""
        if self.event is not None:
            self.event.synchronize()
        return tuple(t.numpy() for t in self.det.astuple())

    def frames(self) -> Iterator[FrameResult]:
        b, l, s, c = self.arrays()
        for i, (frame, t) in enumerate(zip(self.indices, self.times)):
            yield FrameResult(self.info.path, frame, t, self.info.width, self.info.height,
                              b[i, :c[i]], l[i, :c[i]], s[i, :c[i]])


@dataclass
class _Unit:
    """Frames ``[start, stop)`` of one input (``stop`` None = to the end), or a probe failure."""

    info: VideoInfo | None
    path: str
    start: int = 0
    stop: int | None = None
    first: bool = True
    last: bool = True
    error: str | None = None
    out: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=4))


@dataclass
class _UnitEnd:
    decoded: int
    corrupt: int
    error: str | None


def default_decoders(info: VideoInfo | None, decoder: str, device: torch.device) -> int:
    """Decode workers: small frames decode fast, so four NVDEC sessions cover the model (~7,900
    frames/s at 384x288 on an H100); 1080p needs 8-12 (~1,600-1,900 frames/s), see
    shared/reference-h100.md. FFmpeg decode threads internally, so two workers overlap files."""
    if decoder != "nvdec":
        return 2
    pixels = info.width * info.height if info else 1920 * 1080
    return 4 if pixels <= 640 * 480 else 8 if pixels <= 1920 * 1088 else 12


class FrameProducer:
    """Decodes ``inputs`` in order; iterate for VideoStart / FrameBatch / VideoEnd items."""

    def __init__(self, inputs: list[str], decoder: str, device: torch.device, batch_size: int, *,
                 workers: int = 0, threaded: bool = True, max_frames: int | None = None,
                 segment_min: int = 16, frames: tuple[int, int] | None = None) -> None:
        self.inputs = inputs
        self.decoder = resolve_decoder(decoder, device)
        self.fallback = decoder == "auto"
        self.device = device
        self.batch_size = batch_size
        self.workers = workers
        self.threaded = threaded
        self.max_frames = max_frames
        self.segment_min = segment_min
        self.frames = frames  # decode only frames [a, b) of each input (a part of a split file)
        self.stop = threading.Event()
        self._units: queue.Queue = queue.Queue()
        self._order: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._local = threading.local()

    # planning ----------------------------------------------------------------------------------
    def _plan(self, path: str) -> list[_Unit]:
        """Cut a file NVDEC decodes into keyframe-aligned segments for parallel decode: about
        two per worker, at least ``segment_min`` frames, and, so decoded frames held ahead stay
        under ``SEGMENT_BYTES``, each unit's queue holds at most that many frames."""
        try:
            info = probe(path)
        except VidpipeError as e:
            return [_Unit(None, path, error=str(e))]
        if self.decoder != "nvdec" or is_stream_url(path) or self.workers == 1:
            return [_Unit(info, path, *(self.frames or (0, None)))]
        scan = scan_packets(path)
        lo, n = self.frames or (0, len(scan.times))
        n = min(n, len(scan.times), self.max_frames or n)
        held = max(self.segment_min, SEGMENT_BYTES // ((self.workers + 1) * 3 * info.width * info.height))
        # The same segment length for a short and a long file keeps memory independent of length.
        target = max(self.segment_min, min(held, SEGMENT_FRAMES, -(-(n - lo) // (2 * self.workers))))
        bounds = [lo]
        for k in scan.keyframes:
            if k >= n:
                break
            if k - bounds[-1] >= target:
                bounds.append(k)
        bounds.append(n)
        depth = -(-held // self.batch_size) + 1
        return [_Unit(info, path, a, b, first=i == 0, last=i == len(bounds) - 2, out=queue.Queue(depth))
                for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]

    def _planner(self) -> None:
        try:
            for path in self.inputs:
                for unit in self._plan(path):
                    if self.stop.is_set():
                        return
                    self._order.put(unit)
                    self._units.put(unit)
        finally:
            self._order.put(_DONE)
            for _ in range(self.workers):
                self._units.put(_DONE)

    # decoding ----------------------------------------------------------------------------------
    def _source(self, unit: _Unit) -> PyAVSource | NvdecSource:
        cached = getattr(self._local, "source", None)
        if isinstance(cached, NvdecSource) and cached.info.path == unit.path:
            return cached  # one NVDEC session per worker and file: segments seek instead of reopening
        src = open_source(unit.path, self.decoder, self.device, max_frames=self.max_frames, info=unit.info,
                          fallback=self.fallback, slot=getattr(self._local, "slot", -1))
        self._local.source = src
        return src

    def _decode(self, unit: _Unit, put: Callable[[object], bool]) -> None:
        decoded, corrupt, error = 0, 0, None
        try:
            src = self._source(unit)
            for batch in src.batches(self.batch_size, unit.start, unit.stop):
                if self.device.type == "cuda":
                    # The batch must be complete before the decoder reuses its surfaces.
                    torch.cuda.current_stream(self.device).synchronize()
                decoded += len(batch)
                if not put(batch):
                    return
            corrupt = getattr(src, "corrupt_packets", 0)
        except VidpipeError as e:
            error = str(e)
        except Exception as e:  # a decoder failing mid-file must not take the other inputs down
            error = f"{unit.path}: decoding failed after {unit.start + decoded} frames ({type(e).__name__}: {e})"
        put(_UnitEnd(decoded, corrupt, error))

    def _worker(self, slot: int) -> None:
        self._local.slot = slot
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            while not self.stop.is_set():
                # At most workers + 1 units decoded ahead of the consumer: bounded memory.
                while not self._in_flight.acquire(timeout=0.1):
                    if self.stop.is_set():
                        return
                unit = self._units.get()
                if unit is _DONE:
                    return
                if unit.error is not None:
                    self._in_flight.release()  # the consumer releases only units it drains
                    continue
                self._decode(unit, lambda item, u=unit: self._put(u.out, item))

    def _put(self, q: queue.Queue, item: object) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    # consuming ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[VideoStart | FrameBatch | VideoEnd]:
        if not self.threaded:
            yield from self._serial()
            return
        self.workers = self.workers or default_decoders(self._first_info(), self.decoder, self.device)
        self._in_flight = threading.Semaphore(self.workers + 1)
        self._threads = [threading.Thread(target=self._planner, name="vidpipe-plan", daemon=True)]
        self._threads += [threading.Thread(target=self._worker, args=(i,), name=f"vidpipe-decode{i}",
                                           daemon=True) for i in range(self.workers)]
        for t in self._threads:
            t.start()
        try:
            yield from self._ordered()
        finally:
            self.close()

    def _first_info(self) -> VideoInfo | None:
        for path in self.inputs[:1]:
            try:
                return probe(path)
            except VidpipeError:
                return None
        return None

    def _ordered(self) -> Iterator[VideoStart | FrameBatch | VideoEnd]:
        end = VideoEnd("")
        rebatch = _Rebatcher(self.batch_size)
        while True:
            unit = self._order.get()
            if unit is _DONE:
                return
            if unit.error is not None:
                yield VideoEnd(unit.path, error=unit.error, fatal=True)
                continue
            if unit.first:
                yield VideoStart(unit.info)
                end = VideoEnd(unit.path, expected=self._expected(unit.info))
            while True:
                item = unit.out.get()
                if isinstance(item, _UnitEnd):
                    break
                if not end.fatal:  # after a failed segment, the rest of its file is dropped
                    yield from rebatch.push(item)
            self._in_flight.release()
            if end.fatal:
                continue
            end.decoded += item.decoded
            end.corrupt_packets += item.corrupt
            if item.error is not None:
                end.error, end.fatal = item.error, True
            if unit.last or end.fatal:
                yield from rebatch.flush()
                end.error = end.error or self._loss_error(end)
                yield end

    def _serial(self) -> Iterator[VideoStart | FrameBatch | VideoEnd]:
        for path in self.inputs:
            try:
                src = self._source(_Unit(probe(path), path))
            except VidpipeError as e:
                yield VideoEnd(path, error=str(e), fatal=True)
                continue
            except Exception as e:
                yield VideoEnd(path, error=f"{path}: cannot open ({type(e).__name__}: {e})", fatal=True)
                continue
            yield VideoStart(src.info)
            end = VideoEnd(path, expected=self._expected(src.info))
            try:
                for batch in src.batches(self.batch_size, *(self.frames or (0, None))):
                    end.decoded += len(batch)
                    yield batch
                end.corrupt_packets = getattr(src, "corrupt_packets", 0)
                end.error = self._loss_error(end)
            except Exception as e:
                end.error = f"{path}: decoding failed after {end.decoded} frames ({type(e).__name__}: {e})"
                end.fatal = True
            yield end

    def _expected(self, info: VideoInfo) -> int:
        n = info.num_frames if self.max_frames is None else min(info.num_frames, self.max_frames)
        return n if self.frames is None else max(0, min(n, self.frames[1]) - self.frames[0])

    @staticmethod
    def _loss_error(end: VideoEnd) -> str | None:
        if end.lost or end.corrupt_packets:
            return (f"{end.path}: damaged: decoded {end.decoded} of {end.expected} frames "
                    f"({end.lost} lost, {end.corrupt_packets} corrupt packets skipped)")
        return None

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=5)


class _Rebatcher:
    """Regroups decoded chunks of one file into batches of exactly ``size`` frames (the last may
    be short), so segment borders cost no padding."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.parts: list[FrameBatch] = []
        self.count = 0

    def push(self, chunk: FrameBatch) -> Iterator[FrameBatch]:
        if not self.parts and len(chunk) == self.size:
            yield chunk
            return
        self.parts.append(chunk)
        self.count += len(chunk)
        while self.count >= self.size:
            yield self._take(self.size)

    def flush(self) -> Iterator[FrameBatch]:
        if self.count:
            yield self._take(self.count)

    def _take(self, n: int) -> FrameBatch:
        frames = torch.cat([p.frames for p in self.parts])
        indices = [i for p in self.parts for i in p.indices]
        times = [t for p in self.parts for t in p.times]
        video = self.parts[0].video
        rest = FrameBatch(video, frames[n:], indices[n:], times[n:])
        self.parts, self.count = ([rest], len(rest)) if len(rest) else ([], 0)
        return FrameBatch(video, frames[:n], indices[:n], times[:n])


def process(detector: Detector, inputs: list[str], frames: tuple[int, int] | None = None
            ) -> Iterator[VideoStart | BatchResult | VideoEnd]:
    """Decode and detect ``inputs`` (only frames ``[a, b)`` of each with ``frames``); see the
    module docstring. The caller waits on each result."""
    cfg = detector.config
    cuda = detector.device.type == "cuda"
    producer = FrameProducer(inputs, cfg.decoder, detector.device, detector.batch_size,
                             workers=cfg.decoders, threaded=cfg.overlap, max_frames=cfg.max_frames, frames=frames)
    compute = torch.cuda.Stream(detector.device) if cuda and cfg.overlap else None
    info: VideoInfo | None = None
    try:
        with torch.cuda.stream(compute) if compute is not None else nullcontext():
            for item in producer:
                if isinstance(item, FrameBatch):
                    with nvtx_range("batch"):
                        if compute is not None:
                            item.frames.record_stream(compute)
                        det = detector.infer(item.frames)
                        if compute is not None:
                            host = det.to("cpu", non_blocking=True)
                            event = torch.cuda.Event()
                            event.record()
                        else:
                            host, event = det.to("cpu"), None
                    yield BatchResult(info, item.indices, item.times, host, event)
                else:
                    if isinstance(item, VideoStart):
                        info = item.info
                    yield item
    finally:
        producer.close()


def iter_results(detector: Detector, inputs: list[str]) -> Iterator[FrameResult]:
    """Per-frame results, lazily; one batch stays in flight so the GPU never waits for the reader.
    A damaged or unreadable input raises :class:`VidpipeError` after its good frames."""
    pending: BatchResult | None = None
    for item in process(detector, inputs):
        if pending is not None and not isinstance(item, VideoStart):
            yield from pending.frames()
            pending = None
        if isinstance(item, BatchResult):
            pending = item
        elif isinstance(item, VideoEnd) and item.error:
            raise VidpipeError(item.error)
    if pending is not None:
        yield from pending.frames()


SinkFactory = Callable[[VideoInfo], Sink]


@dataclass
class RunReport:
    videos: list[VideoEnd] = field(default_factory=list)
    frames: int = 0

    @property
    def failed(self) -> list[VideoEnd]:
        return [v for v in self.videos if not v.ok]


class _Writer:
    """Consumes process()'s items: opens a sink per video, writes batches once their copy is done,
    closes sinks (complete only when the video finished). Runs in a thread when ``threaded``."""

    def __init__(self, sink_for: SinkFactory, threaded: bool, on_frames: Callable[[int], None] | None,
                 on_video: Callable[[VideoEnd], None] | None) -> None:
        self.sink_for, self.on_frames, self.on_video = sink_for, on_frames, on_video
        self.sink: Sink | None = None
        self.report = RunReport()
        self.error: BaseException | None = None
        self.q: queue.Queue | None = queue.Queue(maxsize=8) if threaded else None
        self.thread = threading.Thread(target=self._loop, name="vidpipe-write", daemon=True) if threaded else None
        if self.thread:
            self.thread.start()

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        if self.q is None:
            self._handle(item)
        else:
            self.q.put(item)

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            if item is _DONE:
                return
            try:
                self._handle(item)
            except BaseException as e:  # surfaced to the producer thread on its next put
                self.error = e
                self._abort()
                return

    def _handle(self, item) -> None:
        if isinstance(item, VideoStart):
            self.sink = self.sink_for(item.info)
        elif isinstance(item, BatchResult):
            with nvtx_range("write"):
                b, l, s, c = item.arrays()
                self.sink.write(item.indices, item.times, b, l, s, c)
            self.report.frames += len(item.indices)
            if self.on_frames:
                self.on_frames(len(item.indices))
        elif isinstance(item, VideoEnd):
            if self.sink is not None:
                # A damaged file decoded to its end is a complete output; one that broke off is not.
                self.sink.close(complete=not item.fatal)
                self.sink = None
            self.report.videos.append(item)
            if self.on_video:
                self.on_video(item)

    def _abort(self) -> None:
        if self.sink is not None:
            self.sink.close(complete=False)
            self.sink = None

    def finish(self, ok: bool) -> RunReport:
        if self.q is not None:
            if ok:
                self.q.put(_DONE)
                self.thread.join()
            else:
                self._drain()
        if not ok:
            self._abort()
        if self.error is not None:
            raise self.error
        return self.report

    def _drain(self) -> None:
        # Interrupted: stop after whatever is queued, never block on a full queue.
        while self.thread.is_alive():
            try:
                self.q.put(_DONE, timeout=0.1)
                break
            except queue.Full:
                try:
                    self.q.get_nowait()
                except queue.Empty:
                    pass
        self.thread.join(timeout=5)


def run(detector: Detector, inputs: list[str], sink_for: SinkFactory, *,
        on_frames: Callable[[int], None] | None = None,
        on_video: Callable[[VideoEnd], None] | None = None, frames: tuple[int, int] | None = None) -> RunReport:
    """Detect every input into its sink; one bad input is reported and never stops the others.
    On an exception (KeyboardInterrupt included) open outputs stay ``.partial``."""
    writer = _Writer(sink_for, detector.config.overlap, on_frames, on_video)
    ok = False
    try:
        for item in process(detector, inputs, frames):
            writer.put(item)
        ok = True
    finally:
        report = writer.finish(ok)
    return report
