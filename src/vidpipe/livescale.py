"""Live sources spread over worker processes: several engines per GPU for many cameras.

In: a :class:`~vidpipe.engine.LiveSources` (streams, ``--realtime`` files; it may change while it
runs), the output path each source gets, and the devices with a process count per device. Out:
the outputs (each written by the process that runs its source) and a
:class:`~vidpipe.engine.RunReport` with every source's :class:`~vidpipe.engine.VideoEnd`.

One process's live frames each cost it Python work under its one GIL (a decode call, a batch copy,
a line of text), so past CAMERAS_PER_PROCESS cameras each worker process here runs the same engine as
a one-process run over its share of the sources, batching its
streams' frames together; a source is given to the process running the fewest and stays there until
it is removed. A worker that fails (cannot start, crashes, is killed) hands its running sources to the
others, where they start again. The parent only follows the set and collects what the workers report.
The processes share the GPU by time slices (separate CUDA contexts, whose kernels never overlap); each
sends its batches out short (its few cameras' frames of ``MAX_WAIT``) on graphs captured for tiers of
the batch, so a process costs the GPU about its frames rather than a full batch per turn
(``vidpipe bench --suite live --procs-per-device N``).
"""

from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import os
import threading
from dataclasses import fields
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

from .config import Config
from .engine import LiveSources, RunReport, VideoEnd
from .engine.live import POLL
from .environ import as_child
from .inputs import log_to_stderr
from .monitor import Monitor, Relay
from .scale import Assignment, Inbox, Sender, frames_reporter, start_worker

log = logging.getLogger(__name__)

# Live sources one engine process takes on (--procs-per-device auto): its Python, on one GIL, is what
# limits a process, and the slowest machine counts: on an H100 one process held 16 1080p30 cameras at
# 29.8 frames/s the slowest, just over a camera's 29.5, and not 32 (vidpipe bench --suite live
# --live-cameras http), so auto plans below 16.
CAMERAS_PER_PROCESS = 12
CORES_PER_PROCESS = 2  # 16 cameras in one process kept 0.8 cores busy, camera server included (the same bench)
# Processes time-slice the GPU, and each runs its own small batches padded to a tier: on an H100, 64
# cameras in six processes kept the GPU 88% busy with the slowest at 29.0 frames/s, where 48 in four
# held at 58% (the same bench, --live-streams 48,64). Past four, processes take more cameras each.
PROCESSES_PER_GPU = 4


