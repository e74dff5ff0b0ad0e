"""Scale-out: one worker process per GPU (or several per GPU) on one host, and Ray clusters.

Inputs, and keyframe-aligned parts of long files, are handed out dynamically from one queue (a
worker takes the next task when done), so fast and slow workers stay busy; parts are written to
part files and joined in order once all are complete. Every task runs the same engine as a
single-GPU run, so outputs are identical. Workers are processes, not threads: no GIL is shared.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from .config import Config
from .engine import RunReport, VideoEnd
from .sinks import concat_outputs
from .sources import is_stream_url, scan_packets

log = logging.getLogger(__name__)


def parse_devices(spec: str) -> list[str]:
    """``all`` -> every CUDA device (or ``cpu`` without one); ``0,1`` -> ``cuda:0, cuda:1``."""
    if spec == "all":
        n = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    out = []
    for part in spec.split(","):
        part = part.strip()
        out.append(f"cuda:{part}" if part.isdigit() else part)
    return out


def _detect_file(det, path: str, target: str, fmt: str, on_frames: Callable[[int], None] | None = None,
                 frames: tuple[int, int] | None = None) -> list[VideoEnd]:
    from .engine import run
    from .sinks import open_sink

    report = run(det, [path], lambda i: open_sink(fmt, target, i.path, i.width, i.height), on_frames=on_frames,
                 frames=frames)
    return report.videos


def plan_tasks(targets: dict[str, Path], workers: int, split_frames: int) -> list[tuple]:
    """``(path, part_target, frames, part, parts)`` tasks: a file of at least 2 x ``split_frames``
    frames is cut at keyframes into up to ``workers`` parts, each written to its own part file."""
    tasks = []
    for path, target in targets.items():
        parts = 1
        if workers > 1 and not is_stream_url(path):
            try:
                index = scan_packets(path)
            except Exception:  # unreadable: one task, whose worker reports the error
                index = None
            n = len(index.times) if index and index.pts else 0
            parts = max(1, min(workers, n // split_frames)) if n >= 2 * split_frames else 1
        if parts == 1:
            tasks.append((path, str(target), None, 0, 1))
            continue
        keys = [k for k in index.keyframes if 0 < k < n]
        cuts = sorted({min(keys, key=lambda k: abs(k - n * j / parts)) for j in range(1, parts)}) if keys else []
        bounds = [0, *cuts, n]
        for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
            tasks.append((path, f"{target}.part{j}", (a, b), j, len(bounds) - 1))
    return tasks


def _only_gpu(device: str) -> str:
    """Make ``cuda:N`` the only GPU this (not yet CUDA-initialised) process sees and return its new
    name, ``cuda:0``: nothing in the worker -- a library defaulting to the current device, a
    stray context -- can then land on another worker's GPU and time-slice with it."""
    if not device.startswith("cuda:"):
        return device
    index = int(device.split(":")[1])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index] if visible else str(index)
    return "cuda:0"


def _worker(worker: int, device: str, config: dict, fmt: str, tasks: mp.Queue, results: mp.Queue) -> None:
    from .detector import Detector

    logging.basicConfig(level=logging.WARNING, format="vidpipe: %(message)s")
    try:
        det = Detector(Config(**{**config, "device": _only_gpu(device)}))
    except Exception as e:  # a worker that cannot start gives its inputs back to the others
        results.put(("dead", worker, f"{type(e).__name__}: {e}"))
        return
    while True:
        task = tasks.get()
        if task is None:
            results.put(("done", worker, None))
            return
        path, target, frames, part, parts = task
        try:
            ends = _detect_file(det, path, target, fmt, frames=frames,
                                on_frames=lambda n: results.put(("frames", worker, n)))
        except Exception as e:
            ends = [VideoEnd(path, error=f"{path}: worker on {device} failed ({type(e).__name__}: {e})", fatal=True)]
        for end in ends:
            results.put(("video", worker, (asdict(end), target, part, parts)))


def _merge_parts(fmt: str, target: Path, parts: list[tuple[VideoEnd, str]]) -> VideoEnd:
    """One VideoEnd for a split file; its part outputs joined into ``target`` when all are whole."""
    ends = [e for e, _ in parts]
    end = VideoEnd(ends[0].path, decoded=sum(e.decoded for e in ends), expected=sum(e.expected for e in ends),
                   corrupt_packets=sum(e.corrupt_packets for e in ends),
                   error=next((e.error for e in ends if e.error), None), fatal=any(e.fatal for e in ends))
    files = [Path(p) for _, p in parts]
    if not end.fatal:
        concat_outputs(fmt, files, target)
    for f in files:
        f.unlink(missing_ok=True)
    return end


