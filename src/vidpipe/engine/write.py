"""Writing: results into sinks, in input order, each output finished exactly once.

In: the scheduler's items (:class:`~.items.VideoStart`, :class:`~.items.BatchResult`,
:class:`~.items.VideoEnd`), plus each result early through :meth:`Writer.issue`. Out: files under
their final names (complete), ``.incomplete`` (an input that failed) or ``.partial`` (an
interrupted run), and a :class:`~.items.RunReport`.

Formatting JSON Lines text and tracking are the host costs that grow with detections per frame
(64 frames x 200 detections: ~15 ms of Python formatting; ByteTrack ~0.2 ms per frame), holding
the GIL that the decode and compute threads need. With ``formatters`` > 0 both run in that many
worker processes, so this process's threads keep the GIL: text comes back in time for its turn,
and a video's tracker lives in one worker (its lane), which receives the video's batches in frame
order and returns them with track ids, formatted in the next lane while it tracks the next batch.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import logging
import multiprocessing
import os
import queue
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ..analytics import Analytics
from ..coco import Classes
from ..environ import as_child, child_environ
from ..monitor import Monitor
from ..outputs import totals_path
from ..profiling import nvtx_range
from ..sinks import Sink, VideoSink, jsonl_formatter, loaded as sinks_loaded, preview_jpeg, texts as batch_texts
from ..sources import VideoInfo
from ..timeline import stamp
from ..track import Tracker, forget as forget_tracker, in_worker as track_in_worker, preload
from .items import BatchResult, FrameBudget, RunReport, VideoEnd, VideoStart

log = logging.getLogger(__name__)
SinkFactory = Callable[[VideoInfo], Sink]
_STOP = object()
_IDLE = object()  # nothing came within AHEAD_POLL_S
# Items (a scheduler's turn of results, or one item) waiting for the writer, at most (a few kB each).
# Generous on purpose: the writer waits for each batch's copy, so with a short queue a burst of results
# released by the orderer blocked the compute thread until the GPU had drained (measured: 26 ms of GPU
# idle on in.mp4's 0.3 s).
WRITE_QUEUE = 256
# Batches whose text is being made in the lanes while the writer goes on, at most. Waiting on each
# one's round trip instead (two hand-overs between threads that contend for the GIL) capped a tracked
# 1080p run at 856 frames/s against 2,391 untracked (``vidpipe bench CLIP --track``), and left one
# lane of four busy at a time untracked (a batch's text was awaited before the next went out).
AHEAD = 16
# While batches are in the lanes and nothing new comes, the writer looks for finished ones this often.
AHEAD_POLL_S = 0.005
# A video's tracked batches that go to its lane as one task, at most. Sent one by one, each batch
# waited for two hand-overs between this process's threads, each for the GIL (the executor's threads:
# ~40 ms a batch with the decode and compute threads running), and the lane, tracking a batch in
# ~12 ms, sat idle: 1,561 frames/s tracked against 2,681 untracked on a 3,600-frame 1080p input
# (``vidpipe bench CLIP --track``). Batches that land while the lane is busy wait and go
# together, so the hand-overs are paid per group; the cap bounds a group's latency (~0.1 s).
TRACK_GROUP = 8


# A lane formats and tracks in one thread. Without these, NumPy's OpenBLAS starts a thread per core
# in each lane as it is imported, and they spin for a while: 4 lanes x 16 threads on the 16-core H200
# machine, beside the GPU's warm-up in this process.
LANE_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class _Issued:
    result: BatchResult


class FormatPool:
    """Worker processes ("lanes", one process each) that format results and track videos:
    ``submit(formatter, indices, times, arrays)`` returns a Future of the text (lanes in turn);
    ``track(lane, key, fps, arrays)`` a Future of the arrays with track ids, tracked by ``key``'s
    tracker in that lane, which runs its tasks one at a time in submission order. Spawned (the
    parent holds CUDA), importing only the sinks and the tracker (no torch). One pool per process
    and size, started on first use and kept: starting one costs ~0.5 s, as much as a whole short
    run (a pool per run halved ``vidpipe bench``'s in.mp4 figure)."""

    _shared: dict[int, FormatPool] = {}

    def __init__(self, workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.lanes = [ProcessPoolExecutor(1, mp_context=context, initializer=as_child, initargs=(os.getpid(),))
                      for _ in range(workers)]
        with child_environ(LANE_ENV):  # the environment a worker starts with (on its first task)
            for lane in self.lanes:  # start every worker now, and import what it formats with, while the GPU warms up
                lane.submit(sinks_loaded)
        self._turn = itertools.cycle(self.lanes)
        self._tracking = False  # whether the lanes have imported the tracking library

    def preload_tracking(self) -> None:
        """Have every lane import the tracking library now, once, while the first batches run."""
        if not self._tracking:
            self._tracking = True
            for lane in self.lanes:
                lane.submit(preload)

    @classmethod
    def get(cls, workers: int) -> FormatPool | None:
        """The process's pool of ``workers``; None for 0, or in a daemonic worker process (which may
        not have children: it formats in its writer thread)."""
        if workers == 0 or multiprocessing.current_process().daemon:
            return None
        if workers not in cls._shared:
            cls._shared[workers] = cls(workers)
        return cls._shared[workers]

    @classmethod
    def close_all(cls) -> None:
        """Stop and reap every lane. Called at exit, when no result is awaited: each worker is
        terminated instead of asked to finish, since a worker's orderly exit (its interpreter's
        teardown, the executor's hand-shake) took 0.7 s on the 2-core CI machine, in the command's
        wall time (terminated and reaped, four lanes: 0.08 s)."""
        lanes = [lane for pool in cls._shared.values() for lane in pool.lanes]
        for lane in lanes:
            for process in list((lane._processes or {}).values()):  # the executor keeps no public handle on them
                process.terminate()
        for lane in lanes:  # the executor reaps them; at exit (atexit) it takes no new work meanwhile
            lane.shutdown(wait=True, cancel_futures=True)
        cls._shared.clear()

    def submit(self, formatter: Callable, indices: list[int], times: list[float],
               arrays: tuple[np.ndarray, ...]) -> Future:
        return next(self._turn).submit(formatter, indices, times, *_contiguous(arrays))

    def track(self, lane: int, key: str, fps: float, arrays: tuple[np.ndarray, ...]) -> Future:
        return self.lanes[lane].submit(track_in_worker, key, fps, *_contiguous(arrays))

    def track_text(self, lane: int, key: str, fps: float, formatter: Callable, sizes: list[int], indices: list[int],
                   times: list[float], arrays: tuple[np.ndarray, ...]) -> tuple[Future, Future]:
        """Like :meth:`track` for consecutive batches of one video (``sizes`` frames each, their arrays
        concatenated), then each batch's text, made in the next lane (another process, where there is
        one): Futures of the tracking (done when the lane is free) and of the list of texts. Tracking
        is sequential per video, formatting is not: one lane doing both capped a tracked 1080p run at
        1,430 frames/s (``vidpipe bench CLIP --track``)."""
        text: Future = Future()
        other = self.lanes[(lane + 1) % len(self.lanes)]

        def tracked(f: Future) -> None:  # in the executor's result thread, as soon as the lane is done
            try:
                formatted = other.submit(batch_texts, formatter, sizes, indices, times, *f.result())
            except BaseException as e:
                text.set_exception(e)
                return
            formatted.add_done_callback(lambda g: _settle(text, g))

        tracking = self.track(lane, key, fps, arrays)
        tracking.add_done_callback(tracked)
        return tracking, text

    def forget(self, lane: int, key: str) -> None:
        """Drop ``key``'s tracker (its video has ended)."""
        self.lanes[lane].submit(forget_tracker, key)


def _settle(future: Future, done: Future) -> None:
    """``future`` gets ``done``'s result or exception."""
    try:
        result = done.result()
    except BaseException as e:  # its exception, or its cancellation (pool shut down)
        future.set_exception(e)
    else:
        future.set_result(result)


def _formatter(sink: Sink, r: BatchResult) -> Callable[..., str]:
    """The sink's formatter for ``r``'s frames (their size given only where it is not their video's)."""
    size = r.resized()
    return sink.formatter() if size is None else sink.formatter(size)


def _spread(texts: Future, futures: list[Future]) -> None:
    """Each of ``futures`` gets its text from the list ``texts`` gives, or its exception."""
    try:
        for future, text in zip(futures, texts.result(), strict=True):
            future.set_result(text)
    except BaseException as e:
        for future in futures:
            if not future.done():
                future.set_exception(e)


def _contiguous(arrays: tuple[np.ndarray | None, ...]) -> tuple[np.ndarray | None, ...]:
    return tuple(None if a is None else np.ascontiguousarray(a) for a in arrays)


_video_keys = itertools.count()  # names a tracked video in the lanes, unique in this process


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


@dataclass
class _Open:
    """A video being written: its sink (None once its output failed), why it failed, its tracker
    and its line and zone counts."""

    info: VideoInfo
    sink: Sink | None
    failure: str | None = None
    tracker: Tracker | None = None  # tracked here, or in lane ``lane`` of the pool under ``key``
    lane: int | None = None
    key: str = ""
    analytics: Analytics | None = None
    video: VideoSink | None = None  # its annotated video (--save-video)
    text: Callable | None = None  # its frames' JSON Lines text, for a monitor that publishes detections
    # Tracked in a lane: batches waiting to go to it as one group, and the groups sent (their tracking).
    pending: list[tuple[BatchResult, tuple[np.ndarray, ...]]] = field(default_factory=list)
    tracking: list[Future] = field(default_factory=list)


class Writer:
    """Consumes the scheduler's items: opens a sink per video (several at once: inputs interleave,
    each in its own order), writes batches once their copy is done, closes sinks (final only when
    the video was decoded and written whole; else what was written is set aside as
    ``.incomplete``). An output that cannot be written fails its video alone, with a one-line
    reason. Runs in a thread when ``threaded``; :meth:`issue` gives it each result early, to format
    as soon as it lands (in ``formatters`` processes when > 0), except when it tracks: track ids
    exist only once a result's turn has come."""

    def __init__(self, sink_for: SinkFactory, threaded: bool, on_frames: Callable[[int], None] | None,
                 on_video: Callable[[VideoEnd], None] | None, formatters: int = 0, track: bool = False,
                 analytics: Callable[[], Analytics] | None = None,
                 videos: Callable[[VideoInfo], VideoSink | None] | None = None, keep: FrameBudget | None = None,
                 monitor: Monitor | None = None, classes: Classes | None = None) -> None:
        self.analytics = analytics  # a new video's line and zone counters, counted here in frame order
        self.videos, self.keep = videos, keep  # annotated videos, and the budget of the frames they hold
        self.monitor, self.classes = monitor, classes  # what the run reports as it goes (events, metrics, view)
        self._previews = _Previews(monitor) if monitor is not None and monitor.previews else None
        self.sink_for, self.on_frames, self.on_video = sink_for, on_frames, on_video
        self.track = track  # track ids are assigned here, in frame order, before formatting
        self.formatters = FormatPool.get(formatters)
        if track and self.formatters is not None:
            self.formatters.preload_tracking()
        # Tracked batches in the lanes, in write order: (video, result), the text a Future in r.text.
        self.ahead: collections.deque[tuple[_Open, BatchResult]] = collections.deque()
        self.open: dict[int, _Open] = {}  # by id(info): the scheduler's items carry the video's info
        self.report = RunReport()
        self.error: BaseException | None = None
        self.q: queue.Queue | None = queue.Queue(maxsize=WRITE_QUEUE) if threaded else None
        self.thread = threading.Thread(target=self._loop, name="vidpipe-write", daemon=True) if threaded else None
        if self.thread:
            self.thread.start()

    def put(self, item) -> None:
        """One item, or a list of them (a scheduler's turn: one hand-over to the writer's thread)."""
        if self.error is not None:
            raise self.error
        if self.q is None:
            for one in item if isinstance(item, list) else (item,):
                self._handle(one)
        else:
            self.q.put(item)

    def _loop(self) -> None:
        while True:
            try:
                item = self.q.get(timeout=AHEAD_POLL_S) if self.ahead else self.q.get()
            except queue.Empty:
                item = _IDLE
            if item is _STOP:
                self._catch_up(0)
                return
            try:
                for one in item if isinstance(item, list) else (item,):
                    self._handle(one)
            except BaseException as e:  # surfaced to the producer thread on its next put
                self.error = e
                self._abort()
                return

    def depth(self) -> int:
        """Turns of results waiting for the writer's thread."""
        return self.q.qsize() if self.q is not None else 0

    def issue(self, result: BatchResult) -> None:
        """``result`` as soon as its batch is issued (it comes again in its turn, in order)."""
        if result.captured is None:  # a live result is formatted in its turn (its latency is to its write)
            self.put(_Issued(result))

    def _handle(self, item) -> None:
        if item is _IDLE:
            self._catch_up(AHEAD)  # what the lanes have finished, written
        elif isinstance(item, _Issued):
            r = item.result
            video = self.open.get(id(r.info))  # a video not yet started: formatted in its turn
            # Not ahead of time: track ids need the frames before.
            if video is not None and hasattr(video.sink, "formatter") and not self.track and self.analytics is None:
                arrays = r.arrays()
                if r.finite():  # else its turn fails the video
                    with nvtx_range("format"):
                        r.text = self._format(video.sink, r, arrays)
        elif isinstance(item, VideoStart):
            video = self.open[id(item.info)] = _Open(item.info, None)
            if self.track and self.formatters is not None:
                n = next(_video_keys)
                video.key, video.lane = str(n), n % len(self.formatters.lanes)
            elif self.track:
                video.tracker = Tracker(item.info.fps)
            video.analytics = self.analytics() if self.analytics is not None else None
            if self.monitor is not None and self.monitor.detections:
                video.text = jsonl_formatter(item.info.path, item.info.width, item.info.height, self.classes)
            try:
                video.sink = self.sink_for(item.info)
                video.video = self.videos(item.info) if self.videos is not None else None
            except (OSError, UnicodeError) as e:
                video.failure = f"{item.info.path}: cannot write its output ({_reason(e)})"
        elif isinstance(item, BatchResult):
            try:
                self._write(self.open[id(item.info)], item)
                self._catch_up(AHEAD)
            finally:
                if item.pixels is not None:
                    item.pixels = None
                    self.keep.give(len(item.indices))
            self.report.frames += len(item.indices)
            if self.on_frames:
                self.on_frames(len(item.indices))
        elif isinstance(item, VideoEnd):
            self._catch_up(0)
            item = self._close(item)
            self.report.videos.append(item)
            if self.on_video:
                self.on_video(item)

    def _write(self, video: _Open, r: BatchResult) -> None:
        """One batch's frames into the video's sink; a failure to write fails this video alone."""
        if video.sink is None:
            return
        arrays = r.arrays()
        if r.text is None and not r.finite():  # text was made only for finite results
            self._catch_up(0)  # what came before is written first
            self._fail(video, f"{r.info.path}: the model's boxes or scores are not finite (NaN or inf) from frame "
                              f"{r.indices[0]} on; check the weights")
            return
        if (video.lane is not None and video.analytics is None and video.video is None and r.captured is None
                and self.formatters is not None and hasattr(video.sink, "formatter")):
            # Tracked and formatted in the video's lane; written once done, while later batches go on.
            if video.pending and (video.pending[0][1][0].shape[1:] != arrays[0].shape[1:]
                                  or video.pending[0][0].resized() != r.resized()):
                self._send(video)  # a group's arrays are concatenated (one padded width), its text has one size
            r.text = Future()
            video.pending.append((r, arrays))
            self.ahead.append((video, r))
            if self.monitor is not None:  # its detections are known once tracked, in the lane: frames only
                self.monitor.frames(r.info.path, r.indices, r.times, None, None)
            return  # sent by _catch_up, which follows
        if r.captured is not None and video.lane is not None:
            # A live result is a frame or two of one camera: tracked here, as its text is made (below),
            # once the batches before it in its lane are done.
            self._catch_up(0)
            video.tracker, video.lane = Tracker(video.info.fps), None
        if video.tracker is not None:
            with nvtx_range("track"):
                arrays = video.tracker.batch(*arrays)  # boxes, labels, scores, counts, track ids
        elif video.lane is not None:
            with nvtx_range("track"):
                arrays = self.formatters.track(video.lane, video.key, video.info.fps, arrays).result()
        sink = video.sink
        track_ids = arrays[4] if len(arrays) > 4 else None
        captured = latency = counted = None
        if r.captured is not None:  # live: capture time and latency (to now, the write) per frame
            captured = np.asarray(r.captured)
            latency = time.time() - captured
        crossings = None
        if video.analytics is not None:
            boxes, labels, _, counts = arrays[:4]
            counted, crossings = [], []
            for i, c in enumerate(counts.tolist()):
                counted.append(video.analytics.frame(boxes[i, :c], labels[i, :c],
                                                     None if track_ids is None else track_ids[i, :c]))
                crossings.append(video.analytics.crossed)
        arrays = (*arrays[:4], track_ids, captured, latency, counted)
        if video.video is not None and r.pixels is not None:
            try:
                with nvtx_range("annotate"):
                    video.video.write(r.pixels, r.pixels_ready, r.indices, *arrays[:5], counted=counted)
            except (OSError, UnicodeError) as e:
                self._catch_up(0)  # what came before is written first
                self._fail(video, f"{r.info.path}: cannot write {video.video.path} ({_reason(e)})")
                return
        # A live result's text is made here, not in the formatting processes: it is a frame or two, and
        # waiting for its round trip to a process, result after result, held 32 cameras on an H200 at 19
        # frames/s each against 24 made here (``vidpipe bench --suite live``).
        if r.text is None and r.captured is None and self.formatters is not None and hasattr(sink, "formatter"):
            r.text = self._format(sink, r, arrays)
        if isinstance(r.text, Future):  # made in a lane: written in its turn once done, while later batches go on
            self.ahead.append((video, r))
        else:
            self._catch_up(0)  # the lanes' batches first, in order
            self._put(video, r, arrays)
        if self.monitor is not None:
            self._report(video, r, arrays, crossings)

    def _report(self, video: _Open, r: BatchResult, arrays: tuple, crossings: list[list[dict]] | None) -> None:
        """A result's frames to the run's monitor, and the preview frame it carries to the pictures' thread."""
        captured, latency, counted = arrays[5], arrays[6], arrays[7]
        text = video.text(r.indices, r.times, *arrays) if video.text is not None else None
        self.monitor.frames(r.info.path, r.indices, r.times, None if captured is None else captured.tolist(),
                            None if latency is None else latency.tolist(), text, counted, crossings)
        if r.preview is not None:
            row = len(r.indices) - 1  # the preview is the result's last frame
            self._previews.submit(r.info.path, r.indices[row], r.preview, r.preview_ready,
                                  *(a[row:row + 1] for a in arrays[:4]),
                                  None if arrays[4] is None else arrays[4][row:row + 1], self.classes.names)
            r.preview = None

    def _put(self, video: _Open, r: BatchResult, arrays: tuple | None = None) -> None:
        """``r``'s text (or ``arrays``, formatted here) into the video's sink."""
        if video.sink is None:  # its output failed meanwhile
            return
        try:
            with nvtx_range("write"):
                text = r.text.result() if isinstance(r.text, Future) else r.text
                if text is not None:
                    video.sink.write_lines(text, len(r.indices))
                elif (size := r.resized()) is not None:
                    video.sink.write(r.indices, r.times, *arrays, size=size)
                else:
                    video.sink.write(r.indices, r.times, *arrays)
                stamp("written")
        except (OSError, UnicodeError) as e:
            self._fail(video, f"{r.info.path}: cannot write {video.sink.path} ({_reason(e)})")

    def _send_ready(self, waiting: bool) -> None:
        """Pending tracked batches to their lanes: a video's once fewer than two of its groups are out
        (the lane then has the next one queued as it finishes one) or TRACK_GROUP are pending; every
        video's when the writer is about to wait for them."""
        for video in self.open.values():
            if video.pending and video.sink is not None:  # a failed video's are not written
                video.tracking = [f for f in video.tracking if not f.done()]
                if waiting or len(video.tracking) < 2 or len(video.pending) >= TRACK_GROUP:
                    self._send(video)

    def _send(self, video: _Open) -> None:
        """The video's pending batches to its lane, as one task."""
        group, video.pending = video.pending, []
        results = [r for r, _ in group]
        arrays = tuple(np.concatenate(parts) for parts in zip(*(a for _, a in group)))
        tracking, texts = self.formatters.track_text(
            video.lane, video.key, video.info.fps, _formatter(video.sink, results[0]),
            [len(r.indices) for r in results], [i for r in results for i in r.indices],
            [t for r in results for t in r.times], arrays)
        video.tracking.append(tracking)
        texts.add_done_callback(lambda f: _spread(f, [r.text for r in results]))

    def _catch_up(self, ahead: int) -> None:
        """Write the lanes' finished batches, in order; wait for them until at most ``ahead`` remain."""
        self._send_ready(False)
        while self.ahead and (len(self.ahead) > ahead or self.ahead[0][1].text.done()):
            if not self.ahead[0][1].text.done():
                self._send_ready(True)  # about to wait: every batch on its way
            self._put(*self.ahead.popleft())

    def _format(self, sink: Sink, r: BatchResult, arrays: tuple) -> str | Future:
        """The text of ``r``'s frames: made in the formatting processes (a Future) or here."""
        formatter = _formatter(sink, r)
        if self.formatters is not None:
            return self.formatters.submit(formatter, r.indices, r.times, arrays)
        return formatter(r.indices, r.times, *arrays)

    def _fail(self, video: _Open, reason: str) -> None:
        video.failure = reason
        if video.video is not None:
            video.video.fail()
            video.video = None
        try:
            kept = video.sink.fail()
        except (OSError, UnicodeError):  # e.g. the disk is still full
            kept = None
        if kept is not None:
            video.failure += f"; the frames written before are in {kept}"
        video.sink = None

    def _close(self, end: VideoEnd) -> VideoEnd:
        """Finish the video's output: its final name only when every frame was decoded and written."""
        video = self.open.pop(id(end.info), None) if end.info is not None else None
        if video is None:  # never started (the input could not be probed)
            return end
        if video.lane is not None:
            self.formatters.forget(video.lane, video.key)
        if video.analytics is not None:
            end = replace(end, analytics=video.analytics.totals())
        if video.video is not None:  # finished whatever the detections' output does
            try:
                video.video.close(complete=end.ok)
            except (OSError, UnicodeError) as e:
                video.failure = f"{end.path}: cannot finish {video.video.path} ({_reason(e)})"
        if video.sink is not None:
            if end.ok:
                try:
                    video.sink.close(complete=True)
                    if end.analytics is not None:  # beside the output: out/clip.jsonl -> out/clip.totals.json
                        path = totals_path(video.sink.path)
                        tmp = path.with_name(f".{path.name[:200]}.{os.getpid()}.tmp")
                        tmp.write_text(json.dumps(end.analytics) + "\n")
                        os.replace(tmp, path)  # whole or not at all
                except (OSError, UnicodeError) as e:
                    video.failure = f"{end.path}: cannot finish {video.sink.path} ({_reason(e)})"
            else:
                kept = video.sink.fail()
                if kept is not None:
                    end = replace(end, error=f"{end.error}; the frames decoded are in {kept}")
        if video.failure is not None:
            end = replace(end, error=video.failure, fatal=True)
        return end

    def _abort(self) -> None:
        self.ahead.clear()
        if self.keep is not None:
            self.keep.close()  # nothing will give frames back now: the scheduler must not wait for it
        for video in self.open.values():
            if video.sink is not None:
                video.sink.close(complete=False)
            if video.video is not None:
                video.video.close(complete=False)
        self.open.clear()

    def finish(self, ok: bool) -> RunReport:
        if self.q is not None:
            if ok:
                self.q.put(_STOP)
                self.thread.join()
            else:
                self._drain()
        if self._previews is not None:
            self._previews.close()
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


class _Previews:
    """A live view's frames drawn and JPEG-encoded on a thread of their own, one at a time, on a CUDA
    stream of their own: the encoded picture is read back to the host, which waits for the GPU, and
    the writer must not wait with it, with every camera's results behind it. A preview that comes
    while one is being made is dropped: the view shows a few frames a second, never every frame."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vidpipe-preview")
        self._busy = threading.Lock()
        self._stream = None

    def submit(self, path: str, frame: int, pixels, ready, *arrays) -> None:
        if self._busy.acquire(blocking=False):  # the detections copied: their host buffers are reused
            self._pool.submit(self._make, path, frame, pixels, ready,
                              *(a.copy() if isinstance(a, np.ndarray) else a for a in arrays))

    def _make(self, path: str, frame: int, pixels, ready, *arrays) -> None:
        import torch

        try:
            if pixels.is_cuda and self._stream is None:
                self._stream = torch.cuda.Stream(pixels.device)
            with torch.cuda.stream(self._stream) if pixels.is_cuda else nullcontext(), nvtx_range("preview"):
                self.monitor.preview(path, frame, preview_jpeg(pixels, ready, *arrays))
        except Exception as e:  # noqa: BLE001 - a picture for the view never fails the run
            log.warning("%s: live view picture not made (%s)", path, e)
        finally:
            self._busy.release()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


atexit.register(FormatPool.close_all)
