"""torchvision's detection models as a :class:`~vidpipe.models.ModelFamily`:
``--model torchvision:NAME`` for ``retinanet_resnet50_fpn_v2``, ``fcos_resnet50_fpn``,
``ssd300_vgg16``, ``ssdlite320_mobilenet_v3_large``, ``fasterrcnn_resnet50_fpn_v2`` (and the other
``torchvision.models.detection`` builders).

Semantics are torchvision's own ``model(images)`` on a list of frames:

* **transform** as ``GeneralizedRCNNTransform``: RGB / 255, normalised with the model's
  ``image_mean``/``image_std``, resized bilinearly by ``min(min_size / short side, max_size /
  long side)`` (``recompute_scale_factor``), or to the model's ``fixed_size`` (SSD, SSDlite),
  zero-padded to a multiple of ``size_divisible``: done here for the whole batch at once (one
  frame size per batch), which is what torchvision does to each frame;
* **network**: the model's backbone and head on the batch;
* **post-processing**, for RetinaNet and SSD / SSDlite: their ``postprocess_detections`` for the
  whole batch with static shapes (:class:`_Batched`): sigmoid scores and ``topk_candidates`` per
  level (RetinaNet) or softmax scores and ``topk_candidates`` per class (SSD), ``score_thresh``,
  the model's own ``box_coder`` and clipping to the resized image, class-aware greedy NMS at
  ``nms_thresh`` (:func:`~vidpipe.nms.greedy_nms`, torchvision's NMS semantics), the best
  ``detections_per_img``. Nothing waits for the GPU, so the whole chain is captured in CUDA graphs.
  Other models (FCOS, Faster R-CNN) run the model's own post-processing on the batch
  (``capturable = False``: it reads counts on the host);
* **boxes back to the frame** as ``transform.postprocess`` (per-axis float32 ratios).

Detections are padded to ``detections_per_img`` per frame. Labels are torchvision's COCO indices
(1 = person; the names of its weights' ``categories``).

Weights: ``--weights`` unset = the model's ``DEFAULT`` weights enum (downloaded by torchvision as
usual); ``--weights PATH`` a state dict; ``--weights random`` seeded random weights whose class
logits are shifted so that about ``random_candidates`` (default 500) candidates per frame pass
``score_thresh``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..coco import Classes
from ..config import Config
from ..errors import VidpipeError
from ..nms import CAPTURABLE, greedy_nms
from ..postprocess import Detections, constant_on, kept_detections
from ..synth import smooth_frames
from . import batchnorm_statistics

log = logging.getLogger(__name__)
PREFIX = "torchvision:"
RANDOM_CANDIDATES = 500  # per frame above score_thresh, for random weights


class _Passthrough(torch.nn.Module):
    """Stands in for the model's transform: the batch arrives transformed (by the family's
    preprocess) and the detections leave in the network input's pixels."""

    def __init__(self, sizes: dict[tuple[int, int], tuple[int, int]]) -> None:
        super().__init__()
        self.sizes = sizes

    def forward(self, images: torch.Tensor, targets=None):
        from torchvision.models.detection.image_list import ImageList

        size = self.sizes[tuple(images.shape[-2:])]
        return ImageList(images, [size] * images.shape[0]), targets

    def postprocess(self, result, image_sizes, original_image_sizes):
        return result


class _Network(torch.nn.Module):
    """The torchvision model after its transform; returns its detections padded to ``d`` per
    image: ``boxes [N, d, 4]`` (network input pixels), ``scores [N, d]``, ``labels [N, d]``,
    ``counts [N]``."""

    def __init__(self, model: torch.nn.Module, d: int) -> None:
        super().__init__()
        self.model, self.d = model, d

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        n, d = x.shape[0], self.d
        boxes = x.new_zeros(n, d, 4, dtype=torch.float32)
        scores = x.new_zeros(n, d, dtype=torch.float32)
        labels = torch.zeros(n, d, dtype=torch.int64, device=x.device)
        counts = torch.zeros(n, dtype=torch.int64, device=x.device)
        for i, r in enumerate(out):
            k = min(len(r["scores"]), d)
            boxes[i, :k], scores[i, :k], labels[i, :k] = r["boxes"][:k], r["scores"][:k], r["labels"][:k]
            counts[i] = k
        return boxes, scores, labels, counts


