"""Command line: ``vidpipe detect``, ``vidpipe bench``, ``vidpipe ladder``.

Exit codes: 0 success; 1 some inputs failed (each named on one line and in the summary); 2 bad
usage or input; 130 interrupted (completed outputs kept, open ones left as ``*.partial``).

Arguments, inputs, outputs and ``--resume`` are checked before torch, PyAV or the model load:
``--help`` and a bad command answer at once.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from . import __version__
from .config import ADVANCED, DEVICE, GROUPS, IO, LIVE, Check, Config, at_least, flags_of, within
from .errors import VidpipeError
from .inputs import (EXTENSIONS, check_input, expand_inputs, is_stream_url, log_to_stderr, output_paths, redact,
                     source_name)
from .outputs import Planned, check_planned, covers, record_path, totals_path, unwritable, write_record
from .timeline import save as save_timeline
from .timeline import stamp

log = logging.getLogger("vidpipe")


def _int(low: int):
    """An argparse type: an integer >= ``low`` (for options that are not Config fields)."""
    return _typed(int, "a whole number", at_least(low))


def _typed(kind: type, expected: str, check: Check | None):
    """An argparse type: ``kind(text)``, then the setting's own ``check``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if check is not None:
            try:
                check(value)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return value
    parse.__name__ = expected
    return parse


def _procs(text: str) -> int | str:
    """--procs-per-device: ``auto`` or a whole number >= 1."""
    return "auto" if text == "auto" else _int(1)(text)


def _service_flag(a: argparse.Namespace) -> str | None:
    """The first given option that publishes what a run sees (--mqtt, --metrics, --serve), or None."""
    return next((flag for flag, on in (("--mqtt", a.mqtt), ("--metrics", a.metrics), ("--serve", a.serve)) if on),
                None)


class _Service:
    """What a run publishes beside its outputs (``--mqtt``, ``--metrics``, ``--serve``): the
    :class:`~vidpipe.monitor.Monitor` the engine reports to, and the servers it feeds, closed when the
    ``with`` block the service opens ends."""

    def __init__(self, a: argparse.Namespace, sources=None) -> None:
        from .monitor import Monitor

        self.parts: list = []
        self.monitor = None
        if _service_flag(a) is None:
            return
        events = metrics = None
        if a.mqtt:
            from .events import Broker, Events

            events = Events(Broker.parse(a.mqtt))
            self.parts.append(events)
        if a.metrics:
            from .metrics import Metrics, listen_address

            metrics = Metrics(*listen_address(a.metrics, "--metrics"))
            self.parts.append(metrics)
            if events is not None:
                metrics.events_dropped.set_function(lambda: events.dropped)
        self.monitor = Monitor(source_name, events, metrics, a.mqtt_detections, previews=bool(a.serve))
        if a.serve:
            from .metrics import listen_address
            from .view import View

            monitor = self.monitor

            def remove(name: str) -> bool:
                source = monitor.source_of(name)
                if source is None or source not in sources.snapshot()[0]:
                    return False
                sources.remove(source)
                return True

            view = View(*listen_address(a.serve, "--serve"), monitor.cameras, monitor.jpeg,
                        add=None if sources is None else sources.add, remove=None if sources is None else remove)
            self.parts.insert(0, view)
            print(f"vidpipe: live view at {view.url} (token to add or remove cameras: {view.token})",
                  file=sys.stderr, flush=True)

    def __enter__(self) -> _Service:
        return self

    def __exit__(self, *exc) -> None:
        for part in self.parts:
            part.close()


def _one_process_flag(a: argparse.Namespace) -> str | None:
    """The given option that runs in one process only (None: none given)."""
    return "--save-video" if a.save_video else None


def _processes(a: argparse.Namespace, cfg: Config, live: int) -> int:
    """Worker processes per device for a run with ``live`` live sources: the given number, or for
    ``auto`` as many as the live sources need on this machine (one for files, and for --save-video,
    which runs in one process)."""
    if a.procs_per_device != "auto":
        return a.procs_per_device
    if not live or _one_process_flag(a):
        return 1
    from .livescale import processes_for

    return processes_for(live, cfg.device)


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1 or max(counts) > 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole numbers from 1 to 1024 separated by commas, "
                                         "e.g. 8,16,32")
    return counts