def processes_for(cameras: int, device: str) -> int:
    """Engine processes per device for ``cameras`` live sources (``--procs-per-device auto``): one per
    CAMERAS_PER_PROCESS, at most PROCESSES_PER_GPU and one per CORES_PER_PROCESS of this machine's
    cores; one on a CPU."""
    if device == "cpu" or (device == "auto" and not _has_gpu()):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(-(-cameras // CAMERAS_PER_PROCESS), PROCESSES_PER_GPU, cores // CORES_PER_PROCESS))


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def run_live_processes(config: Config, sources: LiveSources, fmt: str, target_for: Callable[[str], Path],
                       devices: list[Assignment], per_device: int = 1, *,
                       on_frames: Callable[[int], None] | None = None,
                       on_video: Callable[[VideoEnd], None] | None = None,
                       on_message: Callable[[str, int, object], None] | None = None,
                       monitor: Monitor | None = None) -> RunReport:
    """Run ``sources`` on ``per_device`` worker processes per device until the set is closed and every
    worker has finished its outputs. ``target_for(source)`` names a source's output when it is added
    (called once per addition, in the order of additions). ``on_message(kind, worker, payload)`` sees
    every worker message: ``hello`` (its pid), ``device`` (the GPU's UUID that computed its first batch,
    or ``cpu``), ``frames``, ``video`` (a VideoEnd's fields), ``done``, ``dead`` (why it failed).
    ``monitor``: what every worker's engine reports goes there (events, metrics, the view), relayed."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    workers = [d for d in devices for _ in range(per_device)]
    report, finished = RunReport(), set()
    controls, inbox = [ctx.Queue() for _ in workers], Inbox(ctx, workers, report, on_frames, on_message)
    cfg = {k: v for k, v in config.asdict().items() if k != "device"}
    relay = None if monitor is None else (monitor.detections, monitor.previews, 1 / len(workers))
    inbox.started([start_worker(ctx, d, _live_worker, (i, d.device, cfg, fmt, controls[i], inbox.pipes[i][1],
                                                       os.getpid(), relay), config.model)
                   for i, d in enumerate(workers)])
    dispatch = _Dispatch(sources, controls, target_for)
    thread = threading.Thread(target=dispatch.run, name="vidpipe-live-dispatch", daemon=True)
    thread.start()
    try:
        while len(finished) < len(workers):
            for path, reason in dispatch.refused():  # no output could be opened for it: never started
                end = VideoEnd(path, error=f"{path}: cannot write its output ({reason})", fatal=True)
                report.videos.append(end)
                if on_video:
                    on_video(end)
            for kind, worker, payload in inbox.messages(finished):
                if kind == "monitor" and monitor is not None:
                    monitor.relayed(worker, payload)
                elif kind == "video":
                    end = VideoEnd(**payload)
                    dispatch.ended(end.path)
                    report.videos.append(end)
                    if on_video:
                        on_video(end)
                elif kind == "dead" and worker not in finished:
                    log.error("live worker %d on %s failed: %s", worker, workers[worker].label, payload)
                    finished.add(worker)
                    if dispatch.lost(worker):  # no worker left: nothing will run
                        sources.close()
                elif kind == "done":
                    finished.add(worker)
    finally:
        sources.close()
        thread.join(timeout=5)
        inbox.close(grace=10)
    for path in dispatch.orphans():  # left on a failed worker (or none left) with no output finished
        end = VideoEnd(path, error=f"{path}: no live worker could run it", fatal=True)
        report.videos.append(end)
        if on_video:
            on_video(end)
    return report


def until_ended(paths: list[str], on_video: Callable[[VideoEnd], None] | None = None
                ) -> tuple[LiveSources, Callable[[VideoEnd], None]]:
    """Live inputs run to their ends (``--max-frames``, a stream that stops for good): their set, and
    an ``on_video`` for :func:`run_live_processes` that closes the set once every input's output is
    finished, after passing each end on to ``on_video``."""
    sources, ended = LiveSources(paths), set()

    def on_end(end: VideoEnd) -> None:
        if on_video:
            on_video(end)
        ended.add(end.path)
        if ended >= set(paths):
            sources.close()

    return sources, on_end


class _Dispatch:
    """The parent's side: each source of the set on one worker (the one with the fewest), told to it
    through the worker's control queue as ``("add", source, target)`` / ``("remove", source, None)``;
    None closes the worker's set once the parent's is closed."""

    def __init__(self, sources: LiveSources, controls: list, target_for: Callable[[str], Path]) -> None:
        self.sources, self.controls, self.target_for = sources, controls, target_for
        self._lock = threading.Lock()
        self._where: dict[str, int] = {}  # source -> its worker
        self._alive = set(range(len(controls)))
        self._moved: list[str] = []  # a dead worker's sources, to be added again elsewhere
        self._ended: set[str] = set()  # sources whose output is finished (kept until removed, as one process does)
        self._refused: list[tuple[str, str]] = []  # sources whose output could not be named, and why

    def run(self) -> None:
        seen = -1
        while True:
            seen = self.sources.wait(seen, POLL)
            wanted, closed = self.sources.snapshot()
            with self._lock:
                for path in [p for p in self._where if p not in wanted]:
                    if (worker := self._where.pop(path)) in self._alive:
                        self.controls[worker].put(("remove", path, None))
                    self._ended.discard(path)  # added again later, it starts again
                for path in [p for p in wanted if p not in self._where or p in self._moved]:
                    if not self._alive:  # no worker left: reported as not run
                        self._where[path] = -1
                        continue
                    try:
                        target = str(self.target_for(path))
                    except OSError as e:  # an earlier run's output there: this source alone is refused
                        self._where[path], self._ended = -1, self._ended | {path}
                        self._refused.append((path, e.strerror or str(e)))
                        continue
                    running = collections.Counter(w for p, w in self._where.items() if p not in self._ended)
                    worker = min(self._alive, key=lambda w: (running[w], w))
                    self._where[path] = worker
                    self.controls[worker].put(("add", path, target))
                self._moved.clear()
            if closed:
                for control in self.controls:
                    control.put(None)
                return

    def refused(self) -> list[tuple[str, str]]:
        """Sources refused since the last call (their output could not be named), and why."""
        with self._lock:
            refused, self._refused = self._refused, []
        return refused

    def ended(self, path: str) -> None:
        with self._lock:
            self._ended.add(path)

    def lost(self, worker: int) -> bool:
        """``worker`` failed: its sources still running go to the others. Whether none is left."""
        with self._lock:
            self._alive.discard(worker)
            self._moved += [p for p, w in self._where.items() if w == worker and p not in self._ended]
            return not self._alive

    def orphans(self) -> list[str]:
        """Sources left on a failed worker (or on none) with no output finished."""
        with self._lock:
            return [p for p, w in self._where.items() if w not in self._alive and p not in self._ended]


def _live_worker(worker: int, device: str, config: dict, fmt: str, control, pipe: Connection,
                 parent: int, relay: tuple[bool, bool, float] | None = None) -> None:
    """A worker process: one detector, one engine run over the sources the parent gives it (what its
    engine reports relayed to the parent's monitor, with ``relay``: detections, previews, share)."""
    as_child(parent)  # a terminal's Ctrl-C reaches every process: the parent closes the set
    results = Sender(pipe)
    from .detector import Detector
    from .engine import run
    from .sinks import open_sink

    log_to_stderr()
    results.put(("hello", worker, os.getpid()))
    sources, targets = LiveSources(), {}

    def follow() -> None:
        while (message := control.get()) is not None:
            op, path, target = message
            if op == "add":
                targets[path] = Path(target)
                sources.add(path)
            else:
                sources.remove(path)
        sources.close()

    threading.Thread(target=follow, name="vidpipe-live-control", daemon=True).start()

    def on_video(end: VideoEnd) -> None:
        results.put(("video", worker, {f.name: getattr(end, f.name) for f in fields(end) if f.name != "info"}))

    monitor = None if relay is None else Relay(lambda m: results.put(("monitor", worker, m)), *relay)
    try:
        det = Detector(Config(**{**config, "device": device}))
        # Until its first source (or the end): the run then knows a frame size, and captures its graphs
        # before that camera starts instead of during its first frames.
        sources.wait(0, None)
        run(det, sources, lambda i: open_sink(fmt, targets[i.path], i.path, i.width, i.height, det.classes,
                                              det.config.track),
            on_frames=frames_reporter(results, worker, det.device), on_video=on_video, monitor=monitor)
    except Exception as e:  # its sources still running go to the other workers
        results.put(("dead", worker, f"{type(e).__name__}: {e}"))
        return
    results.put(("done", worker, None))
