"""One frozen configuration whose fields are the pipeline's switches, and the one place each switch
is described: its default, its validation, its command-line flag and help. The CLI's options are
generated from these fields (:func:`vidpipe.cli.add_config_args`), each rung of ``vidpipe ladder``
is one of these, and the kernels' Python wrappers validate their arguments with the same checks.

Invalid values raise :class:`ConfigError` (a ``ValueError``) naming the field and the valid values.
Imports no torch: ``vidpipe --help`` reads these fields.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Callable, Literal

from .errors import VidpipeError

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS = ("fp16", "bf16", "fp32")
Postprocess = Literal["gpu", "loop_device", "loop_host"]
# Default batches. GPU: model-only at 128 is only ~6% faster than at 64 on an H200 (``vidpipe bench
# --suite model``) and doubles the padding of short inputs. CPU: throughput hardly depends on the batch
# there, and a 64-frame batch kept the first result ~80 s away on 2 cores.
GPU_BATCH = 64
CPU_BATCH = 4
# --compile auto compiles only runs of at least this many frames. torch.compile costs ~30 s with
# empty caches and ~7 s with Inductor's cache warm (SSD300 on an H200, ``vidpipe bench --suite
# startup``); it saves 1/4,592 - 1/6,970 s = 74 us per frame (model-only, eager vs compiled, ``vidpipe
# bench --suite model``), so even warm it pays back only after ~95,000 frames (53 minutes at 30 fps).
COMPILE_MIN_FRAMES = 100_000
# Processes that format JSON Lines text on GPU runs, off this process's GIL: one per 4 CPU cores, 2 to
# 4. yolo11m at ~200 detections per frame on in.mp4, 16-core H200 machine: 3,312 frames/s with 2, 3,857
# with 4 (``vidpipe bench in.mp4 --model yolo11m.yaml --formatters N``).
FORMATTERS = (2, 4)
# How long a thread may keep the GIL while another waits for it, during a run. Decode threads let go of
# the GIL in every decoder and CUDA call and then wait to get it back: beside one thread running Python,
# NVDEC decoding one frame per call fell from 504 to 41 frames/s at Python's 5 ms, 424 at 0.5 ms, 493 at
# 0.2 ms (bench/nvdec_gil.py on an H200); files run the same at 0.5 ms as at 5.
GIL_INTERVAL_MS = 0.5
# Bounds past which a setting is a typo: each would only fail later, deep inside a run, as an allocation
# or an overflow (a 2**63 seed, a 10**6-pixel letterbox, 10**6 decode threads).
MAX_IMGSZ = 8192
MAX_CLASS_ID = 100_000
MAX_BATCH = 4096
MAX_WORKERS = 256
MAX_SEED = 2**63 - 1  # torch.manual_seed's range


class ConfigError(VidpipeError, ValueError):
    """An invalid setting: the message names it and says what is valid."""


# Checks: value -> None, or a ValueError whose message completes "<name> ..." ("must be >= 1, got 0").
Check = Callable[[Any], None]


def at_least(low: int) -> Check:
    def check(value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"must be >= {low}, got {value!r}")
    return check


def between(low: int, high: int) -> Check:
    """A whole number in [low, high] (a bound past which the value is a typo, not a setting)."""
    def check(value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"must be a whole number from {low:,} to {high:,}, got {value!r}")
    return check


def fraction(value: float) -> None:
    """A finite number in [0, 1] (NaN fails)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"must be a number in [0, 1], got {value!r}")


def below_one(value: float) -> None:
    """A number in [0, 1)."""
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"must be a number in [0, 1), got {value!r}")


def within(low: float, high: float) -> Check:
    """A finite number in [low, high] (NaN and infinity fail)."""
    def check(value: float) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
            raise ValueError(f"must be a number from {low:g} to {high:g}, got {value!r}")
    return check


def one_of(*choices: str) -> Check:
    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
    check.choices = choices
    return check


