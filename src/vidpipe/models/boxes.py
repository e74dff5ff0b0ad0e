"""A user's own detector as a :class:`~vidpipe.models.ModelFamily`: any ``nn.Module`` that maps a
batch of images to boxes, scores and labels.

The network gets ``Tensor[N, 3, h, w]`` RGB in the model's dtype: the frames resized (bilinear) to
``input_size`` (or left at their own size when None), scaled to [0, 1], then ``(x - mean) / std``.
It returns ``(boxes [N, D, 4], scores [N, D], labels [N, D])``: boxes x1, y1, x2, y2 in pixels of
its input, any fixed ``D``. vidpipe keeps the detections scoring above ``score_threshold``, best
first, at most ``max_detections``, and scales their boxes to the frame. All of it has static shapes,
so the whole chain is captured in CUDA graphs; batching, NVDEC, compile, worker processes and the
sinks apply unchanged::

    family = BoxesFamily(MyDetector(), classes=["person", "car"], input_size=(640, 640))
    det = vidpipe.Detector(vidpipe.Config(), model=family)
    for r in vidpipe.detect("video.mp4", det): ...

or register it by name for ``vidpipe detect --model NAME`` from Python
(:func:`~vidpipe.models.register_model`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..coco import Classes
from ..config import at_least, fraction, validate
from ..postprocess import Detections, constant_on


class BoxesFamily:
    graph_postprocess = True
    random = False

    def __init__(self, network: torch.nn.Module, classes: list[str] | tuple[str, ...], *,
                 input_size: tuple[int, int] | None = None, mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 std: tuple[float, float, float] = (1.0, 1.0, 1.0), score_threshold: float = 0.25,
                 max_detections: int = 100, name: str = "custom") -> None:
        validate("score_threshold", score_threshold, fraction)
        validate("max_detections", max_detections, at_least(1))
        self.network, self.classes, self.name = network, Classes.from_names(classes), name
        self.size = input_size
        # On the 0..255 scale, in float32 (the values constant_on puts on the device)
        self.mean = tuple((torch.tensor(mean) * 255).tolist())
        self.scale = tuple((1 / (torch.tensor(std) * 255)).tolist())
        self.score_threshold, self.max_detections = score_threshold, max_detections

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return self.size or (height, width)

    def preprocess(self, frames: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
        x = frames.float()
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        mean, scale = (constant_on(c, str(x.device), torch.float32).view(1, 3, 1, 1) for c in (self.mean, self.scale))
        x = ((x - mean) * scale).to(dtype)
        return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def postprocess(self, outputs: tuple[torch.Tensor, ...], height: int, width: int) -> Detections:
        boxes, scores, labels = outputs
        keep = scores.float() > self.score_threshold
        ranked = torch.where(keep, scores.float(), -1.0).sort(dim=1, descending=True, stable=True)
        top = ranked.indices[:, :self.max_detections]
        valid = torch.arange(top.shape[1], device=top.device) < keep.sum(1, keepdim=True)
        zero = torch.zeros((), device=boxes.device)
        in_h, in_w = self.input_size(height, width)
        scaled = boxes.float().gather(1, top[..., None].expand(-1, -1, 4))
        scaled[..., 0::2] *= width / in_w  # Python scalars: a tensor of scales would be a host copy per batch
        scaled[..., 1::2] *= height / in_h
        return Detections(torch.where(valid[..., None], scaled, zero),
                          torch.where(valid, labels.long().gather(1, top), 0),
                          torch.where(valid, ranked.values[:, :self.max_detections], zero),
                          valid.sum(1))

    def candidates(self, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Detections scoring above the threshold, per frame, before ``max_detections``."""
        return (outputs[1].float() > self.score_threshold).sum(1)