class _Heads(torch.nn.Module):
    """A one-stage model's backbone and head on the batch: ``cls_logits [N, A, C]`` and
    ``bbox_regression [N, A, 4]`` in the model's dtype, anchors in the model's order (level by
    level). Records each input size's feature map sizes, from which the anchors are made."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grids: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = _features(self.model, x)
        self.grids[tuple(x.shape[-2:])] = [tuple(f.shape[-2:]) for f in features]
        out = self.model.head(features)
        return out["cls_logits"], out["bbox_regression"]


class _Batched:
    """RetinaNet's or SSD's ``postprocess_detections`` for a batch at once, static shapes (see the
    module docstring). The candidates are each frame's top ``topk_candidates`` by score, per level
    (RetinaNet: over anchors x classes, sigmoid) or per class (SSD: over anchors, softmax without
    the background), those not above ``score_thresh`` marked invalid: the same set torchvision
    takes (it thresholds first, then takes the top k of what passed; scores are monotone in the
    logits, so the top k by logit hold them, ties aside)."""

    def __init__(self, heads: _Heads, sizes: dict[tuple[int, int], tuple[int, int]]) -> None:
        model = heads.model
        self.heads, self.sizes = heads, sizes
        self.retinanet = type(model).__name__ == "RetinaNet"
        self.topk, self.nms_thresh = model.topk_candidates, model.nms_thresh
        self.score_thresh, self.d = model.score_thresh, model.detections_per_img
        self.box_coder, self.anchor_generator = model.box_coder, model.anchor_generator
        self.anchors: dict[tuple, torch.Tensor] = {}

    def anchors_for(self, size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The model's anchors ``[A, 4]`` for padded input ``size``, made once (on the CPU, with the
        model's own generator, from the feature sizes its network recorded; then copied once: no
        copy may run inside a captured graph, and the graphs' warm-up runs come first)."""
        key = (size, dtype, device)
        if key not in self.anchors:
            from torchvision.models.detection.image_list import ImageList

            features = [torch.empty(1, 1, *g, dtype=dtype) for g in self.heads.grids[size]]
            images = ImageList(torch.empty(1, 3, *size, dtype=dtype), [self.sizes[size]])
            self.anchors[key] = self.anchor_generator(images, features)[0].to(device)
        return self.anchors[key]

    def __call__(self, cls_logits: torch.Tensor, regression: torch.Tensor, size: tuple[int, int],
                 fused: bool) -> Detections:
        """Detections in the padded input's pixels (clipped to the resized image)."""
        from torchvision.ops.boxes import clip_boxes_to_image

        n, a, c = cls_logits.shape
        anchors = self.anchors_for(size, cls_logits.dtype, cls_logits.device)
        if self.retinanet:
            scores, anchor, labels = self._per_level(cls_logits, size)
        else:
            probs = torch.softmax(cls_logits, dim=-1)[..., 1:].transpose(1, 2)  # [N, C - 1, A], background out
            scores, anchor = probs.topk(min(self.topk, a), dim=2)
            labels = torch.arange(1, c, device=cls_logits.device)[None, :, None].expand_as(anchor).reshape(n, -1)
            scores, anchor = scores.reshape(n, -1), anchor.reshape(n, -1)
        rel = regression.gather(1, anchor[..., None].expand(-1, -1, 4))
        boxes = _decode(self.box_coder, rel.reshape(-1, 4), anchors[anchor.reshape(-1)]).reshape(n, -1, 4)
        boxes = clip_boxes_to_image(boxes, self.sizes[size]).float()
        valid = scores > self.score_thresh  # in the scores' dtype, as torchvision compares them
        # batched_nms: best first, the classes kept apart by an offset larger than any coordinate.
        ranked = torch.where(valid, scores.float(), -1.0).sort(dim=1, descending=True, stable=True)
        order = ranked.indices
        boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        labels = labels.gather(1, order)
        offset = boxes + labels[..., None].float() * (max(self.sizes[size]) + 1)
        kept, _ = greedy_nms(offset, valid.sum(1), self.nms_thresh, self.d, fused=fused)
        return kept_detections(boxes, labels, ranked.values, kept)

    def _per_level(self, cls_logits: torch.Tensor, size: tuple[int, int]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RetinaNet's candidates: per level, the top ``topk_candidates`` of anchors x classes;
        their sigmoid scores, anchor rows and labels ``[N, K]``, level after level."""
        n, a, c = cls_logits.shape
        cells = [h * w for h, w in self.heads.grids[size]]
        per_cell = a // sum(cells)
        scores, anchors, labels, start = [], [], [], 0
        for count in (cells_l * per_cell for cells_l in cells):
            logits = cls_logits[:, start:start + count].reshape(n, -1)
            top, index = logits.topk(min(self.topk, logits.shape[1]), dim=1)
            scores.append(torch.sigmoid(top))
            anchors.append(index // c + start)
            labels.append(index % c)
            start += count
        return torch.cat(scores, 1), torch.cat(anchors, 1), torch.cat(labels, 1)


def _decode(coder, rel: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``BoxCoder.decode_single(rel [M, 4], anchors [M, 4])``, the same operations in the same
    dtype, without the 0.5 it copies to the device on every call (no copy may run in a captured
    graph)."""
    anchors = anchors.to(rel.dtype)
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ctr_x, ctr_y = anchors[:, 0] + 0.5 * widths, anchors[:, 1] + 0.5 * heights
    wx, wy, ww, wh = coder.weights
    dw = torch.clamp(rel[:, 2] / ww, max=coder.bbox_xform_clip)
    dh = torch.clamp(rel[:, 3] / wh, max=coder.bbox_xform_clip)
    x, y = rel[:, 0] / wx * widths + ctr_x, rel[:, 1] / wy * heights + ctr_y
    half_w, half_h = 0.5 * (torch.exp(dw) * widths), 0.5 * (torch.exp(dh) * heights)
    return torch.stack((x - half_w, y - half_h, x + half_w, y + half_h), dim=1)


class TorchvisionFamily:
    random_load = RANDOM_CANDIDATES

    def __init__(self, model: torch.nn.Module, name: str, categories: list[str], random: bool = False) -> None:
        t = self.transform = model.transform  # torchvision's own, kept for comparisons
        self.name, self.random = name, random
        self.classes = Classes(tuple(categories), tuple(range(len(categories))))
        self.min_size, self.max_size = t.min_size[-1], t.max_size
        self.fixed_size = getattr(t, "fixed_size", None)
        self.divisible = t.size_divisible
        self.mean, self.std = tuple(t.image_mean), tuple(t.image_std)
        self.max_detections = _detections_per_img(model)
        self.score_thresh = _score_thresh(model)
        self.sizes: dict[tuple[int, int], tuple[int, int]] = {}  # padded input size -> resized image size
        model.transform = _Passthrough(self.sizes)
        self.batched: _Batched | None = None
        if type(model).__name__ in ("RetinaNet", "SSD"):
            self.network = _Heads(model.eval())
            self.batched = _Batched(self.network, self.sizes)
            self.fused = True  # greedy NMS as a Triton kernel on CUDA; the Detector sets it from Config.kernels
        else:
            self.network = _Network(model.eval(), self.max_detections)
        # torchvision's own post-processing reads counts on the host: not in a CUDA graph.
        self.capturable = self.batched is not None

    @property
    def graph_postprocess(self) -> bool:
        """Static shapes and no host reads: the batched post-processing with the Triton NMS."""
        return self.batched is not None and CAPTURABLE and self.fused

    @classmethod
    def from_config(cls, config: Config) -> TorchvisionFamily:
        try:
            from torchvision.models import get_model, get_model_weights
        except ImportError:
            raise VidpipeError("torchvision models need torchvision >= 0.14") from None
        name = config.model.removeprefix(PREFIX)
        try:
            enum = get_model_weights(name)
        except (ValueError, KeyError):
            raise VidpipeError(f"--model {config.model}: not a torchvision detection model (e.g. "
                               "torchvision:retinanet_resnet50_fpn_v2)") from None
        categories = list(enum.DEFAULT.meta["categories"])
        random = config.weights == "random"
        if config.weights is None:
            model = get_model(name, weights=enum.DEFAULT)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                model = get_model(name, weights=None, weights_backbone=None)
            if not random:
                path = Path(config.weights)
                if not path.is_file():
                    raise VidpipeError(f"--weights {path}: no such file")
                try:
                    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                except Exception as e:
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise VidpipeError(f"--weights {path}: not a state dict of {name} ({reason})") from None
        family = cls(model, name, categories, random=random)
        if random:
            target = config.random_candidates if config.random_candidates is not None else RANDOM_CANDIDATES
            found = family.reaim(smooth_frames(2, config.seed, 720, 1280), target)
            log.warning("--model %s: random weights (seed %d), re-aimed to %.0f candidates per frame; detections "
                        "are meaningless", config.model, config.seed, found)
        return family

    def _scale(self, height: int, width: int) -> float:
        """GeneralizedRCNNTransform's resize factor (without a fixed size)."""
        return min(self.min_size / min(height, width), self.max_size / max(height, width))

    def _resized(self, height: int, width: int) -> tuple[int, int]:
        if self.fixed_size is not None:
            return self.fixed_size[1], self.fixed_size[0]
        scale = self._scale(height, width)
        return math.floor(height * scale), math.floor(width * scale)  # interpolate's recompute_scale_factor

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        rh, rw = self._resized(height, width)
        ph, pw = -(-rh // self.divisible) * self.divisible, -(-rw // self.divisible) * self.divisible
        if self.sizes.setdefault((ph, pw), (rh, rw)) != (rh, rw):
            raise VidpipeError(f"{self.name}: frames of two sizes resize to one padded input {pw}x{ph}; "
                               "run them separately")
        return ph, pw

    def preprocess(self, frames: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
        _, _, h, w = frames.shape
        mean, std = (constant_on(c, str(frames.device), torch.float32).view(1, 3, 1, 1) for c in (self.mean, self.std))
        x = (frames.float() / 255 - mean) / std
        rh, rw = self._resized(h, w)
        if self.fixed_size is not None:
            x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(x, scale_factor=self._scale(h, w), mode="bilinear", recompute_scale_factor=True,
                              align_corners=False)
        ph, pw = self.input_size(h, w)
        x = F.pad(x, (0, pw - rw, 0, ph - rh))
        return x.to(dtype).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def postprocess(self, outputs: tuple[torch.Tensor, ...], height: int, width: int) -> Detections:
        if self.batched is not None:
            boxes, labels, scores, counts = self.batched(*outputs, self.input_size(height, width),
                                                         self.fused).astuple()
        else:
            boxes, scores, labels, counts = outputs
        rh, rw = self._resized(height, width)
        # transform.postprocess: float32 ratios, x by the width's, y by the height's
        rx = float(torch.tensor(width, dtype=torch.float32) / torch.tensor(rw, dtype=torch.float32))
        ry = float(torch.tensor(height, dtype=torch.float32) / torch.tensor(rh, dtype=torch.float32))
        boxes = boxes.float().clone()
        boxes[..., 0::2] *= rx
        boxes[..., 1::2] *= ry
        return Detections(boxes, labels, scores.float(), counts)

    def candidates(self, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Class scores above ``score_thresh`` per frame (RetinaNet, SSD; before the top-k), or the
        detections kept (torchvision's own post-processing does not expose its candidates)."""
        if self.batched is None:
            return outputs[3]
        logits = outputs[0]
        probs = torch.softmax(logits, -1)[..., 1:] if _softmax(self.network.model) else torch.sigmoid(logits)
        return (probs > self.score_thresh).flatten(1).sum(1)

    @torch.no_grad()
    def reaim(self, frames: torch.Tensor, candidates: float, logit_std: float = 1.5) -> float:
        """Random weights: BatchNorm statistics from ``frames`` (:func:`_normalise_activations`), the
        class logits scaled to standard deviation ``logit_std`` (a fresh head
        gives every anchor and class about the same logit, so no shift could pick a load; FCOS's
        box distances get a bias of one anchor size), then
        shift every class logit's bias by one amount so that ``frames`` (uint8 ``[N, 3, H, W]`` on
        the CPU) give about ``candidates`` class scores per frame above ``score_thresh``; returns the
        load found."""
        convs = _class_convs(self.network.model)
        x = self.preprocess(frames, torch.float32, channels_last=False)
        _normalise_activations(self.network.model, x)
        if type(self.network.model).__name__ == "FCOS":  # fresh weights predict ~0 distances (point boxes):
            self.network.model.head.regression_head.bbox_reg.bias.fill_(1.0)  # make them about one anchor size
        for conv, _ in convs:
            conv.bias.zero_()
        logits = _class_logits(self.network.model, x)
        for conv, _ in convs:
            conv.weight *= logit_std / (logits.std() + 1e-12)
        logits *= logit_std / (logits.std() + 1e-12)
        sigmoid = not _softmax(self.network.model)

        def load(delta: float) -> float:
            z = logits + delta
            if sigmoid:
                p = torch.sigmoid(z)
            else:  # SSD: softmax with the background logit (column 0) left where it was
                z[..., 0] -= delta
                p = torch.softmax(z, -1)[..., 1:]
            return float((p > self.score_thresh).sum()) / len(frames)

        lo, hi = -30.0, 30.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if load(mid) < candidates else (lo, mid)
        for conv, classes in convs:
            bias = conv.bias.view(-1, classes)
            bias[:, 0 if sigmoid else 1:] += hi
        return load(hi)


def _normalise_activations(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Random weights: every BatchNorm's statistics from the preprocessed batch ``x`` (one cumulative
    pass through the backbone and head), so each normalises its activations. Left at their
    initial statistics, SSDlite's random MobileNet overflowed fp16 (non-finite logits: 0 candidates
    per frame on the H200, where fp32 had 500)."""
    batchnorm_statistics(model, lambda: model.head(_features(model, x)))


def _features(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's feature maps of the preprocessed batch ``x``, as the model's head takes them
    (``forward`` of RetinaNet, FCOS and SSD: a tensor or the values of an ordered dict)."""
    features = model.backbone(x)
    return [features] if isinstance(features, torch.Tensor) else list(features.values())


def _detections_per_img(model: torch.nn.Module) -> int:
    return int(getattr(model, "detections_per_img", None) or model.roi_heads.detections_per_img)


def _score_thresh(model: torch.nn.Module) -> float:
    return float(getattr(model, "score_thresh", None) or model.roi_heads.score_thresh)


def _softmax(model: torch.nn.Module) -> bool:
    return not hasattr(model.head, "classification_head") or not hasattr(model.head.classification_head,
                                                                           "cls_logits")


def _class_convs(model: torch.nn.Module) -> list[tuple[torch.nn.Conv2d, int]]:
    """The convolutions that produce class logits, with the classes per anchor."""
    head = getattr(model, "head", None)
    if head is None or not hasattr(head, "classification_head"):
        raise VidpipeError("--weights random: re-aiming is implemented for one-stage models (RetinaNet, FCOS, "
                           "SSD, SSDlite)")
    cls_head = head.classification_head
    if hasattr(cls_head, "cls_logits"):
        return [(cls_head.cls_logits, cls_head.num_classes)]
    convs = []
    for m in cls_head.module_list:
        conv = m if isinstance(m, torch.nn.Conv2d) else [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)][-1]
        convs.append((conv, cls_head.num_columns))
    return convs


def _class_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class logits of every anchor, ``[N, anchors, classes]``, for the preprocessed batch ``x``."""
    return model.head.classification_head(_features(model, x))

