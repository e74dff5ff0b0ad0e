"""Decoding: a pool of worker threads that turns inputs into chunks of frames on the device.

In: paths (or :class:`~.live.LiveSources`, a set that changes while it runs), the decoder, the
device. Out, from :meth:`FrameProducer.get`: :class:`~.items.Chunk` (at most ``CHUNK_BYTES`` of
consecutive frames of one unit, ``uint8 [N, 3, H, W]`` on the device) and :class:`~.items.UnitEnd`
items as the decoders deliver them, earliest unit first, then :data:`DONE`. PyNvVideoCodec and
FFmpeg release the GIL, so workers decode in parallel.

Back-pressure: at most ``4 x workers`` units are open (the consumer calls :meth:`release` per
finished unit) and at most ``workers + 2`` chunks exist at once, fewer when that passes
``READY_BYTES`` (a worker waits for room before it allocates one; the consumer calls :meth:`free`).
With ``threaded=False`` the same items come serially from the calling thread.

Live frames (a stream, a ``realtime`` file) come one per chunk (frames one decode call gives together:
one chunk). Under the ``latest`` policy they take no place for chunks and never wait: each unit has
one slot for its newest chunk; one that arrives while the one before still waits for the consumer
replaces it, and the older's frames are dropped and counted (:attr:`UnitEnd.dropped`), so results
never fall behind the camera. The consumer takes every filled slot in its turn, and only the first
slot filled after a turn wakes it: many cameras cost it one wake-up per turn, not one per frame.
Drops within ``BURST`` of a frame period of the dropped frame's arrival are also counted apart
(:attr:`UnitEnd.dropped_in_bursts`): the decoder handed several frames over at once, where the
consumer had no time to take the first, rather than the consumer falling behind.
Under ``all`` they wait for room like a file's (every frame, in a bounded buffer; the lag shows in
their latency).

With :class:`~.live.LiveSources` the planner follows the set: an added source gets a worker of its
own and is planned; a removed one's units stop at their next frame (``UnitEnd.stopped``).
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, nullcontext
from dataclasses import replace
from typing import Callable, Iterator

import torch

from ..errors import VidpipeError
from ..inputs import is_stream_url
from ..runtime import DeviceRuntime
from ..sources import FrameBatch, NvdecSource, PyAVSource, VideoInfo, open_source, probe, resolve_decoder
from ..timeline import stamp
from .items import Chunk, Unit, UnitEnd
from .live import POLL, LiveSources
from .plan import SEGMENT_FRAMES, default_decoders, plan_units

DONE = object()  # FrameProducer.get: every input is decoded
_WAKE = object()  # in the ready queue: a live unit's slot was filled since the consumer's last turn
_STOP = object()  # a worker's or the planner's last item
CHUNK_BYTES = 32 << 20  # decoded frames handed over at once by a worker, at most
READY_BYTES = 128 << 20  # decoded frames not yet taken by the consumer, about at most
BURST = 0.5  # of a frame period: a live frame replaced sooner after it came was dropped in a burst


class StreamClock:
    """When a stream's frames were captured, from their timestamps (s) and when they were decoded.

    The frame decoded soonest after its timestamp sets the clock (``offset``: wall time minus stream
    time, the least seen), so a reader that falls behind the camera shows it as latency rather than
    stamping late frames as new. The offset may rise by ``DRIFT`` a second (a camera clock slower than
    ours) and starts again on a jump of ``JUMP_S`` or on a reconnect (:meth:`reset`)."""

    DRIFT = 1e-3  # s/s: camera clocks are good to ~100 ppm; a lagging reader hides at most 1 ms a second
    JUMP_S = 5.0  # a timestamp discontinuity (a camera restarting its clock), not lag

    def __init__(self) -> None:
        self.offset: float | None = None
        self._at = 0.0

    def reset(self) -> None:
        self.offset = None

    def stamp(self, times: list[float], now: float) -> list[float]:
        """Capture times (``time.time()`` scale) of frames with stream ``times``, the last decoded at ``now``."""
        seen = now - times[-1]
        if self.offset is None or abs(seen - self.offset) > self.JUMP_S:
            self.offset = seen
        else:
            self.offset = min(seen, self.offset + self.DRIFT * (now - self._at))
        self._at = now
        return [self.offset + t for t in times]


class _Stopped(BaseException):
    """The producer is closing: a worker waiting for room gives up (not a decoding error)."""


class FrameProducer:
    """Decodes ``inputs``. :meth:`get` returns :class:`Chunk` and :class:`UnitEnd` items as the
    decoders deliver them (in input order when not ``threaded``), then :data:`DONE`; every unit
    ends with one UnitEnd after its chunks. A consumer calls :meth:`free` once it is done with a
    chunk's frames and :meth:`release` once it is done with a unit; iterating does both as it goes
    (decode-only use)."""

    def __init__(self, inputs: list[str] | LiveSources, decoder: str, device: torch.device, batch_size: int, *,
                 workers: int = 0, threaded: bool = True, max_frames: int | None = None,
                 segment_min: int = 16, segment_max: int = SEGMENT_FRAMES, frames: tuple[int, int] | None = None,
                 runtime: DeviceRuntime | None = None, realtime: bool = False, loop: bool = False,
                 live_policy: str = "latest", in_order: bool = False, stream_decoder: str = "auto",
                 on_state: Callable[[str, str, str], None] | None = None) -> None:
        # A changing set: its sources now, followed by the planner (each added one gets a worker).
        self.sources = inputs if isinstance(inputs, LiveSources) else None
        self.inputs = inputs.snapshot()[0] if self.sources is not None else inputs
        self.decoder = resolve_decoder(decoder, device)
        self.fallback = decoder == "auto"
        self.device = device
        self.batch_size = batch_size
        self.workers = workers
        self.threaded = threaded
        self.max_frames = max_frames
        self.segment_min, self.segment_max = segment_min, segment_max  # a file's parts (plan_units)
        self.frames = frames  # decode only frames [a, b) of each input (a part of a split file)
        self.realtime, self.loop = realtime, loop  # files paced at their frame rate / started over at their end
        self.live_policy = live_policy
        self.stream_decoder = stream_decoder
        self.on_state = on_state  # (source, state, reason): a stream's connection and decoding events
        self.in_order = in_order  # each file one unit: its frames come in order (annotated video holds them)
        # Latest policy: per unit seq, the chunk waiting for the consumer, in the order the slots were filled.
        self._newest: dict[int, Chunk] = {}
        self._taken: collections.deque = collections.deque()  # swept, not yet handed out by get()
        self._dropped: dict[int, int] = {}  # latest policy: per unit seq, frames replaced before they were taken
        self._bursts: dict[int, int] = {}  # of those, per unit seq: replaced within BURST of a period of coming
        self._arrived: dict[int, float] = {}  # latest policy: per unit seq, when its waiting chunk came
        self._newest_lock = threading.Lock()
        self._ended: set[int] = set()  # seqs of units whose source was removed: they stop at their next frame
        self._live_lock = threading.Lock()  # self._live: the consumer counts workers down, the planner adds
        self._seq = 0  # the next unit's number (the planner's)
        self.runtime = runtime or DeviceRuntime(device)  # the device's streams and NVDEC sessions
        self.stop = threading.Event()
        self._units: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._local = threading.local()
        self._started = False
        self._serial_items: Iterator | None = None
        # Probes made ahead of planning (the first input's, to choose the worker count; stream URLs',
        # all at once), or why one failed. Files' probes are cached anyway; a stream URL's are not.
        self._probed: dict[str, VideoInfo | VidpipeError] = {}
        self.first_info: VideoInfo | None = None  # the first input's, once probed (first())
        self._first_probed = False

    # planning ----------------------------------------------------------------------------------
    def _planner(self) -> None:
        try:
            running = {}
            self._probe_streams(self.inputs)
            for path in self.inputs:
                if (units := self._plan(path)) is None:
                    return
                running[path] = units
            if self.sources is not None:
                self._follow(running)
        finally:
            for _ in range(self.workers):  # only this thread adds workers
                self._units.put(_STOP)

    def _plan(self, path: str) -> list[Unit] | None:
        """Queue ``path``'s units (None: the producer is closing)."""
        # A paced or looping file is one unit: its frames come in order, at its own rate.
        workers = 1 if self.realtime or self.loop or self.in_order else self.workers
        if isinstance(probed := self._probed.pop(path, None), VidpipeError):
            units = [Unit(-1, None, path, error=str(probed))]
        else:
            units = plan_units(path, probed, self.decoder, workers, segment_min=self.segment_min,
                               segment_max=self.segment_max, frames=self.frames, max_frames=self.max_frames)
        for unit in units:
            # At most `window` units open: what is held for ordering stays bounded.
            while not self._window.acquire(timeout=0.1):
                if self.stop.is_set():
                    return None
            unit.seq, self._seq = self._seq, self._seq + 1
            if unit.error is not None:
                self._put(UnitEnd(unit, error=unit.error))
            else:
                self._units.put(unit)
        return units

    def _probe_streams(self, paths: list[str]) -> None:
        """Stream URLs probed side by side before they are planned in turn: FFmpeg reads a live stream
        for its probe (0.74 s for a served 30 fps clip, the CI machine), so 48 cameras probed one
        after another would start over ~35 s."""
        urls = [p for p in paths if is_stream_url(p) and p not in self._probed]
        if len(urls) < 2:
            return

        def attempt(path: str) -> VideoInfo | VidpipeError:
            try:
                return probe(path)
            except VidpipeError as e:
                return e

        with ThreadPoolExecutor(min(len(urls), 64), thread_name_prefix="vidpipe-probe") as pool:
            self._probed.update(zip(urls, pool.map(attempt, urls)))

    def _follow(self, running: dict[str, list[Unit]]) -> None:
        """A changing set of sources: an added one is planned on a worker of its own, a removed one's
        units stop at their next frame; until the set is closed (which removes them all)."""
        seen = -1
        while not self.stop.is_set():
            seen = self.sources.wait(seen, POLL)
            wanted, closed = self.sources.snapshot()
            for path in [p for p in running if p not in wanted]:
                self._ended.update(u.seq for u in running.pop(path))
            self._probe_streams([p for p in wanted if p not in running])
            for path in [p for p in wanted if p not in running]:
                if self._is_live(path):
                    self._add_worker()
                if (units := self._plan(path)) is None:
                    return
                running[path] = units
            if closed:
                return

    def _is_live(self, path: str) -> bool:
        """Holds its worker for as long as it runs (a stream, a paced or looping file)."""
        return self.realtime or self.loop or is_stream_url(path)

    def _add_worker(self) -> None:
        slot, self.workers = self.workers, self.workers + 1
        with self._live_lock:
            self._live += 1
        self._window.release(4)  # as if started with it: 4 units open per worker
        thread = threading.Thread(target=self._worker, args=(slot,), name=f"vidpipe-decode{slot}", daemon=True)
        self._threads.append(thread)
        thread.start()

    # decoding ----------------------------------------------------------------------------------
    def _source(self, unit: Unit) -> PyAVSource | NvdecSource:
        cached = getattr(self._local, "source", None)
        if (isinstance(cached, NvdecSource) or getattr(cached, "keeps_open", False)) and \
                cached.info.path == unit.path and not is_stream_url(unit.path):
            return cached  # one NVDEC decoder per worker and file: segments seek instead of reopening
        self._close_source()
        src = open_source(unit.path, self.decoder, self.device, max_frames=self.max_frames, info=unit.info,
                          fallback=self.fallback, runtime=self.runtime, slot=getattr(self._local, "slot", -1),
                          stream_decoder=self.stream_decoder, realtime=self.realtime)
        if self.on_state is not None and isinstance(src, PyAVSource):
            src.on_state = self.on_state
        self._local.source = src
        return src

    def _clocked(self, path: str) -> bool:
        """Frames that arrive on a clock (a stream, a --realtime file): each is handed over alone,
        stamped with the time it came."""
        return self.realtime or is_stream_url(path)

    def _keeps_newest(self, path: str) -> bool:
        return self.threaded and self.live_policy == "latest" and self._clocked(path)

    def _chunk_frames(self, info: VideoInfo) -> int:
        if self._clocked(info.path):  # a frame waits for no other: latency, not throughput, is the bound
            return 1
        # Small enough to bound memory at 4K, several per batch so the first batch fills early.
        return max(1, min(self.batch_size // 4, CHUNK_BYTES // (3 * info.width * info.height)))

    def _passes(self, unit: Unit, src) -> Iterator[FrameBatch]:
        """The unit's frames; with ``loop`` a file again and again, frame numbers and times running
        on (until ``max_frames``); with ``realtime`` each handed over no earlier than its time."""
        admit = self._admit if self.threaded and not self._keeps_newest(unit.path) else None
        offset_frames, offset_time, clock0 = 0, 0.0, None
        clock, reconnections = StreamClock(), 0
        looping = self.loop and not is_stream_url(unit.path)
        while True:
            n, last = 0, 0.0
            # Closed here, not when dropped: a stream's NVDEC session goes back to the pool as it ends.
            with closing(src.batches(self._chunk_frames(src.info), unit.start, unit.stop, admit)) as batches:
                for batch in batches:
                    if unit.seq in self._ended:  # its source was removed
                        return
                    n, last = n + len(batch), batch.times[-1]
                    if looping and self.max_frames and batch.indices[0] + offset_frames + len(batch) > self.max_frames:
                        batch = batch.split(self.max_frames - batch.indices[0] - offset_frames)[0]
                    if looping and offset_frames:
                        batch.indices = [i + offset_frames for i in batch.indices]
                        batch.times = [t + offset_time for t in batch.times]
                    if is_stream_url(unit.path):
                        if getattr(src, "reconnections", 0) != reconnections:  # a new connection, a new clock
                            clock.reset()
                            reconnections = src.reconnections
                        batch.captured = clock.stamp(batch.times, time.time())
                    elif self.realtime:  # captured when the camera would have: a frame handed over late shows its lag
                        clock0 = clock0 if clock0 is not None else time.time() - batch.times[0]
                        batch.captured = [clock0 + t for t in batch.times]
                        time.sleep(max(0.0, batch.captured[-1] - time.time()))
                    end = batch.indices[-1] + 1
                    yield batch
                    del batch  # not held while the next chunk decodes, nor while waiting for room
                    if looping and self.max_frames and end >= self.max_frames:
                        return
            if not looping or n == 0:
                return
            offset_frames += n
            offset_time += last + 1 / (src.info.fps or 30.0)

    def _decode(self, unit: Unit) -> Iterator[Chunk | UnitEnd]:
        decoded, corrupt, error = 0, 0, None
        admitted = not self._keeps_newest(unit.path)
        try:
            src = self._source(unit)
            stamp("opened")
            uploads = self.device.type == "cuda" and src.name != "nvdec"
            with closing(self._passes(unit, src)) as passes:
                for batch in passes:
                    if uploads:
                        # The compute stream reads the chunk without waiting on this worker's stream, where
                        # PyAV's upload runs. NVDEC sessions synchronise their own: one more call per frame that
                        # lets go of the GIL and waits to get it back held 32 live cameras at 24 frames/s each
                        # on an H200 (30 without; ``vidpipe bench --suite live``).
                        torch.cuda.current_stream(self.device).synchronize()
                    decoded += len(batch)
                    yield Chunk(unit, batch, admitted)
                    del batch  # not held while the next chunk decodes (12 workers x 31 MB at 1080p)
            corrupt = getattr(src, "corrupt_packets", 0)
        except VidpipeError as e:
            error = str(e)
        except Exception as e:  # a decoder failing mid-file must not take the other inputs down
            error = f"{unit.path}: decoding failed after {unit.start + decoded} frames ({type(e).__name__}: {e})"
        yield UnitEnd(unit, decoded, corrupt, error, stopped=unit.seq in self._ended)

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
            self._close_source()
            self._put(_STOP)

    def _close_source(self) -> None:
        """This worker's last source let go of, its decoder freed now (under the capture gate where it is
        NVDEC's) rather than whenever it is collected."""
        cached, self._local.source = getattr(self._local, "source", None), None
        if isinstance(cached, PyAVSource):
            cached.close()

    def _admit(self) -> None:
        # Waits for room before a chunk is allocated, not after: a worker blocked on a full queue
        # would hold a finished chunk (12 workers at 1080p: ~370 MB of GPU memory).
        while not self.stop.is_set():
            if self._room.acquire(timeout=0.1):
                return
        raise _Stopped

    def _put(self, item: object) -> None:
        if isinstance(item, Chunk) and not item.admitted:
            self._newest_in(item)
            return
        if isinstance(item, UnitEnd):
            with self._newest_lock:
                item.dropped = self._dropped.pop(item.unit.seq, 0)
                item.dropped_in_bursts = self._bursts.pop(item.unit.seq, 0)
                self._arrived.pop(item.unit.seq, None)
                # Its last frame, if still in its slot, goes before it: a sweep must not take the end first.
                if (last := self._newest.pop(item.unit.seq, None)) is not None:
                    self._ready.put((float("inf"), next(self._puts), last))
            item.decoded -= item.dropped  # what the consumer was handed
        # Earliest unit first: its results are the ones the orderer can emit, so little is held
        # back (at the end of a run, formatting held results would be a tail after the GPU is done).
        # Unbounded: chunks are bounded by _admit, unit ends by the unit window. A live unit's end comes
        # after the files' items, in the order such items came: sorted by unit it would overtake its frames.
        by_unit = isinstance(item, Chunk) or (isinstance(item, UnitEnd) and not self._keeps_newest(item.unit.path))
        key = (item.unit.seq if by_unit else float("inf"), next(self._puts))
        self._ready.put((*key, item))

    def _newest_in(self, chunk: Chunk) -> None:
        """``latest`` policy: ``chunk`` becomes its unit's waiting chunk; the one it replaces, if any,
        is dropped and its frames counted."""
        seq, now = chunk.unit.seq, time.monotonic()
        with self._newest_lock:
            wake = not self._newest
            waiting = self._newest.get(seq)
            self._newest[seq] = chunk
            came, self._arrived[seq] = self._arrived.get(seq, now), now
            if waiting is not None:
                self._dropped[seq] = self._dropped.get(seq, 0) + len(waiting.batch)
                info = chunk.unit.info
                if now - came < BURST / (info.fps if info is not None and info.fps else 30.0):
                    self._bursts[seq] = self._bursts.get(seq, 0) + len(waiting.batch)
        if wake:
            self._ready.put((float("inf"), next(self._puts), _WAKE))

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
        info = self.first()
        # A live input holds its worker for as long as it runs: each gets one, and the files keep theirs.
        live = sum(self._is_live(p) for p in self.inputs)
        self.workers = self.workers or default_decoders(info, self.decoder, self.device) + live
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
        if not self._taken:
            items = self.get_many(timeout)
            if items is DONE or not items:
                return DONE if items is DONE else None
            self._taken.extend(items)
        return self._taken.popleft()

    def get_many(self, timeout: float | None = None) -> list[Chunk | UnitEnd] | object:
        """Every item ready now, in order, waiting up to ``timeout`` s for the first: [] if none came,
        :data:`DONE` after the last. A consumer's turn per ready set instead of per item: with many
        live cameras each frame is a chunk of its own, and the consumer's calls per turn that let go of
        the GIL (a copy, a query of the GPU) each wait to take it back behind every decode thread."""
        self.start()
        if self._serial_items is not None:
            item = next(self._serial_items, DONE)
            return DONE if item is DONE else [item]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            items = self._sweep()
            if items:
                return items
            with self._live_lock:
                if not self._live:
                    return DONE
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            try:
                entry = self._ready.get(timeout=left)
            except queue.Empty:
                continue
            self._ready.put(entry)  # swept in its order with whatever came beside it

    def _sweep(self) -> list[Chunk | UnitEnd]:
        """Every item ready now: the queue's in its order, then each live unit's waiting chunk, in the
        order their slots were filled. What is waiting when the turn begins, no more: live frames keep
        coming, and a turn must end for its results to be handed on."""
        items = list(self._taken)
        self._taken.clear()
        for _ in range(self._ready.qsize()):
            try:
                *_, item = self._ready.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                with self._live_lock:
                    self._live -= 1
            elif item is not _WAKE:
                items.append(item)
        if self._newest:
            with self._newest_lock:
                waiting, self._newest = self._newest, {}
            items += waiting.values()
        return items

    def depth(self) -> int:
        """Decoded items waiting for the consumer (a live unit's waiting frame counts one)."""
        return (self._ready.qsize() if self._started and self.threaded else 0) + len(self._newest)

    def release(self) -> None:
        """The consumer is done with one unit: another may be opened."""
        if self.threaded:
            self._window.release()

    def free(self, admitted: bool = True) -> None:
        """The consumer is done with one chunk's frames (copied or dropped): another may be decoded.
        ``admitted``: the chunk's (one that took no place gives none back)."""
        if self.threaded and admitted:
            self._room.release()

    def __iter__(self) -> Iterator[Chunk | UnitEnd]:
        try:
            while (item := self.get()) is not DONE:
                yield item
                if isinstance(item, UnitEnd):
                    self.release()
                else:
                    self.free(item.admitted)
        finally:
            self.close()

    def first(self) -> VideoInfo | None:
        """The first input's info (probed once; None: no input, or one that cannot be read)."""
        if not self._first_probed:
            self._first_probed = True
            for path in self.inputs[:1]:
                try:
                    self.first_info = self._probed[path] = probe(path)
                except VidpipeError:
                    pass
        return self.first_info

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=5)


