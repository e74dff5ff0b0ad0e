"""Ultralytics YOLO detect models (YOLOv8, YOLO11, v5u; YOLO26's end-to-end head too) as a
:class:`~vidpipe.models.ModelFamily`, with the semantics of Ultralytics' own ``predict`` on video
(checked against ultralytics 8.4):

* **letterbox** as its predictor picks it for a video (``rect``, ``auto``): the frame scaled by
  ``r = min(imgsz / h, imgsz / w)`` to ``round(w r) x round(h r)`` (``cv2.resize`` ``INTER_LINEAR``
  bit for bit, :mod:`vidpipe.letterbox`), padded with 114 to the next multiple of the model's stride,
  the padding split as ``round(d / 2 -+ 0.1)``; RGB / 255 in the model's dtype. One input size per
  frame size: 384x288 -> 480x640, 1920x1080 -> 384x640 at ``imgsz`` 640.
* **network**: the checkpoint's ``DetectionModel``, Conv+BN fused as Ultralytics' ``AutoBackend``
  fuses it; output ``[N, 4 + nc, anchors]`` (xywh in input pixels, class scores after sigmoid).
* **NMS** as ``ultralytics.utils.nms.non_max_suppression``: candidates whose best class score is
  above ``conf`` (0.25), best class only, the ``classes`` filter, at most ``max_nms`` (30,000) per
  frame by score, class-aware NMS at ``iou`` (0.7) on boxes offset by ``class x 7680`` (none with
  ``agnostic_nms``), the ``max_det`` (300) best; boxes in float32 from the model's dtype, as
  Ultralytics' ``torch.cat`` promotes them.
* **boxes back to the frame** as ``ultralytics.utils.ops.scale_boxes`` (per-axis gain of the
  rounded letterbox, padding removed, clipped to the frame).

Post-processing has static shapes and never waits for the GPU (ranking by ``sort``, NMS by
:func:`vidpipe.nms.greedy_nms`, a Triton kernel on CUDA), so it is captured in a CUDA graph with
the model. Class ids are the model's own (``names`` of the checkpoint).

Ultralytics is an optional dependency (``pip install "vidpipe[yolo]"``), imported only here. A
``.pt`` checkpoint is a pickle of Python objects: loading one runs code, so it is refused unless
``trust_weights`` (``--trust-weights``). A ``.yaml`` builds the architecture with seeded random
weights, whose class biases are re-aimed so that about ``random_candidates`` anchors per frame
pass ``conf`` (a freshly initialised head passes almost none, and would benchmark no NMS at all).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..coco import Classes
from ..config import Config
from ..errors import VidpipeError
from ..inputs import check_model_file
from ..letterbox import letterbox as letterbox_frames
from ..nms import CAPTURABLE, greedy_nms
from ..postprocess import Detections, classes_on, kept_detections
from ..synth import smooth_frames
from ..profiling import nvtx_range
from . import batchnorm_statistics
from .yolo_yaml import read_model_yaml

log = logging.getLogger(__name__)

CONF = 0.25  # Ultralytics' predict defaults
IOU = 0.7
MAX_DET = 300
MAX_NMS = 30000  # candidates per frame that enter NMS, at most (non_max_suppression's max_nms)
MAX_WH = 7680  # class offset of class-aware NMS (non_max_suppression's max_wh)
RANDOM_CANDIDATES = 500  # anchors per frame above conf, for random weights (a busy street scene's order)
MAX_CHECKPOINT_BYTES = 2 << 30  # YOLO11x's checkpoint is ~110 MB: a larger file is not a detect model


def _ultralytics():
    # vidpipe fetches nothing through Ultralytics: imported offline, it skips the DNS lookups it makes to
    # tell whether it is online (each waits for the resolver's time-out on a machine that cannot reach one).
    # Only for the import: processes this one starts (a peer in a benchmark) see the user's environment.
    offline = "YOLO_OFFLINE" not in os.environ
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        import ultralytics  # noqa: F401
        from ultralytics.nn import tasks
    except ImportError:
        raise VidpipeError('YOLO models need Ultralytics: pip install "vidpipe[yolo]"') from None
    finally:
        if offline:
            os.environ.pop("YOLO_OFFLINE", None)
    return tasks


def letterbox(height: int, width: int, imgsz: int, stride: int) -> tuple[int, int, int, int, int, int]:
    """``(new_h, new_w, top, bottom, left, right)`` of Ultralytics' ``LetterBox(auto=True)``."""
    r = min(imgsz / height, imgsz / width)
    new_w, new_h = max(round(width * r), 1), max(round(height * r), 1)
    dw, dh = ((imgsz - new_w) % stride) / 2, ((imgsz - new_h) % stride) / 2
    return new_h, new_w, round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1)


class _Network(torch.nn.Module):
    """The detection model returning ``(predictions,)``. The head makes its anchors when the input
    shape differs from its last one, and keeps only those. Here each shape's anchors are made once
    and kept: an eager call on a known shape gives the head that shape's anchors back instead of
    new ones, so a CUDA graph captured for a size keeps reading the same live memory whatever sizes
    run in between. Outside traces only: traced, the dict would guard the compiled graph (a
    recompile per size), and the detector runs each new shape eagerly before its compiled call."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        # (input shape, device, dtype) -> the head's (shape, anchors, strides)
        self._anchors: dict[tuple, tuple] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        head = self.model.model[-1]
        key = (tuple(x.shape), x.device, x.dtype)  # the anchors are made on the input's device, in its dtype
        eager = not torch.compiler.is_compiling() and hasattr(head, "anchors")
        if eager and key in self._anchors:
            head.shape, head.anchors, head.strides = self._anchors[key]
        elif eager:
            head.shape = None  # new: the head makes its anchors anew (its own test compares shapes only)
        y = self.model(x)
        if eager:
            self._anchors.setdefault(key, (head.shape, head.anchors, head.strides))
        return (y[0] if isinstance(y, (tuple, list)) else y,)


class YoloFamily:
    random_load = RANDOM_CANDIDATES

    def __init__(self, model: torch.nn.Module, config: Config, name: str, random: bool = False) -> None:
        head = model.model[-1]
        self.name = name
        self.random = random  # weights from a yaml: reaim() sets the candidate load
        self.end2end = bool(getattr(head, "end2end", False))
        self.stride = _stride(model)
        names = model.names if isinstance(model.names, (list, tuple)) else [model.names[i] for i in
                                                                            range(len(model.names))]
        self.classes = Classes.from_names(names)
        self.imgsz = config.imgsz
        self.conf = config.score_threshold if config.score_threshold is not None else CONF
        self.iou = config.iou_threshold if config.iou_threshold is not None else IOU
        self.max_detections = config.max_detections or MAX_DET
        self.agnostic = config.agnostic_nms
        self.allowed = config.classes
        self.fused = config.kernels != "torch"  # Triton kernels on CUDA; else the torch ops (host reads)
        self.network = _Network(model.eval())

    @property
    def graph_postprocess(self) -> bool:
        """Static shapes and no host reads, where the NMS runs as a Triton kernel."""
        return CAPTURABLE and self.fused

    @classmethod
    def from_config(cls, config: Config) -> YoloFamily:
        tasks = _ultralytics()
        path = Path(config.model)
        if path.suffix.lower() in (".yaml", ".yml"):
            model = _from_yaml(tasks, config.model, config.seed, config.trust_weights)
            frames = smooth_frames(4, config.seed, 1080, 1920, detail=0.2)
            _normalise_activations(model, _letterboxed(frames, config.imgsz, _stride(model), torch.float32))
            model = model.fuse(verbose=False) if hasattr(model, "fuse") else model
            family = cls(model, config, path.stem, random=True)
            target = config.random_candidates if config.random_candidates is not None else RANDOM_CANDIDATES
            found = family.reaim(frames, target)
            log.warning("--model %s: random weights (seed %d), re-aimed to %.0f candidates per frame "
                        "(anchors above conf %.2f); detections are meaningless", path.name, config.seed, found,
                        family.conf)
            return family
        model = _from_checkpoint(tasks, path, config.trust_weights)
        return cls(model.fuse(verbose=False) if hasattr(model, "fuse") else model, config, path.stem)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        new_h, new_w, top, bottom, left, right = letterbox(height, width, self.imgsz, self.stride)
        return new_h + top + bottom, new_w + left + right

    def preprocess(self, frames: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
        with nvtx_range("preprocess"):
            return _letterboxed(frames, self.imgsz, self.stride, dtype, channels_last, self.fused)

    def candidates(self, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Anchors whose best class score passes ``conf``, per frame (what enters NMS)."""
        (pred,) = outputs
        if self.end2end:
            return (pred[..., 4] > self.conf).sum(1)
        return (pred[:, 4:].amax(1) > self.conf).sum(1)

    def postprocess(self, outputs: tuple[torch.Tensor, ...], height: int, width: int) -> Detections:
        (pred,) = outputs
        with nvtx_range("postprocess"):
            det = self._end2end(pred) if self.end2end else self._nms(pred)
            self._to_frame(det.boxes, pred.shape, height, width)
        return det

    def _nms(self, pred: torch.Tensor) -> Detections:
        """Ultralytics' ``non_max_suppression`` for the whole batch with static shapes: each frame's
        anchors ranked by best class score (those below ``conf`` or outside ``classes`` last), the
        first ``min(anchors, max_nms)`` gathered, then greedy class-aware NMS on them."""
        d = self.max_detections
        k = min(pred.shape[2], MAX_NMS)
        p = pred.transpose(1, 2)  # [N, anchors, 4 + nc], the model's dtype
        score, label = p[..., 4:].max(-1)
        keep = score > self.conf
        if self.allowed is not None:
            keep &= torch.isin(label, classes_on(self.allowed, str(label.device)))
        # Stable: equal scores stay in anchor order, as Ultralytics' candidates reach torchvision's NMS.
        ranked = torch.where(keep, score.float(), -1.0).sort(dim=1, descending=True, stable=True)
        order = ranked.indices[:, :k]
        boxes = _xywh2xyxy(p[..., :4]).float().gather(1, order[..., None].expand(-1, -1, 4))
        labels = label.gather(1, order)
        offset = boxes if self.agnostic else boxes + labels[..., None].float() * MAX_WH
        kept, _ = greedy_nms(offset, keep.sum(1), self.iou, d, fused=self.fused)
        return kept_detections(boxes, labels, ranked.values[:, :k], kept)

    def _end2end(self, pred: torch.Tensor) -> Detections:
        """NMS-free heads (``[N, K, 6]``: xyxy, score, class): the first ``max_det`` rows above ``conf``."""
        d = self.max_detections
        keep = pred[..., 4] > self.conf
        if self.allowed is not None:
            keep &= torch.isin(pred[..., 5].long(), classes_on(self.allowed, str(pred.device)))
        order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :d]
        rows = pred.float().gather(1, order[..., None].expand(-1, -1, 6))
        return Detections(rows[..., :4].contiguous(), rows[..., 5].long(), rows[..., 4].contiguous(),
                          keep.sum(1).clamp(max=d))

    def _to_frame(self, boxes: torch.Tensor, shape: torch.Size, height: int, width: int) -> None:
        """Input pixels -> frame pixels, in place (ultralytics.utils.ops.scale_boxes)."""
        in_h, in_w = self.input_size(height, width)
        gain = min(in_h / height, in_w / width)
        new_h, new_w = max(round(height * gain), 1), max(round(width * gain), 1)
        pad_x, pad_y = round((in_w - new_w) / 2 - 0.1), round((in_h - new_h) / 2 - 0.1)
        boxes[..., 0::2] -= pad_x
        boxes[..., 1::2] -= pad_y
        boxes[..., 0::2] /= new_w / width
        boxes[..., 1::2] /= new_h / height
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)

    def save(self, path: Path) -> dict:
        """Write the model as an Ultralytics checkpoint for another process (loadable without
        ``--trust-weights``); returns the Config changes that load it."""
        torch.save({"model": self.network.model}, path)
        return {"model": str(path)}

    @torch.no_grad()
    def reaim(self, frames: torch.Tensor, candidates: float, logit_std: float = 1.5) -> float:
        """Random weights: scale each level's class logits to standard deviation ``logit_std`` (a
        fresh head gives every anchor the same best class) and shift every class bias by one amount,
        so that ``frames`` (uint8 ``[N, 3, H, W]`` on the CPU) give about ``candidates`` anchors per
        frame above ``conf``; returns the load found."""
        images = self.preprocess(frames, torch.float32, channels_last=False)
        head = self.network.model.model[-1]
        branches = head.one2one_cv3 if self.end2end else head.cv3
        feats: list[torch.Tensor] = []
        hook = head.register_forward_pre_hook(lambda _, args: feats.extend(args[0]))
        try:
            self.network(images)
        finally:
            hook.remove()
        inner = [branch[:-1](f) for branch, f in zip(branches, feats)]
        for branch, x in zip(branches, inner):
            conv = branch[-1]
            conv.weight *= logit_std / (F.conv2d(x, conv.weight).std() + 1e-12)
            conv.bias.zero_()
        logits = torch.cat([branch[-1](x).flatten(2) for branch, x in zip(branches, inner)], 2)  # [N, nc, anchors]
        best = logits.amax(1)

        def load(delta: float) -> float:
            return float((torch.sigmoid(best + delta) > self.conf).sum()) / len(images)

        lo, hi = -50.0, 50.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if load(mid) < candidates else (lo, mid)
        for branch in branches:
            branch[-1].bias += hi
        return load(hi)