def _class_ids(text: str) -> tuple[int, ...]:
    parts = text.split(",")
    if not all(p.strip().isascii() and p.strip().isdigit() for p in parts):  # int() also reads "٣" and " 3 "
        raise ValueError(text)
    return tuple(int(p) for p in parts)


# How text becomes a value, by the field's annotation (Config's fields are ints, floats, strings,
# flags and one list of class ids).
_KINDS = {"int": (int, "a whole number"), "float": (float, "a number"),
          "tuple[int, ...]": (_class_ids, "class ids like 0,2,5")}


def option_groups(p: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """``p``'s option groups in the order --help shows them (config.GROUPS): everyday ones first."""
    return {name: p.add_argument_group(name) for name in GROUPS}


def add_config_args(p: argparse.ArgumentParser, groups: dict[str, argparse._ArgumentGroup] | None = None) -> None:
    """One option per :class:`~vidpipe.config.Config` field, generated from its metadata (flags,
    help, group, check): every switch has a flag, described once."""
    groups = groups or option_groups(p)
    for f in fields(Config):
        meta = f.metadata
        group = groups[meta["group"]]
        if f.type == "bool":
            group.add_argument(*flags_of(f), dest=f.name, action="store_false" if f.default else "store_true",
                               help=meta["help"])
            continue
        kind, expected = _KINDS.get(f.type.removesuffix(" | None"), (str, "text"))
        check = meta["check"]
        if f.type == "tuple[str, ...]":  # a repeated option, each value checked alone
            group.add_argument(*flags_of(f), dest=f.name, action="append", default=None,
                               type=_typed(str, "text", lambda v, check=check: check((v,))),
                               metavar=meta["metavar"], help=meta["help"])
            continue
        default = "" if f.default is None else f" (default {f.default})"
        group.add_argument(*flags_of(f), dest=f.name, default=f.default,
                           type=_typed(kind, expected, check), choices=getattr(check, "choices", None),
                           metavar=meta["metavar"], help=meta["help"] + default)


def config_from_args(a: argparse.Namespace) -> Config:
    repeated = {f.name for f in fields(Config) if f.type == "tuple[str, ...]"}  # None when never given
    return Config(**{f.name: tuple(getattr(a, f.name) or ()) if f.name in repeated else getattr(a, f.name)
                     for f in fields(Config)})


def _add_detect_parser(sub) -> None:
    d = sub.add_parser("detect", help="detect objects in every frame of videos",
                       usage="vidpipe detect INPUT [INPUT ...] -o OUTPUT [options]\n"
                             "       vidpipe detect --sources FILE -o DIR [options]",
                       description="Detect objects in every frame. INPUT: files, directories (searched "
                                   "recursively), globs or rtsp/http URLs. Everyday options first; the last "
                                   "group tunes speed and benchmarks.")
    g = option_groups(d)
    d.add_argument("inputs", nargs="*", metavar="INPUT", help="video files, directories, globs or stream URLs")
    io = g[IO]
    io.add_argument("-o", "--output", required=True,
                    help="output file (one input) or directory (several inputs, or a path ending in /): "
                         "in/a/clip.mp4 found under INPUT in/ is written to OUTPUT/a/clip.jsonl")
    io.add_argument("--format", choices=sorted(EXTENSIONS), default="jsonl",
                    help="jsonl: a JSON object per frame; coco: a COCO results list; parquet: a row per detection "
                         "(docs: Outputs)")
    io.add_argument("--resume", action="store_true",
                    help="skip inputs whose output already holds them as this run would write them (the record "
                         "beside each output: same input, unchanged, same settings, finished); redo the others")
    io.add_argument("--overwrite", action="store_true",
                    help="replace existing files at the output paths that are not vidpipe's earlier outputs of "
                         "the same inputs (without it such a file stops the run before any work)")
    io.add_argument("--allow-failures", action="store_true",
                    help="exit 0 even when some inputs failed (they are still listed)")
    io.add_argument("--save-video", default=None, metavar="DIR",
                    help="also write each input as an MP4 under DIR (named as its output, .mp4) with boxes, class "
                         "names, scores, track ids, lines and zones drawn (on the GPU; encoded with libx264 on the "
                         "CPU); a live source as consecutive files, NAME-<first frame>.mp4")
    io.add_argument("--video-segment", type=_typed(float, "seconds", within(0.1, 86400.0)), default=300.0,
                    metavar="SECONDS",
                    help="with --save-video, a live source's video is cut into files of this much of the stream "
                         "(default: %(default)g)")
    live = g[LIVE]
    live.add_argument("--sources", default=None, metavar="FILE",
                      help="instead of INPUTs: a file of sources, one per line, re-read when it changes (a source "
                           "added starts within a second, one removed is closed and its output finished); runs "
                           "until Ctrl-C, which finishes every output. -o is a directory")
    live.add_argument("--mqtt", default=None, metavar="mqtt://[USER:PASS@]HOST[:PORT]/PREFIX",
                      help="publish events to an MQTT broker (QoS 1): per source, line crossings, zone counts when "
                           "they change, its state and a status every 5 s, on PREFIX/<source>/<kind> (docs: Events, "
                           "metrics and the live view); a broker that is down never stalls detection")
    live.add_argument("--mqtt-detections", action="store_true",
                      help="with --mqtt, also every frame's detections (its JSON Lines object) on PREFIX/<source>/"
                           "detections")
    live.add_argument("--metrics", default=None, metavar="[HOST:]PORT",
                      help="serve Prometheus metrics on this port (127.0.0.1 unless HOST is given): frames, drops, "
                           "latency, reconnects and decode errors per source, queue depths, GPU and NVDEC use")
    live.add_argument("--serve", default=None, metavar="[HOST:]PORT",
                      help="serve a live page of the cameras (127.0.0.1 unless HOST is given): each one's latest "
                           "annotated frame and figures; with --sources, cameras can be added and removed there "
                           "with the token printed at start")
    out = g[DEVICE]
    out.add_argument("--devices", default=None, metavar="all|0,1,...",
                     help="one worker process per listed GPU (numbered as nvidia-smi numbers them), inputs handed "
                          "out dynamically; 'cpu' entries run CPU workers")
    out.add_argument("--procs-per-device", type=_procs, default="auto", metavar="N|auto",
                     help="worker processes per device: files are handed out to them as they finish; live sources "
                          "(streams, --realtime or --loop files, --sources) are spread over them, each process "
                          "batching its own; auto (the default): one for files, and for live sources as many as "
                          "their number needs (docs: Live cameras)")
    out.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="run on a Ray cluster (ADDRESS, or a local one when omitted); -o must be shared storage")
    g[ADVANCED].add_argument("--split-frames", type=_int(1), default=4096, metavar="N",
                             help="with several workers, share out files of at least 2N frames in parts of >= N "
                                  "frames")
    add_config_args(d, g)


def _add_bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="measure decode and model ceilings and end-to-end throughput",
                       usage="vidpipe bench [VIDEO ...] [--suite SUITE] [options]",
                       description="Ceilings and end-to-end throughput measured in one run on one device.")
    b.add_argument("inputs", nargs="*", metavar="VIDEO", help="videos to bench (or --synthetic-1080p)")
    b.add_argument("--suite", choices=["pipeline", "postprocess", "model", "scale", "peers", "startup", "live"],
                   default="pipeline",
                   help="pipeline: ceilings and end to end per input; postprocess: ssd_decode vs the per-class loop; "
                        "model: model-only variants; scale: one GPU vs all GPUs; peers: the model's own loop "
                        "beside vidpipe (Ultralytics' predict, torchvision's model(images)); startup: the "
                        "one-command wall time in fresh processes; "
                        "live: K copies of each input as live cameras on the GPU, in one process or --procs-per-device")
    b.add_argument("--synthetic-1080p", type=_int(0), default=0, metavar="FRAMES",
                   help="also bench a generated 1920x1080 H.264 clip of about FRAMES frames (240 encoded, "
                        "then repeated without re-encoding)")
    b.add_argument("--long", type=_int(0), default=0, metavar="N",
                   help="also report peak memory for each input repeated N times")
    b.add_argument("--repeats", type=_int(1), default=5, metavar="N",
                   help="timed runs per figure; tables give the median and the spread (default 5)")
    b.add_argument("--scale-frames", type=_int(1), default=16000, metavar="N",
                   help="--suite scale: frames in each corpus (copies of the input)")
    b.add_argument("--live-streams", type=_counts, default=(8, 16, 32, 48, 64, 80, 96), metavar="K,K,...",
                   help="--suite live: stream counts tried in turn until one does not hold")
    b.add_argument("--live-seconds", type=_typed(float, "seconds", within(1.0, 86400.0)), default=20.0, metavar="S",
                   help="--suite live: how long each count runs (default 20)")
    b.add_argument("--procs-per-device", type=_procs, default=1, metavar="N|auto",
                   help="--suite live: spread the streams over N processes on the GPU (default 1; auto: as "
                        "detect picks them for each number of streams)")
    b.add_argument("--live-profile", action="store_true",
                   help="--suite live: where each thread group of a one-process run spends its time (places "
                        "sampled every 5 ms, cores busy), printed under the table")
    b.add_argument("--live-cameras", choices=["file", "http"], default="file",
                   help="--suite live: the stand-in cameras: file: the input read at its frame rate "
                        "(--realtime --loop; NVDEC's file decoder); http: the input served over loopback "
                        "HTTP as live MPEG-TS at its frame rate by another process (a camera's path: "
                        "demuxed by FFmpeg, NVDEC packet by packet)")
    b.add_argument("--results", default=None, metavar="FILE", help="append the tables to this Markdown file")
    for flag, metavar, what in (("--mqtt", "URL", "publish events to this MQTT broker"),
                                ("--metrics", "[HOST:]PORT", "serve Prometheus metrics"),
                                ("--serve", "[HOST:]PORT", "serve the live view")):
        b.add_argument(flag, default=None, metavar=metavar,
                       help=f"--suite live: {what} while the cameras run, as detect does (what it costs them)")
    b.set_defaults(mqtt_detections=False)
    add_config_args(b)