def multiple_of_32(value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 32 <= value <= MAX_IMGSZ or value % 32:
        raise ValueError(f"must be a multiple of 32 from 32 to {MAX_IMGSZ}, got {value!r}")


def class_ids(value: tuple[int, ...]) -> None:
    if not isinstance(value, tuple) or not value or any(
            not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= MAX_CLASS_ID for i in value):
        raise ValueError(f"must list class ids from 0 to {MAX_CLASS_ID:,}, got {value!r}")


def regions(kind: str) -> Check:
    """Each item a line (``kind="line"``) or zone spec that :mod:`vidpipe.analytics` parses."""
    def check(value: tuple[str, ...]) -> None:
        from . import analytics  # NumPy; only when regions are given

        parse = analytics.parse_line if kind == "line" else analytics.parse_zone
        for item in value:
            parse(item)
    return check


def validate(name: str, value: Any, check: Check) -> None:
    """``check(value)``, raising :class:`ConfigError` that names ``name``."""
    try:
        check(value)
    except ValueError as e:
        raise ConfigError(f"{name} {e}") from None


def setting(default: Any, help: str, *, group: str, flags: tuple[str, ...] = (), check: Check | None = None,
            metavar: str | None = None) -> Any:
    """A Config field with what the CLI needs: ``flags`` (default: ``--field-name``; a bool that
    defaults to True gets ``--no-field-name``), ``help``, the option ``group`` and a ``check`` of
    non-None values."""
    return field(default=default, metadata=dict(help=help, group=group, flags=flags, check=check, metavar=metavar))


def flags_of(f: Field) -> tuple[str, ...]:
    """A Config field's command-line flags, the first the canonical one."""
    name = f.name.replace("_", "-")
    if f.metadata["flags"]:
        return f.metadata["flags"]
    if f.type == "bool":
        return (f"--no-{name}",) if f.default else (f"--{name}",)
    return (f"--{name}",)


# Option groups, in the order --help shows them: what a user sets every day first, tuning and benchmark
# switches last.
IO, MODEL, TRACKING, LIVE, DEVICE, ADVANCED = (
    "inputs and outputs", "model and detections", "tracking, lines and zones", "live sources",
    "device and scale-out", "advanced: speed, decoding, benchmarks")
GROUPS = (IO, MODEL, TRACKING, LIVE, DEVICE, ADVANCED)


# The fields that change what an output holds (Config.output_settings); the others change only speed.
OUTPUT_FIELDS = ("model", "weights", "random_candidates", "random_classes", "seed", "imgsz", "normalize", "realtime",
                 "loop", "live_policy", "max_frames", "score_threshold", "iou_threshold", "max_detections", "classes",
                 "agnostic_nms", "track", "lines", "zones", "postprocess", "candidate_threshold",
                 "per_class_candidates")
SPEED_FIELDS = ("trust_weights", "precision", "channels_last", "compile", "cuda_graphs", "kernels", "device", "decoder",
                "stream_decoder", "batch_size", "overlap", "decoders", "formatters", "gil_interval_ms")


@dataclass(frozen=True)
class Config:
    """The switches of one run. ``None`` thresholds take the model family's own defaults
    (SSD300: NVIDIA's conf 0.3, iou 0.5, 20 per frame; YOLO: Ultralytics' 0.25, 0.7, 300)."""

    # model
    model: str = setting("ssd300", "ssd300 (NVIDIA's SSD300), an Ultralytics YOLO checkpoint (yolo11m.pt, your own "
                         "best.pt) or model yaml (yolo11m.yaml: random weights, for benchmarks), or a registered name",
                         group=MODEL, metavar="NAME|PATH")
    weights: str | None = setting(None, "SSD300: checkpoint path (NVIDIA format or state dict); default: NVIDIA's COCO "
                                  "checkpoint, downloaded on first use; 'random' = calibrated random weights",
                                  group=MODEL, metavar="PATH|random")
    trust_weights: bool = setting(False, "allow checkpoints that hold Python objects beyond the known model classes "
                                  "(unpickling them runs their code: only for files you trust)", group=MODEL)
    random_candidates: int | None = setting(None, "random weights: candidates per frame to aim for (SSD300: scores "
                                            "> 0.05, default 2000; YOLO: anchors above --conf, default 500)",
                                            group=ADVANCED, check=between(0, 1_000_000), metavar="N")
    random_classes: int = setting(20, "SSD300 random weights: classes the candidates spread over", group=ADVANCED,
                                  check=between(1, 80), metavar="N")
    seed: int = setting(0, "random weights: the seed they are drawn with", group=ADVANCED, check=between(0, MAX_SEED),
                        metavar="N")
    imgsz: int = setting(640, "YOLO: inference size (the letterbox's long side, as Ultralytics' imgsz)", group=MODEL,
                         check=multiple_of_32, metavar="N")
    precision: Precision = setting("fp16", "model precision on GPUs (CPUs always run fp32)", group=ADVANCED,
                                   check=one_of(*PRECISIONS))
    channels_last: bool = setting(True, "keep the model's tensors in NCHW layout instead of channels_last (which is "
                                  "faster on tensor cores)", group=ADVANCED)
    compile: Literal["auto", "on", "off"] = setting(
        "auto", f"torch.compile the model (auto: only for runs long enough to pay back the compile time, "
        f"{COMPILE_MIN_FRAMES:,} frames or more)", group=ADVANCED, check=one_of("auto", "on", "off"))
    cuda_graphs: bool = setting(True, "launch every kernel from Python instead of replaying captured CUDA graphs",
                                group=ADVANCED)
    kernels: Literal["auto", "triton", "torch"] = setting(
        "auto", "pre- and post-processing on GPUs: triton (vidpipe's kernels, compiled once per machine: ~20 s), "
        "torch (the same operations as torch ops: nothing to compile, 0.4-0.6x the frames/s), auto (triton once "
        "this machine has compiled them; until then torch, while a background process compiles them, and the run "
        "takes them when they are ready)", group=ADVANCED, check=one_of("auto", "triton", "torch"))
    normalize: Literal["imagenet", "symmetric"] = setting(
        "imagenet", "SSD300 input normalisation: imagenet (NVIDIA's evaluation) or symmetric ([-1, 1], torch.hub's "
        "example)", group=ADVANCED, check=one_of("imagenet", "symmetric"))
    # data path
    device: str = setting("auto", "auto, cpu, cuda or cuda:N (auto: the GPU when there is one)", group=DEVICE)
    decoder: Literal["auto", "nvdec", "pyav"] = setting(
        "auto", "auto = NVDEC on a GPU with PyNvVideoCodec installed, else FFmpeg (PyAV) on the CPU", group=ADVANCED,
        check=one_of("auto", "nvdec", "pyav"))
    batch_size: int | None = setting(None, f"frames per batch (default {GPU_BATCH} on a GPU, {CPU_BATCH} on a CPU, "
                                     "where a large batch only delays the first result)", group=ADVANCED,
                                     check=between(1, MAX_BATCH), metavar="N")
    stream_decoder: Literal["auto", "ffmpeg", "pynvvideocodec"] = setting(
        "auto", "stream URLs, and files PyNvVideoCodec's SimpleDecoder cannot take (HEVC open GOPs, MPEG-TS), on "
        "NVDEC: ffmpeg = FFmpeg demultiplexes and decodes on NVDEC (PyAV's CUDA decoding: "
        "off the GIL, frames stay on the GPU); pynvvideocodec = FFmpeg demultiplexes, PyNvVideoCodec decodes each "
        "packet (used anyway where PyAV has no CUDA decoding); auto = ffmpeg for stream URLs and --realtime "
        "files, pynvvideocodec for other files", group=ADVANCED, check=one_of("auto", "ffmpeg", "pynvvideocodec"))
    overlap: bool = setting(True, "run every stage serially in one thread (for comparison)", group=ADVANCED)
    decoders: int = setting(0, "parallel decode workers (0 = from resolution and device)", group=ADVANCED,
                            check=between(0, MAX_WORKERS), metavar="N")
    max_frames: int | None = setting(None, "only the first N frames of each input", group=IO, check=at_least(1),
                                     metavar="N")
    realtime: bool = setting(False, "read files at their own frame rate, as a camera delivers frames (a stand-in "
                             "for live cameras); results then carry capture time and latency", group=LIVE)
    loop: bool = setting(False, "start each file over at its end, frame numbers and times running on, until "
                         "--max-frames or Ctrl-C (with --realtime: a looping camera stand-in)", group=LIVE)
    live_policy: Literal["latest", "all"] = setting(
        "latest", "live sources (streams, --realtime files): latest = a frame the GPU could not take before a "
        "newer one came is dropped and counted, so results never lag; all = every frame, in a bounded buffer "
        "(lag shows in latency_ms)", group=LIVE, check=one_of("latest", "all"))
    formatters: int | None = setting(None, "processes formatting output text, off the GIL (default on a GPU: one "
                                     f"per 4 CPU cores, {FORMATTERS[0]} to {FORMATTERS[1]}; 0 on a CPU: formatted "
                                     "in the writer thread)", group=ADVANCED,
                                     check=between(0, MAX_WORKERS), metavar="N")
    gil_interval_ms: float = setting(
        GIL_INTERVAL_MS, "while a run goes on, the longest a thread keeps Python's GIL once another waits for it, in "
        "ms (Python's own: 5; sys.setswitchinterval)", group=ADVANCED, check=within(0.01, 1000.0), metavar="MS")
    # post-processing, every family
    score_threshold: float | None = setting(None, "detections scoring below P are dropped (SSD300 0.3, YOLO 0.25)",
                                            group=MODEL, flags=("--conf", "--score-threshold"), check=fraction,
                                            metavar="P")
    iou_threshold: float | None = setting(None, "NMS: a box overlapping a better one of its class by more than IOU is "
                                          "dropped (SSD300 0.5, YOLO 0.7)", group=MODEL,
                                          flags=("--iou", "--iou-threshold"), check=fraction, metavar="IOU")
    max_detections: int | None = setting(None, "detections kept per frame, best first (SSD300 20, YOLO 300)",
                                         group=MODEL, flags=("--max-det", "--max-detections"),
                                         check=between(1, 100_000),
                                         metavar="N")
    classes: tuple[int, ...] | None = setting(None, "keep only these class ids, e.g. 0,2 (the model's own ids: YOLO "
                                              "COCO 0 = person; SSD300 1)", group=MODEL, check=class_ids,
                                              metavar="IDS")
    agnostic_nms: bool = setting(False, "YOLO: NMS across classes, as Ultralytics' agnostic_nms", group=MODEL)
    track: bool = setting(False, "give every detection a track_id stable across the frames of a video (ByteTrack, "
                          "from the trackers package: pip install \"vidpipe[track]\"; -1 until a track is "
                          "confirmed)", group=TRACKING)
    lines: tuple[str, ...] = setting((), "count tracks crossing a line, in and out per class: NAME:x1,y1,x2,y2 in "
                                     "frame pixels (a line drawn top to bottom counts left to right as in); "
                                     "repeat for more lines; needs track", group=TRACKING, flags=("--line",),
                                     check=regions("line"), metavar="NAME:X1,Y1,X2,Y2")
    zones: tuple[str, ...] = setting((), "count objects inside a polygon per class, every frame (a box is inside "
                                     "when its bottom centre is): NAME:x1,y1,x2,y2,x3,y3,... in frame pixels; "
                                     "repeat for more zones", group=TRACKING, flags=("--zone",), check=regions("zone"),
                                     metavar="NAME:X1,Y1,...")
    # post-processing, SSD300 (ssd_decode's own arguments)
    postprocess: Postprocess = setting("gpu", "gpu: batched on the device; loop_device / loop_host: NVIDIA's "
                                       "per-class loop reading the model's outputs on the device / after one copy "
                                       "to the host (the ladder's first rungs)", group=ADVANCED,
                                       check=one_of("gpu", "loop_device", "loop_host"))
    candidate_threshold: float = setting(0.05, "class scores at or below P are never candidates", group=ADVANCED,
                                         check=below_one, metavar="P")
    per_class_candidates: int = setting(200, "best candidates per class that enter NMS", group=ADVANCED,
                                        check=between(1, 100_000),
                                        metavar="N")

    def __post_init__(self) -> None:
        for f in fields(self):
            value, check = getattr(self, f.name), f.metadata.get("check")
            if not _of_type(value, f.type):
                raise ConfigError(f"{f.name} must be {_described(f.type)}, got {type(value).__name__} {value!r}")
            if value is not None and check is not None:
                validate(f.name, value, check)
        if self.lines and not self.track:
            raise ConfigError("lines count crossings of tracks: they need track on")

    def for_run(self, planned_frames: int | None) -> Config:
        """``compile="auto"`` decided for a run of ``planned_frames`` (None: unknown, e.g. a live
        stream): on only when the frames amortise the compile time (COMPILE_MIN_FRAMES)."""
        if self.compile != "auto":
            return self
        return self.replace(compile="on" if (planned_frames or 0) >= COMPILE_MIN_FRAMES else "off")

    def output_settings(self) -> dict:
        """The settings that choose what an output holds (the model, its weights and thresholds, which
        frames, tracking, lines and zones), not how fast it is made: what ``--resume`` compares. A model
        or weights file counts by its size and modification time too."""
        settings = {name: getattr(self, name) for name in OUTPUT_FIELDS}
        for name in ("model", "weights"):
            value = settings[name]
            if isinstance(value, str) and os.path.isfile(value):
                st = os.stat(value)
                settings[f"{name}_file"] = [os.path.realpath(value), st.st_size, st.st_mtime_ns]
        return json.loads(json.dumps(settings))  # tuples as lists: as they read back from a record

    def batch_for(self, device: torch.device) -> int:
        """The batch size on ``device``: the configured one, else GPU_BATCH or CPU_BATCH."""
        return self.batch_size or (CPU_BATCH if device.type == "cpu" else GPU_BATCH)

    def formatters_for(self, device: torch.device) -> int:
        """Formatting processes for a run on ``device``: the configured number, else one per 4 of this
        machine's CPU cores within FORMATTERS on a GPU with the threaded engine (a CPU run's model is
        far slower than its formatting)."""
        if self.formatters is not None:
            return self.formatters
        if device.type != "cuda" or not self.overlap:
            return 0
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(max(cores // 4, FORMATTERS[0]), FORMATTERS[1])

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]

    def replace(self, **changes) -> Config:
        return replace(self, **changes)

    def asdict(self) -> dict:
        return asdict(self)

    def argv(self) -> list[str]:
        """The command-line options that give this configuration: a flag for each field not at its
        default (what ``vidpipe bench`` passes to the ``vidpipe detect`` it times in a fresh process)."""
        out: list[str] = []
        for f in fields(self):
            value, flag = getattr(self, f.name), flags_of(f)[0]
            if value == f.default:
                continue
            if f.type == "bool":
                out.append(flag)
            elif f.type == "tuple[str, ...]":  # a repeated option
                out += [item for v in value for item in (flag, v)]
            elif f.type == "tuple[int, ...] | None":
                out += [flag, ",".join(map(str, value))]
            else:
                out += [flag, str(value)]
        return out


# Config's field annotations (strings: the module has postponed annotations) -> what a value may be.
_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
                                       "tuple[int, ...]": (tuple,), "tuple[str, ...]": (tuple,)}


def _base(annotation: str) -> tuple[str, bool]:
    optional = annotation.endswith(" | None")
    base = annotation.removesuffix(" | None")
    return ("str" if base.startswith("Literal[") or base in ("Precision", "Postprocess") else base), optional


def _of_type(value: Any, annotation: str) -> bool:
    base, optional = _base(annotation)
    if value is None:
        return optional
    if isinstance(value, bool) and base != "bool":
        return False
    if not isinstance(value, _TYPES[base]):
        return False
    item = {"tuple[int, ...]": int, "tuple[str, ...]": str}.get(base)
    return item is None or all(isinstance(v, item) and not isinstance(v, bool) for v in value)


def _described(annotation: str) -> str:
    base, optional = _base(annotation)
    words = {"str": "text", "int": "a whole number", "float": "a number", "bool": "True or False",
             "tuple[int, ...]": "a tuple of whole numbers", "tuple[str, ...]": "a tuple of texts"}[base]
    return words + (" or None" if optional else "")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda:N`` is checked to exist."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VidpipeError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VidpipeError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VidpipeError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise VidpipeError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev
