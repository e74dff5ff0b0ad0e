"""One frozen configuration whose fields are the pipeline's switches; the CLI maps onto it one to
one, and each rung of ``vidpipe ladder`` is one of these."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch

from .errors import VidpipeError

Precision = Literal["fp32", "fp16", "bf16"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
Postprocess = Literal["gpu", "loop_device", "loop_host"]
# Default batches. GPU: the engine's figures in docs/results.md are at 64 (model-only at 128 is only
# ~6% faster, reference-h200.md, and doubles the padding of short inputs). CPU: throughput hardly
# depends on the batch there, and a 64-frame batch kept the first result ~80 s away on 2 cores.
GPU_BATCH = 64
CPU_BATCH = 4
# --compile auto compiles only runs of at least this many frames. torch.compile costs ~30 s with
# empty caches and ~7 s with Inductor's cache warm (SSD300 on the H200, issue 17's table); it saves
# 1/4,592 - 1/6,970 s = 74 us per frame (model-only, eager vs compiled, shared/reference-h200.md),
# so even warm it pays back only after ~95,000 frames (53 minutes of 30 fps video).
COMPILE_MIN_FRAMES = 100_000


@dataclass(frozen=True)
class Config:
    """The switches of one run. ``None`` thresholds take the model family's own defaults
    (SSD300: NVIDIA's conf 0.3, iou 0.5, 20 per frame; YOLO: Ultralytics' 0.25, 0.7, 300)."""

    # model
    model: str = "ssd300"  # ssd300, an Ultralytics checkpoint (*.pt) or model yaml (*.yaml), or a registered name
    weights: str | None = None  # SSD300: path, None = NVIDIA's COCO checkpoint, "random" = calibrated random
    trust_weights: bool = False  # unpickle checkpoints that hold Python objects (runs their code)
    random_candidates: int | None = None  # random weights: candidates per frame to aim for (None: the family's)
    random_classes: int = 20
    seed: int = 0  # random weights
    imgsz: int = 640  # YOLO: the letterbox's long side, as Ultralytics' imgsz
    precision: Precision = "fp16"
    channels_last: bool = True
    compile: Literal["auto", "on", "off"] = "auto"  # auto: see for_run (the detector alone: off)
    cuda_graphs: bool = True  # CUDA: replay preprocess + model and post-processing as captured graphs
    normalize: Literal["imagenet", "symmetric"] = "imagenet"
    # data path
    device: str = "auto"
    decoder: Literal["auto", "nvdec", "pyav"] = "auto"
    batch_size: int | None = None  # None: GPU_BATCH on a GPU, CPU_BATCH on a CPU (see batch_for)
    overlap: bool = True  # decode ahead in threads, async copies, writer thread
    decoders: int = 0  # parallel decode workers; 0 = chosen from resolution and device
    max_frames: int | None = None
    # post-processing, every family
    score_threshold: float | None = None  # --conf: detections scoring at or below it are dropped
    iou_threshold: float | None = None  # --iou: NMS overlap threshold
    max_detections: int | None = None  # --max-det: per frame, best first
    classes: tuple[int, ...] | None = None  # --classes: keep only these class ids
    agnostic_nms: bool = False  # YOLO: NMS across classes
    # post-processing, SSD300 (ssd_decode's own arguments)
    postprocess: Postprocess = "gpu"
    candidate_threshold: float = 0.05
    per_class_candidates: int = 200

    def __post_init__(self) -> None:
        if self.precision not in DTYPES:
            raise VidpipeError(f"precision must be one of {sorted(DTYPES)}, got {self.precision!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise VidpipeError(f"batch size must be >= 1, got {self.batch_size}")
        if self.decoder not in ("auto", "nvdec", "pyav"):
            raise VidpipeError(f"decoder must be auto, nvdec or pyav, got {self.decoder!r}")
        if self.normalize not in ("imagenet", "symmetric"):
            raise VidpipeError(f"normalize must be imagenet or symmetric, got {self.normalize!r}")
        if self.decoders < 0:
            raise VidpipeError(f"--decoders must be >= 0 (0 = automatic), got {self.decoders}")
        if self.random_candidates is not None and self.random_candidates < 0:
            raise VidpipeError(f"--random-candidates must be >= 0, got {self.random_candidates}")
        if self.imgsz < 32 or self.imgsz % 32:
            raise VidpipeError(f"--imgsz must be a multiple of 32, got {self.imgsz}")
        if self.compile not in ("auto", "on", "off"):
            raise VidpipeError(f"compile must be auto, on or off, got {self.compile!r}")
        if self.postprocess not in ("gpu", "loop_device", "loop_host"):
            raise VidpipeError(f"unknown postprocess {self.postprocess!r}")
        # Written so that NaN fails every range check.
        if self.score_threshold is not None and not 0.0 <= self.score_threshold <= 1.0:
            raise VidpipeError(f"--score-threshold (--conf) must be in [0, 1], got {self.score_threshold}")
        if self.iou_threshold is not None and not 0.0 <= self.iou_threshold <= 1.0:
            raise VidpipeError(f"--iou-threshold (--iou) must be in [0, 1], got {self.iou_threshold}")
        if not 0.0 <= self.candidate_threshold < 1.0:
            raise VidpipeError(f"--candidate-threshold must be in [0, 1), got {self.candidate_threshold}")
        if (self.max_detections is not None and self.max_detections < 1) or self.per_class_candidates < 1:
            raise VidpipeError("--max-detections (--max-det) and --per-class-candidates must be >= 1")
        if self.classes is not None and (not self.classes or min(self.classes) < 0):
            raise VidpipeError(f"--classes must list class ids >= 0, got {self.classes}")
        if self.max_frames is not None and self.max_frames < 1:
            raise VidpipeError(f"--max-frames must be >= 1, got {self.max_frames}")

    def for_run(self, planned_frames: int | None) -> Config:
        """``compile="auto"`` decided for a run of ``planned_frames`` (None: unknown, e.g. a live
        stream): on only when the frames amortise the compile time (COMPILE_MIN_FRAMES)."""
        if self.compile != "auto":
            return self
        return self.replace(compile="on" if (planned_frames or 0) >= COMPILE_MIN_FRAMES else "off")

    def batch_for(self, device: torch.device) -> int:
        """The batch size on ``device``: the configured one, else GPU_BATCH or CPU_BATCH."""
        return self.batch_size or (CPU_BATCH if device.type == "cpu" else GPU_BATCH)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def replace(self, **changes) -> Config:
        return replace(self, **changes)

    def asdict(self) -> dict:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda:N`` is checked to exist."""
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