def _add_ladder_parser(sub) -> None:
    p = sub.add_parser("ladder", help="run the optimisation ladder and print the table",
                       description="The write-up's optimisation steps as configurations of the one pipeline.")
    p.add_argument("video", nargs="?", default=None, help="input (default: shared/media/in.mp4 or a generated clip)")
    p.add_argument("--weights", default="random",
                   help="checkpoint path, or 'random' (default): calibrated random weights")
    p.add_argument("--random-candidates", type=_int(0), default=2000, metavar="N",
                   help="with --weights random: candidates per frame to calibrate for (default 2000)")
    p.add_argument("--slow-frames", type=_int(1), default=32, metavar="N",
                   help="frames timed for the slow rungs 0-1")
    p.add_argument("--max-frames", type=_int(1), default=None, metavar="N", help="frames timed for the other rungs")
    p.add_argument("--compare-frames", type=_int(1), default=32, metavar="N",
                   help="leading frames whose detections are compared with rung 2")
    p.add_argument("--scale-repeat", type=_int(1), default=40, metavar="N",
                   help="rung 8 runs on the input repeated N times, so every GPU gets a real share (a few "
                        "seconds: worker start-up, seconds apart, must not eat the window in which all are busy)")
    p.add_argument("--gil", action="store_true", help="measure GIL load per rung")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="write a PyTorch profiler trace (Chrome/Perfetto JSON) of the last rung's first batches")
    p.add_argument("--out", default=None, metavar="PREFIX", help="write PREFIX.json and PREFIX.md")


