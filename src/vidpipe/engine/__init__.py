"""The engine: decode ahead in threads, batch whatever is decoded, detect, restore order, write.

Modules, in the order frames flow:

* :mod:`.live` -- :class:`LiveSources`, a set of sources that changes while it is read.
* :mod:`.plan` -- an input -> units of work (a file NVDEC decodes is cut at keyframes).
* :mod:`.decode` -- :class:`FrameProducer`, the decode worker pool with its back-pressure.
* :mod:`.batching` -- chunks -> batches of one frame size, and the short-batch policy.
* :mod:`.schedule` -- :class:`Scheduler`, the compute thread's loop: it issues batches to the
  detector and hands results on.
* :mod:`.order` -- results of parallel units back in each input's order (inputs interleave).
* :mod:`.write` -- results into sinks, each output finished once.
* :mod:`.items` -- what crosses between them.

:func:`run` writes every input into its sink; :func:`iter_results` yields per-frame results.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Callable, Iterator

from ..analytics import Analytics
from ..detector import Detector, FrameResult
from ..errors import VidpipeError
from ..monitor import Monitor
from ..sinks import VideoSink
from ..sources import VideoInfo
from ..timeline import stamp
from ..track import Tracker, check_installed
from .decode import DONE, FrameProducer
from .items import BatchResult, Chunk, FrameBudget, RunReport, Unit, UnitEnd, VideoEnd, VideoStart
from .live import LiveSources
from .schedule import Scheduler, process
from .write import SinkFactory, Writer

# Batches of frames annotated video may hold (decoded, waiting for the encoder): enough to keep the
# encoder fed while the next batch is detected; at 1080p and batch 64 each is ~400 MB of GPU memory.
KEEP_BATCHES = 3

__all__ = ["DONE", "BatchResult", "Chunk", "FrameProducer", "LiveSources", "RunReport", "Scheduler", "SinkFactory",
           "Unit", "UnitEnd", "VideoEnd", "VideoStart", "iter_results", "process", "run"]


def _checked(detector: object, inputs: object, live: bool = False) -> list[str] | LiveSources:
    """The arguments of :func:`run` / :func:`iter_results`, their types checked (a path alone is a list
    of one): a wrong type fails here, in one line, not deep inside a run."""
    if not isinstance(detector, Detector):
        raise TypeError(f"expected a vidpipe.Detector, got {type(detector).__name__} {detector!r:.60}")
    if live and isinstance(inputs, LiveSources):
        return inputs
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(i, (str, os.PathLike)) for i in inputs):
        raise TypeError("expected a video path or URL, or a list of them" + (" or a LiveSources" if live else "")
                        + f", got {type(inputs).__name__}")
    return [os.fspath(i) for i in inputs]


def iter_results(detector: Detector, inputs: str | os.PathLike | list[str]) -> Iterator[FrameResult]:
    """Per-frame results, lazily, each input's in frame order (inputs may interleave: ``FrameResult.video``
    tells them apart); one batch stays in flight so the GPU never waits for the reader. With
    ``Config.track`` each video's results carry track ids (tracked in frame order).
    A damaged or unreadable input raises :class:`VidpipeError` after its good frames. The same input
    twice is a ``ValueError``: its results could not be told apart."""
    inputs = _checked(detector, inputs)
    if len(set(inputs)) < len(inputs):
        twice = next(i for i in inputs if inputs.count(i) > 1)
        raise ValueError(f"{twice} is given twice; give each input once")
    pending: BatchResult | None = None
    trackers: dict[int, Tracker] = {}  # by id(info), as the writer keys videos
    for item in process(detector, inputs):
        if pending is not None and not isinstance(item, VideoStart):
            yield from pending.frames(trackers.get(id(pending.info)))
            pending = None
        if isinstance(item, VideoStart) and detector.config.track:
            trackers[id(item.info)] = Tracker(item.info.fps)
        if isinstance(item, BatchResult):
            pending = item
        elif isinstance(item, VideoEnd) and item.error:
            raise VidpipeError(item.error)
    if pending is not None:
        yield from pending.frames(trackers.get(id(pending.info)))


def run(detector: Detector, inputs: str | os.PathLike | list[str] | LiveSources, sink_for: SinkFactory, *,
        on_frames: Callable[[int], None] | None = None,
        on_video: Callable[[VideoEnd], None] | None = None, frames: tuple[int, int] | None = None,
        video_for: Callable[[VideoInfo], VideoSink | None] | None = None, monitor: Monitor | None = None
        ) -> RunReport:
    """Detect every input into its sink; one bad input is reported and never stops the others.
    ``inputs`` may be a :class:`LiveSources` that changes while it runs (the run returns once it is
    closed). ``video_for``: an annotated video per input (a :class:`~vidpipe.sinks.VideoSink`, or
    None for none). ``monitor``: what the run reports as it goes (MQTT events, metrics, the live view:
    :class:`~vidpipe.monitor.Monitor`). On an exception (KeyboardInterrupt included) open outputs stay
    ``.partial``."""
    inputs = _checked(detector, inputs, live=True)
    cfg = detector.config
    if cfg.track:
        check_installed()  # a missing tracking library fails the run here, in one line, before any work
    analytics = None
    if cfg.lines or cfg.zones:
        analytics = partial(Analytics, cfg.lines, cfg.zones, detector.classes)
        analytics()  # a missing library fails the run here too
    keep = FrameBudget(KEEP_BATCHES * detector.batch_size) if video_for is not None else None
    if monitor is not None:
        told = on_video

        def on_video(end: VideoEnd) -> None:  # noqa: F811 - the caller's, after the monitor's
            monitor.ended(end.path, end.error)
            if told is not None:
                told(end)

    writer = Writer(sink_for, cfg.overlap, on_frames, on_video, formatters=cfg.formatters_for(detector.device),
                    track=cfg.track, analytics=analytics, videos=video_for, keep=keep, monitor=monitor,
                    classes=detector.classes)
    scheduler = Scheduler(detector, inputs, frames, writer.issue, keep,
                          preview=None if monitor is None or not monitor.previews else monitor.wants_preview,
                          on_state=None if monitor is None else monitor.state)
    if monitor is not None:
        monitor.watch_queue("decoded", scheduler.producer.depth)
        monitor.watch_queue("results", writer.depth)
    ok = False
    try:
        for turn in scheduler.turns():
            writer.put(turn)
        ok = True
    finally:
        report = writer.finish(ok)
    stamp("done")
    return report