class BusyWindow:
    """Frames/s while every worker is busy, from the worker processes' messages: from the moment
    each has delivered frames (process start, model build and compile excluded) to the moment the
    first one runs out of work (the tail, where some GPUs idle, excluded)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.started: set[int] = set()
        self.t0: float | None = None
        self.t1: float | None = None
        self.frames = 0

    def __call__(self, kind: str, worker: int, payload: object) -> None:
        now = time.perf_counter()
        if kind == "frames" and self.t0 is None:
            self.started.add(worker)
            if len(self.started) == self.workers:
                self.t0 = now
        elif kind == "frames" and self.t1 is None:
            self.frames += payload
        elif kind in ("done", "dead") and self.t0 is not None and self.t1 is None:
            self.t1 = now

    @property
    def fps(self) -> float:
        return self.frames / (self.t1 - self.t0) if self.t0 is not None and self.t1 and self.t1 > self.t0 else 0.0

    @property
    def seconds(self) -> float:
        return (self.t1 or 0.0) - (self.t0 or 0.0)


def run_processes(config: Config, targets: dict[str, Path], fmt: str, devices: list[str], per_device: int = 1,
                  on_frames: Callable[[int], None] | None = None,
                  on_video: Callable[[VideoEnd], None] | None = None, split_frames: int = 4096,
                  on_message: Callable[[str, int, object], None] | None = None) -> RunReport:
    """Detect every input of ``targets`` with ``per_device`` worker processes on each device;
    files of at least 2 x ``split_frames`` frames are shared out in parts and joined back.
    ``on_message(kind, worker, payload)`` sees every worker message (e.g. a :class:`BusyWindow`)."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    tasks, results = ctx.Queue(), ctx.Queue()
    workers = [d for d in devices for _ in range(per_device)]
    for task in plan_tasks(targets, len(workers), split_frames):
        tasks.put(task)
    for _ in workers:
        tasks.put(None)
    cfg = {k: v for k, v in config.asdict().items() if k != "device"}
    procs = [ctx.Process(target=_worker, args=(i, d, cfg, fmt, tasks, results), daemon=True)
             for i, d in enumerate(workers)]
    for p in procs:
        p.start()
    report, running = RunReport(), len(procs)
    pending: dict[str, list[tuple[int, VideoEnd, str]]] = {}
    try:
        while running:
            try:
                kind, worker, payload = results.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if on_message:
                on_message(kind, worker, payload)
            if kind == "frames":
                report.frames += payload
                if on_frames:
                    on_frames(payload)
            elif kind == "video":
                fields, part_target, part, parts = payload
                end = VideoEnd(**fields)
                if parts > 1:
                    done = pending.setdefault(end.path, [])
                    done.append((part, end, part_target))
                    if len(done) < parts:
                        continue
                    end = _merge_parts(fmt, targets[end.path], [(e, t) for _, e, t in sorted(done, key=lambda x: x[0])])
                report.videos.append(end)
                if on_video:
                    on_video(end)
            else:
                running -= 1
                if kind == "dead":
                    log.error("worker on %s could not start: %s", workers[worker], payload)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    _report_missing(report, targets, "no worker processed it (all workers failed)", on_video)
    return report


def _report_missing(report: RunReport, paths, reason: str, on_video: Callable[[VideoEnd], None] | None) -> None:
    """Every input gets an outcome: those no worker reported on are listed as failed."""
    done = {v.path for v in report.videos}
    for path in paths:
        if path not in done:
            end = VideoEnd(path, error=f"{path}: {reason}", fatal=True)
            report.videos.append(end)
            if on_video:
                on_video(end)


def run_ray(config: Config, targets: dict[str, Path], fmt: str, address: str | None = None,
            on_video: Callable[[VideoEnd], None] | None = None) -> RunReport:
    """Detect every input on a Ray cluster: one actor per GPU (per CPU slot without GPUs), inputs
    handed to idle actors; Ray restarts failed actors and retries their tasks. Outputs are
    written by the actors, so OUTDIR must be storage every node sees."""
    import ray
    from ray.util import ActorPool

    if not ray.is_initialized():
        ray.init(address=address or None, log_to_driver=False, include_dashboard=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))

    @ray.remote(max_restarts=2, max_task_retries=2)
    class DetectActor:
        def __init__(self, cfg: dict) -> None:
            from .detector import Detector

            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.det = Detector(Config(**{**cfg, "device": device}))

        def detect(self, path: str, target: str) -> list[dict]:
            return [asdict(e) for e in _detect_file(self.det, path, target, fmt)]

    cfg = {k: v for k, v in config.asdict().items() if k != "device"}
    if gpus:
        actors = [DetectActor.options(num_gpus=1).remote(cfg) for _ in range(gpus)]
    else:
        slots = max(1, min(len(targets), int(ray.cluster_resources().get("CPU", 1)) // 2))
        actors = [DetectActor.options(num_cpus=1).remote(cfg) for _ in range(slots)]
    pool = ActorPool(actors)
    report = RunReport()
    items = list(targets.items())
    outcomes = pool.map_unordered(lambda a, item: a.detect.remote(item[0], str(item[1])), items)
    while True:
        try:
            ends = next(outcomes)
        except StopIteration:
            break
        except Exception as e:  # retries exhausted: report, keep the others
            log.error("a Ray task failed after retries: %s", str(e).splitlines()[0])
            continue
        for payload in ends:
            end = VideoEnd(**payload)
            report.videos.append(end)
            report.frames += end.decoded
            if on_video:
                on_video(end)
    _report_missing(report, targets, "failed on the Ray cluster after retries", on_video)
    return report
