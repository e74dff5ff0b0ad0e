"""Scale-out: one worker process per GPU (or several per GPU) on one host, and Ray clusters.

Inputs, and keyframe-aligned parts of long files, are handed out dynamically by the parent (a
worker gets the next task when it says it is ready), so fast and slow workers stay busy; parts are
written to part files and joined in order once all are complete. Every task runs the same engine as
a single-GPU run, so outputs are identical. Workers are processes, not threads: no GIL is shared.
Each worker has a pipe of its own to the parent and a task queue only it reads: nothing is shared
between workers, so one killed mid-message cannot hold the others' (a shared queue's lock stays
held by a process killed while holding it), and the task a dead worker was running is reported as
failed with its exit code.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import os
import pickle
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Callable

import torch

from .config import Config
from .engine import RunReport, VideoEnd
from .environ import as_child, child_environ
from .errors import VidpipeError
from .sinks import INCOMPLETE, concat_outputs
from .inputs import is_stream_url, log_to_stderr
from .models import Registration, registrations, replay
from .sources import scan_packets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assignment:
    """Where one worker process runs: ``device`` as the worker names it (``cuda:0`` or ``cpu``),
    ``visible`` the ``CUDA_VISIBLE_DEVICES`` it is started with (a GPU's UUID; "" hides every GPU),
    and ``label`` as messages name it."""

    device: str
    visible: str
    label: str


def gpu_uuids() -> list[str]:
    """UUIDs of the host's GPUs in ``nvidia-smi``'s order (PCI bus), read through NVML: this
    process does not start CUDA to learn them."""
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return []  # no driver: no GPU
        try:
            uuids = [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
                     for i in range(pynvml.nvmlDeviceGetCount())]
            return [u.decode() if isinstance(u, bytes) else u for u in uuids]
        finally:
            pynvml.nvmlShutdown()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def visible_gpus() -> list[str]:
    """UUIDs of the GPUs this process may use: all of them, or those its own
    ``CUDA_VISIBLE_DEVICES`` names (indices, UUIDs or their prefixes; CUDA stops at the first
    entry that names no GPU, and so does this)."""
    uuids = gpu_uuids()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return uuids
    out = []
    for item in (x.strip() for x in env.split(",")):
        if item.isdigit() and int(item) < len(uuids):
            out.append(uuids[int(item)])
        elif item and len(match := [u for u in uuids if u.startswith(item)]) == 1:
            out.append(match[0])
        else:
            break
    return out


def parse_devices(spec: str) -> list[Assignment]:
    """``all`` -> every visible GPU (``cpu`` without one); ``auto`` -> the first GPU (or ``cpu``);
    ``0,1`` or ``cuda:0,cuda:1`` -> those
    GPUs, numbered as ``nvidia-smi`` numbers them (within ``CUDA_VISIBLE_DEVICES`` when it is set);
    ``cpu`` -> a CPU worker. Each GPU worker will see its GPU, by UUID, as its only one."""
    gpus = visible_gpus()
    if spec.strip() in ("all", "auto"):
        chosen = gpus if spec.strip() == "all" else gpus[:1]
        return [Assignment("cuda:0", u, u) for u in chosen] or [Assignment("cpu", "", "cpu")]
    out = []
    for part in (x.strip() for x in spec.split(",")):
        index = part.removeprefix("cuda:") if part.startswith("cuda:") else part
        if part == "cpu":
            out.append(Assignment("cpu", "", "cpu"))
        elif part == "cuda" or index.isdigit():
            i = 0 if part == "cuda" else int(index)
            if i >= len(gpus):
                raise VidpipeError(f"--devices {spec}: no GPU {i} ({len(gpus)} visible)")
            out.append(Assignment("cuda:0", gpus[i], f"cuda:{i} ({gpus[i]})"))
        else:
            raise VidpipeError(f"--devices {spec}: {part!r} is not all, cpu, cuda, N or cuda:N")
    return out


def start_worker(ctx, assignment: Assignment, target: Callable, args: tuple, model: str) -> BaseProcess:
    """Start ``target(*args)`` in a new process whose environment names only ``assignment``'s GPU
    from its first instruction, before any import could start CUDA (CUDA reads
    ``CUDA_VISIBLE_DEVICES`` once, when it starts), knowing ``model`` as this process does (a model
    registered here is registered there)."""
    registered = registrations(model)
    proc = ctx.Process(target=_with_models, args=(registered, target, args), daemon=True)
    with child_environ({"CUDA_VISIBLE_DEVICES": assignment.visible}):
        try:
            proc.start()
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            if registered:
                raise VidpipeError(f"--model {model}: its registration cannot reach worker processes ({e}): "
                                   "register a module-level function, not a lambda, or run one process "
                                   "(--procs-per-device 1)") from None
            raise
    return proc


def _with_models(registered: list[Registration], target: Callable, args: tuple) -> None:
    replay(registered)
    target(*args)


def frames_reporter(results, worker: int, device: torch.device) -> Callable[[int], None]:
    """A worker's ``on_frames``: each batch's frame count to the parent as ``("frames", worker, n)``,
    after a first ``("device", worker, uuid)``: the GPU that computed the first batch, as CUDA names it
    in this process (``cpu`` on the CPU)."""
    told = False

    def on_frames(n: int) -> None:
        nonlocal told
        if not told:
            told = True
            uuid = f"GPU-{torch.cuda.get_device_properties(device).uuid}" if device.type == "cuda" else "cpu"
            results.put(("device", worker, uuid))
        results.put(("frames", worker, n))

    return on_frames


class Sender:
    """A worker's end of its pipe to the parent (``put(message)``), shared by the worker's threads."""

    def __init__(self, connection: Connection) -> None:
        self._connection, self._lock = connection, threading.Lock()

    def put(self, message: tuple) -> None:
        with self._lock:
            self._connection.send(message)


class Inbox:
    """The parent's side of the workers' pipes, one per worker, never a queue they share (a worker
    killed while it put a message on a shared queue left its lock held, and the other workers'
    messages waited on it for ever). Start the workers with the senders of :attr:`pipes`, then
    :meth:`started`. Every message goes to ``on_message``; the parent's side of
    :func:`frames_reporter` is here (``device`` logged, ``frames`` counted into ``report`` and passed
    to ``on_frames``), the rest is the caller's."""

    def __init__(self, ctx, workers: list[Assignment], report: RunReport,
                 on_frames: Callable[[int], None] | None = None,
                 on_message: Callable[[str, int, object], None] | None = None) -> None:
        self.workers, self.report, self.on_frames, self.on_message = workers, report, on_frames, on_message
        self.pipes = [ctx.Pipe(duplex=False) for _ in workers]
        self.readers: list[Connection] = [reader for reader, _ in self.pipes]
        self.procs: list[BaseProcess] = []

    def started(self, procs: list[BaseProcess]) -> None:
        self.procs = procs
        for _, sender in self.pipes:
            sender.close()  # the workers hold theirs: a dead worker's pipe then reads as ended

    def messages(self, finished: set[int], timeout: float = 1.0) -> list[tuple]:
        """The messages that came within ``timeout``, then a ``("dead", worker, "exit code N")`` for
        each worker not in ``finished`` that is gone without a word (killed, crashed; one that ends
        well exits 0 after its last message): looked for every time, since the others' messages
        keep coming. ``device`` and ``frames`` messages are handled here and left out."""
        got = []
        for reader in wait(self.readers, timeout=timeout):
            try:
                got.append(reader.recv())
            except (EOFError, OSError, pickle.UnpicklingError):  # its worker is gone (mid-message, maybe)
                self.readers.remove(reader)
        got += [("dead", i, f"exit code {p.exitcode}") for i, p in enumerate(self.procs)
                if i not in finished and not p.is_alive() and p.exitcode]
        rest = []
        for kind, worker, payload in got:
            if self.on_message:
                self.on_message(kind, worker, payload)
            if kind == "device":
                log.info("worker %d (%s) computes on %s", worker, self.workers[worker].label, payload)
            elif kind == "frames":
                self.report.frames += payload
                if self.on_frames:
                    self.on_frames(payload)
            else:
                rest.append((kind, worker, payload))
        return rest

    def close(self, grace: float) -> None:
        """Each worker given ``grace`` s to end on its own (its outputs finished), then terminated."""
        for p in self.procs:
            p.join(timeout=grace)
            if p.is_alive():
                p.terminate()


def _detect_file(det, path: str, target: str, fmt: str, on_frames: Callable[[int], None] | None = None,
                 frames: tuple[int, int] | None = None) -> list[VideoEnd]:
    from .engine import run
    from .sinks import open_sink

    report = run(det, [path], lambda i: open_sink(fmt, target, i.path, i.width, i.height, det.classes,
                                                  det.config.track),
                 on_frames=on_frames,
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
            # A part of a file whose seeks are not exact (MPEG-TS, raw streams) decodes from the file's
            # start: one task.
            n = len(index.times) if index and index.exact_seeks else 0
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


def _worker(worker: int, device: str, config: dict, fmt: str, tasks: mp.Queue, pipe: Connection,
            parent: int) -> None:
    as_child(parent)
    from .detector import Detector

    results = Sender(pipe)
    log_to_stderr()
    # What this process was given, read after its imports and its target were unpickled.
    results.put(("hello", worker, {"pid": os.getpid(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                   "cuda_devices": torch.cuda.device_count()}))
    try:
        det = Detector(Config(**{**config, "device": device}))
    except Exception as e:  # a worker that cannot start leaves its share to the others
        results.put(("dead", worker, f"{type(e).__name__}: {e}"))
        return
    on_frames = frames_reporter(results, worker, det.device)
    results.put(("ready", worker, None))
    while (task := tasks.get()) is not None:
        path, target, frames, part, parts = task
        try:
            ends = _detect_file(det, path, target, fmt, frames=frames, on_frames=on_frames)
        except Exception as e:
            ends = [VideoEnd(path, error=f"{path}: worker on {device} failed ({type(e).__name__}: {e})", fatal=True)]
        for end in ends:
            results.put(("video", worker, (asdict(end), target, part, parts)))
        results.put(("ready", worker, None))
    results.put(("done", worker, None))


def _merge_parts(fmt: str, target: Path, parts: list[tuple[VideoEnd, str]]) -> VideoEnd:
    """One VideoEnd for a split file; its part outputs joined into ``target`` when all are whole."""
    ends = [e for e, _ in parts]
    end = VideoEnd(ends[0].path, decoded=sum(e.decoded for e in ends), expected=sum(e.expected for e in ends),
                   corrupt_packets=sum(e.corrupt_packets for e in ends),
                   error=next((e.error for e in ends if e.error), None), fatal=any(e.fatal for e in ends))
    files = [Path(p) for _, p in parts]
    if end.ok:  # as for a file run whole: a final output only when every part was complete
        try:
            concat_outputs(fmt, files, target)
        except OSError as e:
            end.error, end.fatal = f"{end.path}: cannot write {target} ({e.strerror or e})", True
    for f in files:
        f.unlink(missing_ok=True)
        f.with_name(f.name + INCOMPLETE).unlink(missing_ok=True)
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


def run_processes(config: Config, targets: dict[str, Path], fmt: str, devices: list[Assignment], per_device: int = 1,
                  on_frames: Callable[[int], None] | None = None,
                  on_video: Callable[[VideoEnd], None] | None = None, split_frames: int = 4096,
                  on_message: Callable[[str, int, object], None] | None = None) -> RunReport:
    """Detect every input of ``targets`` with ``per_device`` worker processes on each device;
    files of at least 2 x ``split_frames`` frames are shared out in parts and joined back.
    ``on_message(kind, worker, payload)`` sees every worker message (e.g. a :class:`BusyWindow`):
    ``hello`` (pid, ``CUDA_VISIBLE_DEVICES`` and CUDA's device count as the worker sees them after
    its imports), ``device`` (the UUID of the GPU that computed its first batch, or ``cpu``),
    ``frames``, ``video``, ``done`` and ``dead``."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    workers = [d for d in devices for _ in range(per_device)]
    # A tracked file stays whole: its tracks run through it in one process, in frame order.
    todo = collections.deque(plan_tasks(targets, 1 if config.track else len(workers), split_frames))
    report, finished = RunReport(), set()
    queues, inbox = [ctx.Queue() for _ in workers], Inbox(ctx, workers, report, on_frames, on_message)
    cfg = {k: v for k, v in config.asdict().items() if k != "device"}
    inbox.started([start_worker(ctx, d, _worker, (i, d.device, cfg, fmt, queues[i], inbox.pipes[i][1], os.getpid()),
                                config.model)
                   for i, d in enumerate(workers)])
    running: dict[int, tuple] = {}  # worker -> the task it runs, until its outcome came
    pending: dict[str, list[tuple[int, VideoEnd, str]]] = {}

    def outcome(end: VideoEnd, part_target: str, part: int, parts: int) -> None:
        if parts > 1:
            done = pending.setdefault(end.path, [])
            done.append((part, end, part_target))
            if len(done) < parts:
                return
            end = _merge_parts(fmt, targets[end.path], [(e, t) for _, e, t in sorted(done, key=lambda x: x[0])])
        report.videos.append(end)
        if on_video:
            on_video(end)

    try:
        while len(finished) < len(workers):
            for kind, worker, payload in inbox.messages(finished):
                if kind == "ready":
                    running.pop(worker, None)  # its last task's outcomes came before this
                    if todo:
                        running[worker] = todo.popleft()
                    queues[worker].put(running.get(worker))  # None: no work left, the worker ends
                elif kind == "video":
                    running.pop(worker, None)
                    fields, part_target, part, parts = payload
                    outcome(VideoEnd(**fields), part_target, part, parts)
                elif kind in ("done", "dead") and worker not in finished:
                    finished.add(worker)
                    if kind == "dead":
                        log.error("worker %d on %s failed: %s", worker, workers[worker].label, payload)
                    if (task := running.pop(worker, None)) is not None:
                        path, part_target, _, part, parts = task
                        outcome(VideoEnd(path, error=f"{path}: its worker on {workers[worker].label} died "
                                               f"while running it ({payload})", fatal=True), part_target, part, parts)
    finally:
        inbox.close(grace=5)
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
        def __init__(self, cfg: dict, registered: list[Registration]) -> None:
            from .detector import Detector

            replay(registered)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.det = Detector(Config(**{**cfg, "device": device}))

        def detect(self, path: str, target: str) -> list[dict]:
            return [asdict(e) for e in _detect_file(self.det, path, target, fmt)]

    cfg, registered = {k: v for k, v in config.asdict().items() if k != "device"}, registrations(config.model)
    if gpus:
        actors = [DetectActor.options(num_gpus=1).remote(cfg, registered) for _ in range(gpus)]
    else:
        slots = max(1, min(len(targets), int(ray.cluster_resources().get("CPU", 1)) // 2))
        actors = [DetectActor.options(num_cpus=1).remote(cfg, registered) for _ in range(slots)]
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