class _Parser(argparse.ArgumentParser):
    """Flags only as spelled (``--weight`` is not ``--weights``), and a usage error in one line naming
    what is wrong, without a usage dump."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    flags: set[str] = set()  # every option of every command, for "did you mean"

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: ") and (given := message.split(": ", 1)[1].split()[0]):
            close = difflib.get_close_matches(given.split("=")[0], sorted(self.flags), n=1, cutoff=0.75)
            message = f"unknown option {given}" + (f" (did you mean {close[0]}?)" if close else "")
        where = "vidpipe " + (self.prog.split()[-1] + " " if self.prog != "vidpipe" else "")
        self.exit(2, f"vidpipe: error: {redact(message)} (see {where}--help)\n")


def cmd_check(a: argparse.Namespace) -> int:
    """``vidpipe check``: what is installed and working, a line each; exit 1 if torch cannot run vidpipe."""
    from .installed import report

    lines = report()
    width = max(len(what) for what, _, _ in lines)
    for what, ok, details in lines:
        print(f"{'ok ' if ok else '-- '} {what:<{width}}  {details}")
    return 0 if all(ok for what, ok, _ in lines if what == "torch + torchvision") else 1


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vidpipe", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"vidpipe {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is chosen and why")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_detect_parser(sub)
    _add_bench_parser(sub)
    _add_ladder_parser(sub)
    sub.add_parser("check", help="say what is installed and working: torch, the GPU, NVDEC, extras",
                   description="What vidpipe finds on this machine, a line each; a torch and torchvision that do "
                               "not work together are named with the command that installs a matching pair.")
    _Parser.flags = {f for command in sub.choices.values() for a in command._actions for f in a.option_strings}
    return p


class Progress:
    """Frames done, for a person: a bar on a terminal (log lines print above it, not over it),
    otherwise a line every ``every`` seconds with frames, frames/s and the time left, which a CI
    log or ``nohup.out`` shows while the run goes on."""

    def __init__(self, total: int, every: float = 5.0) -> None:
        self.total, self.every, self.done = total, every, 0
        self.t0 = self.last = time.perf_counter()
        self._stack = ExitStack()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=total or None, unit="frame", dynamic_ncols=True, smoothing=0.1)
            self._stack.enter_context(logging_redirect_tqdm())

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            fps = self.done / (now - self.t0)
            left = f", {(self.total - self.done) / fps:.0f} s left" if self.total > self.done and fps else ""
            of = f" of {self.total:,}" if self.total else ""
            print(f"vidpipe: {self.done:,}{of} frames, {fps:,.1f} frames/s{left}", file=sys.stderr, flush=True)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self._stack.close()


def _expected_frames(inputs: list[str], max_frames: int | None) -> int:
    """Frames the headers promise (for the progress ETA); unknown counts add nothing."""
    from .sources import probe

    total = 0
    for item in inputs:
        try:
            n = probe(item).num_frames if not is_stream_url(item) else 0
        except VidpipeError:
            continue
        total += min(n, max_frames) if max_frames else n
    return total


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _quit_now(signum, frame):
    # Before any output is open there is nothing to keep: leave at once. (A KeyboardInterrupt
    # raised inside the import machinery can be swallowed as "Exception ignored", and the run
    # would go on.)
    print("vidpipe: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


def _interruptible() -> None:
    """From here on outputs are open: Ctrl-C and SIGTERM unwind, so complete outputs are kept."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)


def _close_on_signals(sources) -> None:
    """Ctrl-C or SIGTERM closes ``sources`` (the run finishes every output and ends); a second one
    interrupts."""
    def close(signum, frame) -> None:
        sources.close()
        signal.signal(signum, _raise_interrupt)

    _interruptible()
    signal.signal(signal.SIGINT, close)
    signal.signal(signal.SIGTERM, close)


def _extras(a: argparse.Namespace, cfg: Config) -> None:
    """Optional packages the command needs, checked before any slow work (one line each, not a
    traceback once the model has loaded)."""
    from importlib.util import find_spec

    needs = {"pyarrow": a.format == "parquet" and '--format parquet needs pyarrow: pip install "vidpipe[parquet]"',
             "ray": getattr(a, "ray", None) is not None and '--ray needs Ray: pip install "vidpipe[ray]"',
             "supervision": bool(cfg.lines or cfg.zones) and '--line and --zone need supervision: '
                                                             'pip install "vidpipe[track]"',
             "ultralytics": Path(cfg.model).suffix.lower() in (".pt", ".yaml", ".yml")
                            and f'--model {cfg.model} needs Ultralytics: pip install "vidpipe[yolo]"',
             "paho": getattr(a, "mqtt", None) and '--mqtt needs paho-mqtt: pip install "vidpipe[service]"',
             "prometheus_client": getattr(a, "metrics", None)
                                  and '--metrics needs prometheus-client: pip install "vidpipe[service]"',
             "flask": getattr(a, "serve", None) and '--serve needs Flask: pip install "vidpipe[service]"',
             "waitress": getattr(a, "serve", None) and '--serve needs waitress: pip install "vidpipe[service]"'}
    for module, message in needs.items():
        if message and find_spec(module) is None:
            raise VidpipeError(message)
    if getattr(a, "mqtt", None):
        from .events import Broker

        Broker.parse(a.mqtt)
    if getattr(a, "mqtt_detections", False) and not a.mqtt:
        raise VidpipeError("--mqtt-detections publishes to the broker of --mqtt: give --mqtt too")
    for flag in ("metrics", "serve"):
        if getattr(a, flag, None):
            from .metrics import listen_address

            listen_address(getattr(a, flag), f"--{flag}")
    if cfg.track:
        from .track import check_installed

        check_installed()