def _stride(model: torch.nn.Module) -> int:
    return int(max(model.stride.tolist())) if hasattr(model, "stride") else 32


def _letterboxed(frames: torch.Tensor, imgsz: int, stride: int, dtype: torch.dtype,
                 channels_last: bool = False, fused: bool = True) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` RGB frames -> the letterboxed network input, RGB / 255 in ``dtype``."""
    _, _, h, w = frames.shape
    new_h, new_w, top, bottom, left, right = letterbox(h, w, imgsz, stride)
    return letterbox_frames(frames, new_h, new_w, (top, bottom, left, right), dtype, channels_last, fused)


# Standard deviation each BatchNorm gives its layer's output in random weights. Measured on in.mp4
# with yolo11n (a class score's change when the input moves by one pixel level, p99 over
# candidates): 1.0 -> 0.30 (a random network at unit variance is chaotic: two implementations'
# rounding alone moved boxes by up to 80 px), 0.7 -> 0.0001, 0.5 -> 0.0000 (fp16 vs fp32: 0.0006).
# Below the chaotic regime the output hardly depends on the frame: random weights then load the
# post-processing with about the same candidates in every frame.
RANDOM_ACTIVATION_STD = 0.5


@torch.no_grad()
def _normalise_activations(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Random weights: set every BatchNorm's statistics from ``images`` and its scale to
    RANDOM_ACTIVATION_STD. A freshly initialised network shrinks its activations layer by layer
    (to ~1e-9 at the head of yolo11m), and fp16 flushes those to zero: no anchor then passes."""
    for bn in batchnorm_statistics(model, lambda: model(images)):
        bn.weight.fill_(RANDOM_ACTIVATION_STD)
        bn.bias.zero_()


def _xywh2xyxy(xywh: torch.Tensor) -> torch.Tensor:
    xy, wh = xywh[..., :2], xywh[..., 2:] / 2
    return torch.cat((xy - wh, xy + wh), -1)


def _from_yaml(tasks, name: str, seed: int, trust: bool = False) -> torch.nn.Module:
    """A model built from a YAML file of the user's (read as data, :mod:`.yolo_yaml`) or from one of
    Ultralytics' own by name (``yolo11m.yaml``)."""
    cfg: str | dict = name
    if os.path.lexists(name):
        from ultralytics.nn import modules

        cfg = read_model_yaml(name, trust, set(modules.__all__))
        cfg["scale"] = tasks.guess_model_scale(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = tasks.DetectionModel(cfg, verbose=False)
        except FileNotFoundError:
            raise VidpipeError(f"--model {name}: no such model yaml (Ultralytics knows yolov8n.yaml, "
                               "yolo11m.yaml, ...; or give a path)") from None
        except Exception as e:  # a well-formed YAML Ultralytics cannot build (wrong channels, indices, ...)
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise VidpipeError(f"--model {name}: Ultralytics cannot build this model ({reason})") from None
    return model.eval()


def _from_checkpoint(tasks, path: Path, trust: bool) -> torch.nn.Module:
    """The detect model of an Ultralytics checkpoint. Without ``trust`` it is read with
    ``torch.load(weights_only=True)`` against Ultralytics' allow-list of its own model classes
    (official checkpoints and ones trained with Ultralytics load; nothing else is unpickled)."""
    if not os.path.lexists(path):
        raise VidpipeError(f"--model {path}: no such file (vidpipe does not download checkpoints: get it from "
                           "Ultralytics' releases, or give a model yaml for random weights)")
    check_model_file(path, "--model", MAX_CHECKPOINT_BYTES)
    refused = (f"--model {path}: this checkpoint holds Python objects beyond Ultralytics' known model classes, "
               "and unpickling them would run their code; pass --trust-weights if you trust where it came from")
    if not trust and not tasks._SafeLoad.SUPPORTED:
        raise VidpipeError(f"--model {path}: this torch cannot load Ultralytics checkpoints without unpickling code; "
                           "pass --trust-weights if you trust where the file came from")
    try:
        ckpt, _ = tasks.torch_safe_load(str(path), safe_only=not trust)
    except TypeError as e:
        if not trust and "outside the supported" in str(e):
            raise VidpipeError(refused) from None
        raise VidpipeError(f"--model {path}: not a loadable Ultralytics checkpoint") from None
    except Exception as e:
        if not trust and "weights_only" in str(e).lower() + type(e).__name__.lower():
            raise VidpipeError(refused) from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VidpipeError(f"--model {path}: not a loadable Ultralytics checkpoint ({reason})") from None
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, torch.nn.Module) or not hasattr(model.model[-1], "nc"):
        raise VidpipeError(f"--model {path}: not an Ultralytics detection model")
    task = getattr(model, "task", None) or tasks.guess_model_task(model)
    if task != "detect":
        raise VidpipeError(f"--model {path}: a {task} model; vidpipe runs detect models")
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    return model.float().eval()  # the checkpoint was loaded for this run alone: no copy to keep apart

