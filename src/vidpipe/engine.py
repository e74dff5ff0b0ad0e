"""Scheduling: decode ahead in threads, batch whatever is decoded, restore order on the results.

Inputs go in as paths; out come, in input order, ``VideoStart``, :class:`BatchResult` (host
detections of consecutive frames of one input, ready once their event fires) and ``VideoEnd``;
and each result once more, earlier and out of order, as :class:`Issued` when its batch is issued.

* Decoding runs in worker threads (PyNvVideoCodec and FFmpeg release the GIL). A file NVDEC
  decodes is cut at keyframes into units decoded in parallel, and several files are decoded at
  once. Workers hand over chunks of at most ``CHUNK_BYTES`` of frames; of those ready, the
  earliest unit's go first.
* The compute thread fills batches from whichever chunks are ready (a batch may span units and
  files of one frame size), so the GPU never waits for the one worker holding the next frames in
  order. A batch goes out short only while the GPU idles, and only when that costs nothing or
  waiting would cost more: a run of one file knows how much padding its batches will carry and
  spends it on starting the first batch with the first frames decoded; frames that trickle in
  (a live stream) wait at most ``MAX_WAIT``. A chunk is copied into the batch (the CUDA graph's
  input) as it arrives and freed, so frames are not held while a batch fills.
* Order is restored on the results, which are small: detections of a unit are held until every
  earlier unit has been emitted. At most ``4 x workers`` units are open, at most ``workers + 2``
  chunks exist at once (fewer when that passes ``READY_BYTES``: a worker waits for room before
  it allocates one) and at most ``IN_FLIGHT`` batches are queued on the GPU, so host and GPU
  memory do not grow with the length of the input.
* The compute thread only issues work: on CUDA two graph replays per batch (model on its own
  stream, post-processing beside the next batch's model, see :class:`~vidpipe.detector.Detector`);
  results go to pinned host memory with ``non_blocking`` copies and an event. The writer thread
  formats each batch's results as soon as they land (before they are back in order: results held
  for ordering are text by then) and writes them in order.

With ``Config.overlap=False`` the same loop runs serially in the calling thread (the article's
starting point): decode, infer, copy back and write one batch after another.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
import torch

from .coco import SSD300_CLASSES, Classes
from .detector import Batch, Detector, FrameResult
from .errors import VidpipeError
from .postprocess import Detections
from .profiling import nvtx_range
from .runtime import DeviceRuntime
from .inputs import is_stream_url
from .sources import (FrameBatch, NvdecSource, PyAVSource, VideoInfo, open_source, probe,
                      resolve_decoder, scan_packets)
from .sinks import Sink

log = logging.getLogger(__name__)
DONE = object()  # FrameProducer.get: every input is decoded
_STOP = object()
CHUNK_BYTES = 32 << 20  # decoded frames handed over at once by a worker, at most
READY_BYTES = 128 << 20  # decoded frames not yet taken by the compute thread, about at most
IN_FLIGHT = 3  # batches issued to the GPU and not finished: enough to keep it busy, bounds memory
# Longest a frame waits for its batch to fill while the GPU idles. A short batch costs a full one
# on the GPU (padding), so files, which fill a batch in ~10-30 ms, send theirs out full.
MAX_WAIT = 0.05
SEGMENT_FRAMES = 1024  # longest part of one file a worker decodes alone; cuts fall on keyframes
# Results waiting for the writer, at most (a few kB each). Generous on purpose: the writer waits for
# each batch's copy, so with a short queue a burst of results released by the orderer blocked the
# compute thread until the GPU had drained (measured: 26 ms of GPU idle on in.mp4's 0.3 s).
WRITE_QUEUE = 256


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
    """Detections of ``len(indices)`` consecutive frames of ``info.path``: rows ``row ..`` of
    ``det`` (a whole batch) in host memory; valid once ``event`` (if any) has completed."""

    info: VideoInfo
    indices: list[int]
    times: list[float]
    det: Detections
    event: torch.cuda.Event | None
    row: int = 0
    text: str | None = None  # formatted by the writer before its turn came (see Issued)
    classes: Classes = SSD300_CLASSES  # names the class ids

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """boxes, labels, scores, counts of these frames as NumPy views, once the copy has landed."""
        if self.event is not None:
            self.event.synchronize()
        rows = slice(self.row, self.row + len(self.indices))
        return tuple(t[rows].numpy() for t in self.det.astuple())

    def frames(self) -> Iterator[FrameResult]:
        b, l, s, c = self.arrays()
        for i, (frame, t) in enumerate(zip(self.indices, self.times)):
            yield FrameResult(self.info.path, frame, t, self.info.width, self.info.height,
                              b[i, :c[i]], l[i, :c[i]], s[i, :c[i]], self.classes)


@dataclass
class Issued:
    """A :class:`BatchResult` as soon as its batch is issued, before results are put back in
    order: the writer formats it once it lands, so what is held back for ordering (and released
    when the GPU is done) is text ready to write. The same result comes again in its turn."""

    result: BatchResult


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
    """Consecutive frames of ``unit``; a unit's chunks come in frame order."""

    unit: Unit
    batch: FrameBatch