def _planned(a: argparse.Namespace, cfg: Config, found, targets: dict[str, Path]) -> dict[str, Planned]:
    """Every file each input's run writes (detections, totals, annotated video)."""
    return {i.path: Planned(targets[i.path], totals_path(targets[i.path]) if cfg.lines or cfg.zones else None,
                            Path(a.save_video) / f"{i.name}.mp4" if a.save_video else None) for i in found}


def cmd_detect(a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if a.sources is not None:
        if a.inputs:
            raise VidpipeError("give INPUTs or --sources FILE, not both")
        return _detect_sources(a, t0)
    if not a.inputs:
        raise VidpipeError("nothing to detect: give INPUTs (files, directories, globs, URLs) or --sources FILE")
    cfg = config_from_args(a)
    _extras(a, cfg)
    found = expand_inputs(a.inputs)
    plans = _planned(a, cfg, found, output_paths(found, a.output, a.format))
    check_planned(plans, a.overwrite)
    inputs = [i.path for i in found]
    live = {i for i in inputs if cfg.realtime or cfg.loop or is_stream_url(i)}  # outputs with no end to record
    early: dict[str, str] = {}  # inputs that fail before any work, and why
    for path in inputs:
        reason = check_input(path)
        if reason is None and (why := next(filter(None, map(unwritable, plans[path].files())), None)):
            reason = f"{path}: {why}"
        if reason is not None:
            early[path] = reason
            print(f"vidpipe: error: {redact(reason)}", file=sys.stderr)
    todo = [i for i in inputs if i not in early]
    settings = {**cfg.output_settings(), "format": a.format, "save_video": bool(a.save_video)}
    if a.resume:
        done = [i for i in todo if i not in live and covers(plans[i], i, settings)]
        if done:
            log.warning("--resume: %d of %d inputs already complete", len(done), len(inputs))
        todo = [i for i in todo if i not in done]
    for path in [i for i in todo if i not in live]:
        try:  # from here these files are this run's: a crash leaves them to --resume to redo
            write_record(plans[path], path, settings, complete=False)
        except OSError as e:
            early[path] = f"{path}: cannot write {record_path(plans[path].detections)} ({e.strerror or e})"
            print(f"vidpipe: error: {redact(early[path])}", file=sys.stderr)
    todo = [i for i in todo if i not in early]
    if not todo:
        failed = f"; {len(early)} failed: " + ", ".join(map(redact, early)) if early else ""
        print(f"vidpipe: nothing left to do ({len(inputs) - len(early)} of {len(inputs)} inputs complete){failed}",
              file=sys.stderr)
        return 1 if early and not a.allow_failures else 0
    planned = _expected_frames(todo, a.max_frames)
    cfg = cfg.for_run(None if any(is_stream_url(i) for i in todo) else planned)
    progress = Progress(planned)

    def on_video(end) -> None:
        if end.error:
            progress.write(f"vidpipe: error: {redact(end.error)}")
        elif end.analytics:
            progress.write(f"vidpipe: {redact(end.path)}: {json.dumps(end.analytics)}")
        if end.path not in plans or end.path in live:
            return
        if not end.ok:
            if not plans[end.path].detections.exists():  # nothing of it to own: no record left behind
                record_path(plans[end.path].detections).unlink(missing_ok=True)
            return
        try:
            write_record(plans[end.path], end.path, settings, complete=True)
        except OSError as e:  # the output is whole; without its record --resume redoes it
            progress.write(f"vidpipe: warning: {redact(end.path)}: its output is complete but its record "
                           f"could not be written ({e.strerror or e}); --resume will run it again")

    try:
        videos = {i: plans[i].video for i in todo} if a.save_video else None
        report = _detect(a, cfg, {i: plans[i].detections for i in todo}, progress.update, on_video, videos)
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    failed = list(early) + [v.path for v in report.failed]
    dropped = sum(v.dropped for v in report.videos)
    print(f"vidpipe: {report.frames} frames from {len(inputs) - len(failed)} of {len(inputs)} inputs in "
          f"{seconds:.2f} s: {report.frames / max(seconds, 1e-9):.1f} frames/s end to end"
          + (f"; {dropped} live frames dropped to stay current (--live-policy latest)" if dropped else "")
          + (f"; {len(failed)} failed: " + ", ".join(map(redact, failed)) if failed else ""), file=sys.stderr)
    return 1 if failed and not a.allow_failures else 0


def _detect_sources(a: argparse.Namespace, t0: float) -> int:
    """``--sources FILE``: the sources it lists, followed as it changes, one output each under ``-o``
    (named as INPUTs' are; a name met again gets ``-2``, ``-3``, ...); until Ctrl-C or SIGTERM, which
    close every source and finish its output (a second one interrupts)."""
    from .detector import Detector
    from .engine import LiveSources, run
    from .sinks import OutputConflict, open_sink

    if a.ray is not None or a.resume:
        raise VidpipeError("--sources: --ray and --resume are for INPUTs")
    if (one := _one_process_flag(a)) and (a.devices or a.procs_per_device not in ("auto", 1)):
        raise VidpipeError(f"{one} runs in one process: drop --devices and --procs-per-device")
    out = Path(a.output)
    if out.exists() and not out.is_dir():
        raise VidpipeError(f"-o {a.output}: --sources writes one output per source; give a directory")
    cfg = config_from_args(a)
    _extras(a, cfg)
    cfg = cfg.for_run(None)
    try:
        sources = LiveSources.watch(a.sources)  # a file that is not a list of sources fails here, in one line
    except OSError as e:
        raise VidpipeError(f"--sources {a.sources}: {(e.strerror or str(e)).lower()}") from None
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    targets: dict[str, Path] = {}  # source -> its output, the latest one when it was added again

    def target_for(path: str) -> Path:
        """The output of a source added now; an earlier run's file there is kept (unless --overwrite):
        the source fails in one line, the others run on."""
        name = expand_inputs([path])[0].name
        seen[name] = seen.get(name, 0) + 1
        targets[path] = out / f"{name}{'' if seen[name] == 1 else f'-{seen[name]}'}{EXTENSIONS[a.format]}"
        if not a.overwrite and os.path.lexists(targets[path]):
            raise OutputConflict(f"{targets[path]} exists (an earlier run's); pass --overwrite to replace it, or "
                                 "move it")
        return targets[path]

    def on_video(end) -> None:
        said = f"error: {end.error}" if end.error else f"{end.path}: finished, {end.decoded} frames" + (
            f" ({end.dropped} dropped to stay current)" if end.dropped else "") + f" -> {targets.get(end.path)}" + (
            f"; {json.dumps(end.analytics)}" if end.analytics else "")
        print(f"vidpipe: {redact(said)}", file=sys.stderr, flush=True)

    _close_on_signals(sources)
    procs = _processes(a, cfg, len(sources.snapshot()[0]))
    if a.devices or procs > 1:
        from .livescale import run_live_processes
        from .scale import parse_devices

        with _Service(a, sources) as service:
            report = run_live_processes(cfg, sources, a.format, target_for, parse_devices(a.devices or cfg.device),
                                        procs, on_video=on_video, monitor=service.monitor)
    else:
        detector = Detector(cfg)
        video_for = None if not a.save_video else lambda info: _video_sink(
            a, cfg, detector, info, Path(a.save_video) / f"{targets[info.path].stem}.mp4", True)
        with _Service(a, sources) as service:
            report = run(detector, sources, lambda info: open_sink(a.format, target_for(info.path), info.path,
                                                                   info.width, info.height, detector.classes, cfg.track),
                         on_video=on_video, video_for=video_for, monitor=service.monitor)
    print(f"vidpipe: {report.frames} frames from {len(report.videos)} sources in {time.perf_counter() - t0:.2f} s"
          + (f"; {len(report.failed)} failed" if report.failed else ""), file=sys.stderr)
    return 1 if report.failed and not a.allow_failures else 0


def _detect_live_processes(a: argparse.Namespace, cfg, todo: dict[str, Path], procs: int, on_frames, on_video):
    """Live INPUTs (streams, ``--realtime`` or ``--loop`` files) spread over ``procs`` worker processes per
    device, each running its share at once until they end; Ctrl-C or SIGTERM closes them all, outputs
    finished."""
    from .livescale import run_live_processes, until_ended
    from .scale import parse_devices

    sources, on_end = until_ended(list(todo), on_video)
    _close_on_signals(sources)
    with _Service(a) as service:
        return run_live_processes(cfg, sources, a.format, todo.__getitem__, parse_devices(a.devices or cfg.device),
                                  procs, on_frames=on_frames, on_video=on_end, monitor=service.monitor)


def _detect(a: argparse.Namespace, cfg, todo: dict[str, Path], on_frames, on_video,
            videos: dict[str, Path] | None = None):
    """Run ``todo`` locally, on worker processes or on Ray; the run's :class:`~vidpipe.engine.RunReport`.
    ``videos``: where each input's annotated video goes (one process only)."""
    if (one := _one_process_flag(a)) and (a.ray is not None or a.devices or a.procs_per_device not in ("auto", 1)):
        raise VidpipeError(f"{one} runs in one process: drop --devices, --procs-per-device and --ray")
    live = sum(cfg.realtime or cfg.loop or is_stream_url(i) for i in todo)
    procs = 1 if a.ray is not None else _processes(a, cfg, live)
    if (service := _service_flag(a)) and (a.ray is not None or (not live and (a.devices or procs > 1))):
        raise VidpipeError(f"{service} reports files run in one process, and live sources on any number: drop "
                           "--devices, --procs-per-device and --ray")
    if a.ray is not None:
        from .scale import run_ray
        _interruptible()
        return run_ray(cfg, todo, a.format, a.ray or None, on_video=on_video)
    if (a.devices or procs > 1) and live:
        return _detect_live_processes(a, cfg, todo, procs, on_frames, on_video)
    if a.devices or procs > 1:
        from .scale import parse_devices, run_processes
        devices = parse_devices(a.devices or cfg.device)
        _interruptible()
        return run_processes(cfg, todo, a.format, devices, procs, on_frames=on_frames,
                             on_video=on_video, split_frames=a.split_frames)
    from .detector import Detector
    from .engine import run
    from .sinks import open_sink

    stamp("imports")
    detector = Detector(cfg)
    stamp("model")
    if detector.device.type == "cpu":
        log.warning("no GPU in use: detecting on the CPU (FFmpeg decode, fp32, batch %d); expect a few frames/s",
                    detector.batch_size)
    log.info("device %s, %s, batch %d, compile %s", detector.device, detector.dtype,
             detector.batch_size, detector.compiled)
    _interruptible()
    live = cfg.realtime or cfg.loop
    video_for = None if videos is None else lambda info: _video_sink(a, cfg, detector, info, videos[info.path],
                                                                   live or is_stream_url(info.path))
    with _Service(a) as service:
        return run(detector, list(todo), lambda info: open_sink(a.format, todo[info.path], info.path, info.width,
                                                                info.height, detector.classes, cfg.track),
                   on_frames=on_frames, on_video=on_video, video_for=video_for, monitor=service.monitor)


def _video_sink(a: argparse.Namespace, cfg, detector, info, path: Path, live: bool):
    """``--save-video``'s sink for one input: one MP4 at ``path``, or for a live source files of
    ``--video-segment`` seconds beside it (``path``'s stem, then each file's first frame)."""
    from .sinks import RollingVideoSink, VideoSink

    if live:
        return RollingVideoSink(path.parent, path.stem, info.width, info.height, info.fps, detector.classes,
                                cfg.lines, cfg.zones, a.video_segment)
    return VideoSink(path, info.width, info.height, info.fps, detector.classes, cfg.lines, cfg.zones)


def main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _quit_now)
    try:
        parser = build_parser()
        a = parser.parse_args(argv)
        stamp("cli")
        log_to_stderr(logging.INFO if a.verbose else logging.WARNING)
        # The process's own setting, inherited by worker processes: Inductor's caches persist here,
        # so a second run skips most of the compile time.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                              os.path.join(os.path.expanduser("~"), ".cache", "vidpipe", "inductor"))
        if a.command == "detect":
            return cmd_detect(a)
        if a.command == "check":
            return cmd_check(a)
        _interruptible()
        module = __import__(f"vidpipe.{a.command}", fromlist=["main"])
        return module.main(a)
    except VidpipeError as e:
        print(f"vidpipe: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidpipe: interrupted; completed outputs kept, unfinished ones left as *.partial",
              file=sys.stderr)
        return 130
    finally:
        save_timeline()


def entry() -> None:
    """The ``vidpipe`` command: :func:`main`, then leave without the interpreter's teardown (torch's
    and CUDA's took ~1 s of a short run's wall time, bench --suite startup); every output is closed,
    every worker process joined and every stream flushed by then."""
    code = main()
    if (write := sys.modules.get("vidpipe.engine.write")) is not None:
        write.FormatPool.close_all()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
