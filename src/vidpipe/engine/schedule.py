"""Scheduling: the compute thread's loop. It takes decoded chunks as they come, fills batches,
issues them to the detector, and hands results on in input order.

In: a :class:`~vidpipe.detector.Detector` and paths. Out, from :meth:`Scheduler.items`:
:class:`~.items.VideoStart`, :class:`~.items.BatchResult` and :class:`~.items.VideoEnd`, each
input's in its order (inputs interleave), each once. ``on_issue`` (optional) sees every result as
soon as its batch is issued, before order is restored: the writer formats it once it lands, so
what is held back for ordering is text.

The compute thread only issues work: on CUDA two graph replays per batch (the model on its own
stream, post-processing beside the next batch's model); results go to pinned host memory behind
an event. At most ``IN_FLIGHT`` batches are queued on the GPU. With ``Config.overlap=False`` the
same loop runs serially (the article's starting point): decode, infer, copy back, one batch after
another.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import nullcontext
from typing import Callable, Iterator

import torch

from ..detector import Detector
from ..gil import switch_interval
from ..graphs import Batch
from ..inputs import is_stream_url
from ..profiling import nvtx_range
from ..sources import VideoInfo
from ..timeline import stamp
from .batching import MAX_WAIT, Batcher, Rows, padding
from .decode import DONE, FrameProducer
from .items import BatchResult, Chunk, FrameBudget, HostBatch, UnitEnd, VideoEnd, VideoStart
from .live import LiveSources
from .order import Orderer
from .plan import SEGMENT_FRAMES, TRACKED_SEGMENT_FRAMES

IN_FLIGHT = 3  # batches issued to the GPU and not finished: enough to keep it busy, bounds memory
# A live run's turns, at most one per: an eighth of a 30 fps camera's frame period, so a camera's
# frame waits for the turn that takes it rather than being replaced by its next.
TURN_S = 0.004


class Scheduler:
    """One run of ``detector`` over ``inputs`` (only frames ``[a, b)`` of each with ``frames``)."""

    def __init__(self, detector: Detector, inputs: list[str] | LiveSources, frames: tuple[int, int] | None = None,
                 on_issue: Callable[[BatchResult], None] | None = None, keep: FrameBudget | None = None,
                 preview: Callable[[str], bool] | None = None,
                 on_state: Callable[[str, str, str], None] | None = None) -> None:
        cfg = detector.config
        self.detector, self.frames, self.on_issue = detector, frames, on_issue
        self.preview = preview  # whether a live source's frame should be kept for a view (its last in a batch)
        self.keep = keep  # annotated video: each result keeps its frames, within this budget
        self.serial = not cfg.overlap
        self.producer = FrameProducer(inputs, cfg.decoder, detector.device, detector.batch_size,
                                      workers=cfg.decoders, threaded=cfg.overlap, max_frames=cfg.max_frames,
                                      frames=frames, runtime=detector.runtime, realtime=cfg.realtime,
                                      loop=cfg.loop, live_policy=cfg.live_policy, in_order=keep is not None,
                                      segment_max=TRACKED_SEGMENT_FRAMES if cfg.track else SEGMENT_FRAMES,
                                      stream_decoder=cfg.stream_decoder, on_state=on_state)
        self.order = Orderer(self.producer.release, self.expected)
        # Live frames trickle in and their batches mostly go out short: graphs for short batches too.
        self.short = isinstance(inputs, LiveSources) or cfg.realtime or any(map(is_stream_url, inputs))
        self.turn_at = 0.0  # when the last turn ended (pace)
        self.batcher = Batcher(lambda h, w: detector.batch(h, w, self.short))
        self.compute = detector.runtime.stream("compute") if cfg.overlap else None
        self.issued: deque[torch.cuda.Event] = deque()  # batches on the GPU, oldest first
        # Padding the run's batches will carry anyway (GPUs run every batch full): while the GPU
        # idles, batches may go out this many frames short in all at no cost. The first batch then
        # starts with the first frames decoded instead of a full batch's worth.
        self.slack = 0
        if self.compute is not None and isinstance(inputs, list):
            self.slack = padding(inputs, self.expected, detector.batch_size)

    def expected(self, info: VideoInfo) -> int:
        """Frames this run should decode from a video."""
        max_frames = self.detector.config.max_frames
        n = info.num_frames if max_frames is None else min(info.num_frames, max_frames)
        return n if self.frames is None else max(0, min(n, self.frames[1]) - self.frames[0])

    def items(self) -> Iterator[VideoStart | BatchResult | VideoEnd]:
        for turn in self.turns():
            yield from turn

    def turns(self) -> Iterator[list[VideoStart | BatchResult | VideoEnd]]:
        """:meth:`items`, a list per turn of the loop (a consumer on another thread takes them at once)."""
        try:
            with (torch.cuda.stream(self.compute) if self.compute is not None else nullcontext(),
                  switch_interval(self.detector.config.gil_interval_ms / 1000)):
                # Files: captured while the decoders start (NVDEC sessions, the first frames), not after.
                # Cameras: before they start, so that none of their first frames is dropped during a capture.
                if self.short and (info := self.producer.first()) is not None:
                    self.detector.prepare(info.height, info.width, self.short)
                self.producer.start()
                if not self.short and (info := self.producer.first_info) is not None:
                    self.detector.prepare(info.height, info.width, self.short)
                while (items := self.producer.get_many(timeout=self.patience())) is not DONE:
                    admitted = []
                    self.wait_for(items)
                    for item in items:
                        if isinstance(item, Chunk):
                            stamp("decoded")
                            self.take(item)
                            admitted.append(item.admitted)
                        elif isinstance(item, UnitEnd):
                            self.end(item)
                    items = item = None  # the frames are in the batches: gone once committed
                    self.batcher.commit()
                    for a in admitted:
                        self.producer.free(a)  # the room is given back
                    self.flush_short()
                    if ready := list(self.order.ready()):
                        yield ready
                    self.pace()
                for batch in self.batcher.partial():
                    self.launch(*batch)
                if ready := list(self.order.ready()):
                    yield ready
        finally:
            self.producer.close()

    def pace(self) -> None:
        """Live runs: a turn at most every ``TURN_S``. Cameras' frames come one at a time, and each turn
        costs this thread and the writer's a wake-up (a GIL hand-off behind every decode thread), a copy
        and a query of the GPU: many cameras' frames are taken a few at a time instead of one by one."""
        if self.short:
            time.sleep(max(0.0, self.turn_at + TURN_S - time.perf_counter()))
            self.turn_at = time.perf_counter()

    def patience(self) -> float | None:
        """How long the loop may wait for decoded items: with no batch open, until some come; with one,
        until it could go out short (a millisecond at a time while the GPU is busy). Each wake-up waits
        to take the GIL back behind every decode thread: many cameras' batches wait ``MAX_WAIT`` in
        one wait, not fifty."""
        if not self.batcher.open:
            return None
        if self.slack > 0 or self.serial:
            return 0.001
        return max(0.001, MAX_WAIT - (time.perf_counter() - min(self.batcher.since.values())))

    def wait_for(self, items: list) -> None:
        """The compute stream waits (on the device) for the streams whose queued work writes this turn's
        frames (FFmpeg's NVDEC frames, converted on the legacy default stream): once per stream a turn."""
        if self.compute is None:
            return
        for stream in {item.batch.stream for item in items if isinstance(item, Chunk)} - {None}:
            self.compute.wait_stream(stream)

    def take(self, chunk: Chunk) -> None:
        """A decoded chunk into the open batch of its size; full batches are launched."""
        if self.compute is not None:  # decoded on a worker's stream, read on this one
            chunk.batch.frames.record_stream(self.compute)
        for batch in self.batcher.add(chunk):
            self.launch(*batch)

    def end(self, end: UnitEnd) -> None:
        if self.serial:  # the serial loop finishes each input before the next
            for batch in self.batcher.partial():
                self.launch(*batch)
        self.order.end(end)

    def flush_short(self) -> None:
        """While the GPU idles: the batches the short-batch policy lets go out short."""
        if self.serial or not self.batcher.open or not self.idle():
            return
        for batch in self.batcher.partial(short=self.slack) + self.batcher.stale(MAX_WAIT):
            self.launch(*batch)

    def idle(self) -> bool:
        return not self.issued or self.issued[-1].query()

    def launch(self, batch: Batch, rows: list[Rows]) -> None:
        """Issue one batch; its rows' results go to the orderer (and to ``on_issue``)."""
        self.slack -= batch.size - batch.n
        with nvtx_range("batch"):
            if len(self.issued) == IN_FLIGHT:  # the GPU is far enough ahead; frames wait in the queues
                self.issued.popleft().synchronize()
            kept = ready = None
            if self.keep is not None:  # before the model runs: the graph's input is the next batch's
                self.keep.take(batch.n)
                kept = batch.frames()
                if kept.is_cuda:
                    ready = torch.cuda.Event()
                    ready.record()
            previews, previews_ready = self._previews(batch, rows)
            host, event = self.detector.submit(batch)
            stamp("issued")
            if event is not None:
                if self.serial:  # the serial loop waits for every batch
                    event.synchronize()
                self.issued.append(event)
        row, shared = 0, HostBatch(host, event)
        for r in rows:
            result = BatchResult(r.unit.info, r.indices, r.times, host, event, row, classes=self.detector.classes,
                                 captured=r.captured, pixels_ready=ready,
                                 pixels=None if kept is None else kept[row:row + len(r.indices)], shared=shared,
                                 size=r.size, preview=previews.get(row), preview_ready=previews_ready)
            self.order.add(r.unit, result)
            if self.on_issue is not None:
                self.on_issue(result)
            row += len(r.indices)


    def _previews(self, batch: Batch, rows: list[Rows]) -> tuple[dict[int, torch.Tensor], torch.cuda.Event | None]:
        """For the live sources a view wants a frame of now: their last frame in this batch, copied before
        the model runs (the graph's input is the next batch's), by the first row of their rows; and the
        event after which the copies are there (None on a CPU)."""
        out, row = {}, 0
        for r in rows if self.preview is not None else ():
            if r.captured is not None and self.preview(r.unit.info.path):
                out[row] = batch.row(row + len(r.indices) - 1)
            row += len(r.indices)
        if not out or not next(iter(out.values())).is_cuda:
            return out, None
        ready = torch.cuda.Event()
        ready.record()
        return out, ready


def process(detector: Detector, inputs: list[str] | LiveSources, frames: tuple[int, int] | None = None,
            on_issue: Callable[[BatchResult], None] | None = None, keep: FrameBudget | None = None
            ) -> Iterator[VideoStart | BatchResult | VideoEnd]:
    """Decode and detect ``inputs``; see :class:`Scheduler`. The caller waits on each result."""
    return Scheduler(detector, inputs, frames, on_issue, keep).items()