@dataclass
class UnitEnd:
    """The end of ``unit``, after all its chunks: frames decoded, corrupt packets, error."""

    unit: Unit
    decoded: int = 0
    corrupt: int = 0
    error: str | None = None


def default_decoders(info: VideoInfo | None, decoder: str, device: torch.device) -> int:
    """Decode workers: small frames decode fast, so four NVDEC sessions cover the model (~7,900
    frames/s at 384x288 on an H100); 1080p needs 8-12 (~1,600-1,900 frames/s), see
    shared/reference-h100.md. FFmpeg decode threads internally, so two workers overlap files."""
    if decoder != "nvdec":
        return 2
    pixels = info.width * info.height if info else 1920 * 1080
    return 4 if pixels <= 640 * 480 else 12


class _Stopped(BaseException):
    """The producer is closing: a worker waiting for room gives up (not a decoding error)."""


class FrameProducer:
    """Decodes ``inputs``. :meth:`get` returns :class:`Chunk` and :class:`UnitEnd` items as the
    decoders deliver them (in input order when not ``threaded``), then :data:`DONE`; every unit
    ends with one UnitEnd after its chunks. A consumer calls :meth:`free` once it is done with a
    chunk's frames and :meth:`release` once it is done with a unit; iterating does both as it goes
    (decode-only use)."""

    def __init__(self, inputs: list[str], decoder: str, device: torch.device, batch_size: int, *,
                 workers: int = 0, threaded: bool = True, max_frames: int | None = None,
                 segment_min: int = 16, frames: tuple[int, int] | None = None,
                 runtime: DeviceRuntime | None = None) -> None:
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
        self.runtime = runtime or DeviceRuntime(device)  # the device's streams and NVDEC sessions
        self.stop = threading.Event()
        self._units: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._local = threading.local()
        self._started = False
        self._serial_items: Iterator | None = None
        # The first input, probed to choose the worker count, kept for its planning (files' probes
        # are cached anyway; a stream URL's are not).
        self._probed: dict[str, VideoInfo] = {}

    # planning ----------------------------------------------------------------------------------
    def _plan(self, path: str) -> list[Unit]:
        """Cut a file NVDEC decodes into keyframe-aligned units for parallel decode: about two per
        worker, at least ``segment_min`` and at most about ``SEGMENT_FRAMES`` frames each."""
        try:
            # Its own copy (probes are cached per file): the writer tells videos apart by identity.
            info = replace(self._probed.pop(path, None) or probe(path))
        except VidpipeError as e:
            return [Unit(-1, None, path, error=str(e))]
        if self.decoder != "nvdec" or is_stream_url(path) or self.workers == 1:
            return [Unit(-1, info, path, *(self.frames or (0, None)))]
        scan = scan_packets(path)
        lo, n = self.frames or (0, len(scan.times))
        n = min(n, len(scan.times), self.max_frames or n)
        target = max(self.segment_min, min(SEGMENT_FRAMES, -(-(n - lo) // (2 * self.workers))))
        bounds = [lo]
        for k in scan.keyframes:
            if k >= n:
                break
            if k - bounds[-1] >= target:
                bounds.append(k)
        bounds.append(n)
        return [Unit(-1, info, path, a, b, first=i == 0, last=i == len(bounds) - 2)
                for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]

    def _planner(self) -> None:
        seq = 0
        try:
            for path in self.inputs:
                for unit in self._plan(path):
                    # At most `window` units open: what is held for ordering stays bounded.
                    while not self._window.acquire(timeout=0.1):
                        if self.stop.is_set():
                            return
                    unit.seq, seq = seq, seq + 1
                    if unit.error is not None:
                        self._put(UnitEnd(unit, error=unit.error))
                    else:
                        self._units.put(unit)
        finally:
            for _ in range(self.workers):
                self._units.put(_STOP)

    # decoding ----------------------------------------------------------------------------------
    def _source(self, unit: Unit) -> PyAVSource | NvdecSource:
        cached = getattr(self._local, "source", None)
        if isinstance(cached, NvdecSource) and cached.info.path == unit.path:
            return cached  # one NVDEC session per worker and file: segments seek instead of reopening
        src = open_source(unit.path, self.decoder, self.device, max_frames=self.max_frames, info=unit.info,
                          fallback=self.fallback, runtime=self.runtime, slot=getattr(self._local, "slot", -1))
        self._local.source = src
        return src

    def _chunk_frames(self, info: VideoInfo) -> int:
        # Small enough to bound memory at 4K, several per batch so the first batch fills early.
        return max(1, min(self.batch_size // 4, CHUNK_BYTES // (3 * info.width * info.height)))

    def _decode(self, unit: Unit) -> Iterator[Chunk | UnitEnd]:
        decoded, corrupt, error = 0, 0, None
        try:
            src = self._source(unit)
            admit = self._admit if self.threaded else None
            for batch in src.batches(self._chunk_frames(src.info), unit.start, unit.stop, admit):
                if self.device.type == "cuda":
                    # The compute stream reads the chunk without waiting on this worker's stream
                    # (PyAV's upload runs here; NVDEC sessions synchronise their own stream).
                    torch.cuda.current_stream(self.device).synchronize()
                decoded += len(batch)
                yield Chunk(unit, batch)
                del batch  # not held while the next chunk decodes (12 workers x 31 MB at 1080p)
            corrupt = getattr(src, "corrupt_packets", 0)
        except VidpipeError as e:
            error = str(e)
        except Exception as e:  # a decoder failing mid-file must not take the other inputs down
            error = f"{unit.path}: decoding failed after {unit.start + decoded} frames ({type(e).__name__}: {e})"
        yield UnitEnd(unit, decoded, corrupt, error)

    def _worker(self, slot: int) -> None:
        self._local.slot = slot
        stream = self.runtime.stream(("decode", slot))
        try:
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                while (unit := self._units.get()) is not _STOP:
                    for item in self._decode(unit):
                        self._put(item)
                        del item  # as in _decode
        except _Stopped:
            pass
        finally:
            self._put(_STOP)

    def _admit(self) -> None:
        # Waits for room before a chunk is allocated, not after: a worker blocked on a full queue
        # would hold a finished chunk (12 workers at 1080p: ~370 MB of GPU memory).
        while not self.stop.is_set():
            if self._room.acquire(timeout=0.1):
                return
        raise _Stopped

    def _put(self, item: object) -> None:
        # Earliest unit first: its results are the ones the orderer can emit, so little is held
        # back (at the end of a run, formatting held results would be a tail after the GPU is done).
        # Unbounded: chunks are bounded by _admit, unit ends by the unit window.
        key = (item.unit.seq if isinstance(item, (Chunk, UnitEnd)) else float("inf"), next(self._puts))
        self._ready.put((*key, item))

    def _serial(self) -> Iterator[Chunk | UnitEnd]:
        for seq, path in enumerate(self.inputs):
            try:
                unit = Unit(seq, replace(probe(path)), path, *(self.frames or (0, None)))
            except VidpipeError as e:
                yield UnitEnd(Unit(seq, None, path, error=str(e)), error=str(e))
                continue
            yield from self._decode(unit)

    # consuming ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if not self.threaded:
            self._serial_items = self._serial()
            return
        info = self._first_info()
        self.workers = self.workers or default_decoders(info, self.decoder, self.device)
        self._window = threading.Semaphore(4 * self.workers)
        slots = self.workers + 2
        if info is not None:  # large frames: fewer chunks wait, so GPU memory stays near its floor
            slots = max(2, min(slots, READY_BYTES // (self._chunk_frames(info) * 3 * info.width * info.height)))
        self._room = threading.Semaphore(slots)
        self._ready = queue.PriorityQueue()
        self._puts = itertools.count()  # keeps a unit's items in order, and entries comparable
        self._live = self.workers
        # Workers first, idle on the unit queue: a worker already seeking would hold up the start
        # of the next (thread starts wait for the GIL), and units should find every worker ready.
        self._threads = [threading.Thread(target=self._worker, args=(i,), name=f"vidpipe-decode{i}",
                                          daemon=True) for i in range(self.workers)]
        self._threads.append(threading.Thread(target=self._planner, name="vidpipe-plan", daemon=True))
        for t in self._threads:
            t.start()

    def get(self, timeout: float | None = None) -> Chunk | UnitEnd | object | None:
        """The next decoded item, :data:`DONE` after the last, None if nothing came in ``timeout`` s."""
        self.start()
        if self._serial_items is not None:
            return next(self._serial_items, DONE)
        while self._live:
            try:
                *_, item = self._ready.get(timeout=timeout)
            except queue.Empty:
                return None
            if item is not _STOP:
                return item
            self._live -= 1
        return DONE

    def release(self) -> None:
        """The consumer is done with one unit: another may be opened."""
        if self.threaded:
            self._window.release()

    def free(self) -> None:
        """The consumer is done with one chunk's frames (copied or dropped): another may be decoded."""
        if self.threaded:
            self._room.release()

    def __iter__(self) -> Iterator[Chunk | UnitEnd]:
        try:
            while (item := self.get()) is not DONE:
                yield item
                if isinstance(item, UnitEnd):
                    self.release()
                else:
                    self.free()
        finally:
            self.close()

    def _first_info(self) -> VideoInfo | None:
        for path in self.inputs[:1]:
            try:
                self._probed[path] = probe(path)
                return self._probed[path]
            except VidpipeError:
                return None
        return None

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=5)


@dataclass
class _Piece:
    """Rows of a batch that hold consecutive frames of ``unit``."""

    unit: Unit
    indices: list[int]
    times: list[float]


class _Batcher:
    """Packs chunks into batches of one frame size (``open(h, w)`` starts one), adding each chunk's
    frames as it comes and remembering which rows belong to which unit."""

    def __init__(self, open: Callable[[int, int], Batch]) -> None:
        self.open_batch = open
        self.open: dict[tuple[int, int], tuple[Batch, list[_Piece]]] = {}
        self.since: dict[tuple[int, int], float] = {}  # when each open batch got its first frames

    def add(self, chunk: Chunk) -> Iterator[tuple[Batch, list[_Piece]]]:
        """Full batches completed by ``chunk``."""
        h, w = chunk.batch.frames.shape[-2:]
        rest = chunk.batch
        while len(rest):
            if (h, w) not in self.open:
                self.open[h, w] = (self.open_batch(h, w), [])
                self.since[h, w] = time.perf_counter()
            batch, pieces = self.open[h, w]
            head, rest = rest.split(batch.size - batch.n)
            batch.add(head.frames)
            if pieces and pieces[-1].unit is chunk.unit:  # the unit's next frames, on the next rows
                pieces[-1].indices += head.indices
                pieces[-1].times += head.times
            else:
                pieces.append(_Piece(chunk.unit, head.indices, head.times))
            if batch.n == batch.size:
                yield self._take((h, w))

    def partial(self, short: float = float("inf")) -> list[tuple[Batch, list[_Piece]]]:
        """Batches not yet full, taken out: all, or as many as are ``short`` frames short in all."""
        batches = []
        for key, (batch, pieces) in list(self.open.items()):
            if batch.size - batch.n <= short:
                short -= batch.size - batch.n
                batches.append(self._take(key))
        return batches

    def stale(self, wait: float) -> list[tuple[Batch, list[_Piece]]]:
        """Batches not yet full whose first frames came ``wait`` seconds ago or more, taken out."""
        now = time.perf_counter()
        return [self._take(key) for key, t in list(self.since.items()) if now - t >= wait]

    def _take(self, key: tuple[int, int]) -> tuple[Batch, list[_Piece]]:
        del self.since[key]
        return self.open.pop(key)


@dataclass
class _Held:
    """What the orderer holds of one unit: results not yet emitted, frames received, its end."""

    unit: Unit
    results: list[BatchResult] = field(default_factory=list)
    received: int = 0
    end: UnitEnd | None = None
    started: bool = False


class _Orderer:
    """Restores input order: results and ends of units arrive in any order (a unit's own results
    in frame order); a unit's are emitted once every earlier unit's are, and ``release`` is called
    per emitted unit. Segments of one file make one VideoStart ... VideoEnd."""

    def __init__(self, release: Callable[[], None], expected: Callable[[VideoInfo], int]) -> None:
        self.release, self.expected = release, expected
        self.units: dict[int, _Held] = {}
        self.head = 0
        self.file = VideoEnd("")
        self.dropping = False  # the rest of a file whose decoding broke off

    def _held(self, unit: Unit) -> _Held:
        return self.units.setdefault(unit.seq, _Held(unit))

    def add(self, unit: Unit, result: BatchResult) -> None:
        held = self._held(unit)
        held.results.append(result)
        held.received += len(result.indices)

    def end(self, item: UnitEnd) -> None:
        self._held(item.unit).end = item

    def ready(self) -> Iterator[VideoStart | BatchResult | VideoEnd]:
        while (held := self.units.get(self.head)) is not None:
            unit, end = held.unit, held.end
            if unit.info is not None and unit.first and not held.started:
                held.started, self.dropping = True, False
                self.file = VideoEnd(unit.path, expected=self.expected(unit.info))
                yield VideoStart(unit.info)
            results, held.results = held.results, []
            if not self.dropping:
                yield from results
            if end is None or held.received < end.decoded:
                return
            del self.units[self.head]
            self.head += 1
            self.release()
            yield from self._close(end)

    def _close(self, end: UnitEnd) -> Iterator[VideoEnd]:
        if end.unit.info is None:
            yield VideoEnd(end.unit.path, error=end.error, fatal=True)
            return
        if self.dropping:
            return
        f = self.file
        f.decoded += end.decoded
        f.corrupt_packets += end.corrupt
        if end.error is not None:
            f.error, f.fatal, self.dropping = end.error, True, True
        if end.unit.last or f.fatal:
            if f.error is None and f.decoded == 0:  # e.g. a header that promises nothing decodable
                f.error, f.fatal = f"{f.path}: no frame could be decoded", True
            elif f.error is None and (f.lost or f.corrupt_packets):
                f.error = (f"{f.path}: damaged: decoded {f.decoded} of {f.expected} frames "
                           f"({f.lost} lost, {f.corrupt_packets} corrupt packets skipped)")
            yield f


def process(detector: Detector, inputs: list[str], frames: tuple[int, int] | None = None
            ) -> Iterator[Issued | VideoStart | BatchResult | VideoEnd]:
    """Decode and detect ``inputs`` (only frames ``[a, b)`` of each with ``frames``); see the
    module docstring. The caller waits on each result."""
    cfg = detector.config
    producer = FrameProducer(inputs, cfg.decoder, detector.device, detector.batch_size,
                             workers=cfg.decoders, threaded=cfg.overlap, max_frames=cfg.max_frames, frames=frames,
                             runtime=detector.runtime)

    def expected(info: VideoInfo) -> int:
        n = info.num_frames if cfg.max_frames is None else min(info.num_frames, cfg.max_frames)
        return n if frames is None else max(0, min(n, frames[1]) - frames[0])

    order = _Orderer(producer.release, expected)
    batcher = _Batcher(detector.batch)
    compute = detector.runtime.stream("compute") if cfg.overlap else None
    issued: deque[torch.cuda.Event] = deque()  # batches on the GPU, oldest first
    fresh: list[Issued] = []  # results of batches just issued, not yet announced
    # Padding the run's batches will carry anyway (GPUs run every batch full): while the GPU
    # idles, batches may go out this many frames short in all at no cost. The first batch then
    # starts with the first frames decoded instead of a full batch's worth.
    slack = _padding(inputs, expected, detector.batch_size) if compute is not None else 0

    def idle() -> bool:
        return not issued or issued[-1].query()

    def launch(batch: Batch, pieces: list[_Piece]) -> None:
        nonlocal slack
        slack -= batch.size - batch.n
        with nvtx_range("batch"):
            if len(issued) == IN_FLIGHT:  # the GPU is far enough ahead; frames wait in the queues
                issued.popleft().synchronize()
            host, event = detector.submit(batch)
            if event is not None:
                if compute is None:  # the serial loop: wait for every batch
                    event.synchronize()
                issued.append(event)
        row = 0
        for p in pieces:
            result = BatchResult(p.unit.info, p.indices, p.times, host, event, row, classes=detector.classes)
            order.add(p.unit, result)
            fresh.append(Issued(result))
            row += len(p.indices)

    def emit() -> Iterator[Issued | VideoStart | BatchResult | VideoEnd]:
        yield from fresh
        fresh.clear()
        yield from order.ready()

    try:
        with torch.cuda.stream(compute) if compute is not None else nullcontext():
            while True:
                item = producer.get(timeout=0.001 if batcher.open else None)
                if item is DONE:
                    break
                if isinstance(item, Chunk):
                    if compute is not None:  # decoded on a worker's stream, read on this one
                        item.batch.frames.record_stream(compute)
                    for batch in batcher.add(item):
                        launch(*batch)
                    del item  # its frames are in the batch now: gone before the room is given back
                    producer.free()
                elif isinstance(item, UnitEnd):
                    if not cfg.overlap:  # the serial loop finishes each input before the next
                        for batch in batcher.partial():
                            launch(*batch)
                    order.end(item)
                if cfg.overlap and batcher.open and idle():
                    for batch in batcher.partial(short=slack) + batcher.stale(MAX_WAIT):
                        launch(*batch)
                yield from emit()
            for batch in batcher.partial():
                launch(*batch)
            yield from emit()
    finally:
        producer.close()


def _padding(inputs: list[str], expected: Callable[[VideoInfo], int], size: int) -> int:
    """Frames of padding in the batches of a run of one file: its length is known up front."""
    if len(inputs) != 1 or is_stream_url(inputs[0]):
        return 0
    try:
        return -expected(probe(inputs[0])) % size
    except VidpipeError:
        return 0  # reported in its turn by the producer


def iter_results(detector: Detector, inputs: list[str]) -> Iterator[FrameResult]:
    """Per-frame results, lazily; one batch stays in flight so the GPU never waits for the reader.
    A damaged or unreadable input raises :class:`VidpipeError` after its good frames."""
    pending: BatchResult | None = None
    for item in process(detector, inputs):
        if isinstance(item, Issued):
            continue
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


def _finite(arrays: tuple[np.ndarray, ...]) -> bool:
    """Whether every valid box and score of a result is finite (a NaN in JSON is invalid JSON)."""
    boxes, _, scores, counts = arrays
    valid = np.arange(boxes.shape[1]) < counts[:, None]
    return bool(np.isfinite(boxes[valid]).all() and np.isfinite(scores[valid]).all())


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


class _Writer:
    """Consumes process()'s items: opens a sink per video, writes batches once their copy is done,
    closes sinks (final only when the video was decoded and written whole; else what was written
    is set aside as ``.incomplete``). An output that cannot be written fails its video alone, with
    a one-line reason. Runs in a thread when ``threaded``."""

    def __init__(self, sink_for: SinkFactory, threaded: bool, on_frames: Callable[[int], None] | None,
                 on_video: Callable[[VideoEnd], None] | None) -> None:
        self.sink_for, self.on_frames, self.on_video = sink_for, on_frames, on_video
        self.sink: Sink | None = None
        self.info: VideoInfo | None = None  # the open sink's video
        self.failure: str | None = None  # why the open video's output failed (its later results are dropped)
        self.report = RunReport()
        self.error: BaseException | None = None
        self.q: queue.Queue | None = queue.Queue(maxsize=WRITE_QUEUE) if threaded else None
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
            if item is _STOP:
                return
            try:
                self._handle(item)
            except BaseException as e:  # surfaced to the producer thread on its next put
                self.error = e
                self._abort()
                return

    def _handle(self, item) -> None:
        if isinstance(item, Issued):
            r = item.result
            if r.info is self.info and hasattr(self.sink, "lines"):  # results of later videos wait
                arrays = r.arrays()
                if _finite(arrays):  # else its turn fails the video
                    with nvtx_range("format"):
                        r.text = self.sink.lines(r.indices, r.times, *arrays)
        elif isinstance(item, VideoStart):
            self.info, self.failure = item.info, None
            try:
                self.sink = self.sink_for(item.info)
            except (OSError, UnicodeError) as e:
                self.sink, self.failure = None, f"{item.info.path}: cannot write its output ({_reason(e)})"
        elif isinstance(item, BatchResult):
            self._write(item)
            self.report.frames += len(item.indices)
            if self.on_frames:
                self.on_frames(len(item.indices))
        elif isinstance(item, VideoEnd):
            item = self._close(item)
            self.report.videos.append(item)
            if self.on_video:
                self.on_video(item)

    def _write(self, r: BatchResult) -> None:
        """One batch's frames into the open sink; a failure to write fails this video alone."""
        if self.sink is None:
            return
        arrays = r.arrays()
        if not _finite(arrays):
            self._fail(f"{r.info.path}: the model's boxes or scores are not finite (NaN or inf) from frame "
                       f"{r.indices[0]} on; check the weights")
            return
        try:
            with nvtx_range("write"):
                if r.text is not None:
                    self.sink.write_lines(r.text, len(r.indices))
                else:
                    self.sink.write(r.indices, r.times, *arrays)
        except (OSError, UnicodeError) as e:
            self._fail(f"{r.info.path}: cannot write {self.sink.path} ({_reason(e)})")

    def _fail(self, reason: str) -> None:
        self.failure = reason
        try:
            kept = self.sink.fail()
        except (OSError, UnicodeError):  # e.g. the disk is still full
            kept = None
        if kept is not None:
            self.failure += f"; the frames written before are in {kept}"
        self.sink = None

    def _close(self, end: VideoEnd) -> VideoEnd:
        """Finish the video's output: its final name only when every frame was decoded and written."""
        if self.sink is not None:
            if end.ok:
                try:
                    self.sink.close(complete=True)
                except (OSError, UnicodeError) as e:
                    self.failure = f"{end.path}: cannot finish {self.sink.path} ({_reason(e)})"
            else:
                kept = self.sink.fail()
                if kept is not None:
                    end = replace(end, error=f"{end.error}; the frames decoded are in {kept}")
        if self.failure is not None:
            end = replace(end, error=self.failure, fatal=True)
        self.sink, self.info, self.failure = None, None, None
        return end

    def _abort(self) -> None:
        if self.sink is not None:
            self.sink.close(complete=False)
            self.sink, self.info = None, None

    def finish(self, ok: bool) -> RunReport:
        if self.q is not None:
            if ok:
                self.q.put(_STOP)
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
                self.q.put(_STOP, timeout=0.1)
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
