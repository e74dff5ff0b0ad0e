"""NVIDIA's SSD300 as a :class:`~vidpipe.models.ModelFamily`.

Frames -> 300x300 bilinear resize + ImageNet normalisation (one Triton kernel on CUDA, see
:mod:`vidpipe.preprocess`) -> :class:`~vidpipe.model.SSD300` (``locs [N, 4, 8732]``, ``scores
[N, 81, 8732]``) -> ``ssd_decode`` with NVIDIA's semantics (softmax, per-class candidates above
``candidate_threshold``, per-class NMS, the ``max_detections`` best across classes, scores below
``score_threshold`` dropped) -> boxes scaled to the frame. Class ids are SSD's labels 1..80.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..coco import SSD300_CLASSES
from ..config import Config
from ..model import SSD300
from ..postprocess import Detections, class_probs, restrict_classes, ssd_decode_loop, ssd_decode_padded
from ..preprocess import INPUT_SIZE, preprocess
from ..profiling import nvtx_range

# NVIDIA's evaluation settings for ssd_decode (its COCO mAP figures use these).
SCORE_THRESHOLD = 0.3
IOU_THRESHOLD = 0.5
MAX_DETECTIONS = 20
RANDOM_CANDIDATES = 2000  # per frame, for --weights random: about what NVIDIA's weights give on street video


class SSD300Family:
    name = "ssd300"
    classes = SSD300_CLASSES
    random_load = RANDOM_CANDIDATES

    def __init__(self, network: SSD300, config: Config) -> None:
        self.network = network
        self.config = config
        self.max_detections = config.max_detections or MAX_DETECTIONS
        self.fused = config.kernels != "torch"  # Triton kernels on CUDA; else the torch ops (host reads)
        self.decode = dict(candidate_threshold=config.candidate_threshold,
                           iou_threshold=config.iou_threshold if config.iou_threshold is not None else IOU_THRESHOLD,
                           max_detections=self.max_detections, per_class_candidates=config.per_class_candidates,
                           score_threshold=config.score_threshold if config.score_threshold is not None
                           else SCORE_THRESHOLD)

    @classmethod
    def from_config(cls, config: Config, network: SSD300 | None = None) -> SSD300Family:
        from ..weights import load_model

        if network is None:
            network = load_model(config.weights, random_candidates=config.random_candidates or RANDOM_CANDIDATES,
                                 random_classes=config.random_classes, seed=config.seed)
        return cls(network, config)

    @property
    def graph_postprocess(self) -> bool:
        return self.config.postprocess == "gpu" and self.fused

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return INPUT_SIZE, INPUT_SIZE

    def preprocess(self, frames: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
        return preprocess(frames, dtype=dtype, normalize=self.config.normalize, channels_last=channels_last,
                          fused=self.fused)

    def postprocess(self, outputs: tuple[torch.Tensor, ...], height: int, width: int) -> Detections:
        locs, scores = outputs
        with nvtx_range("postprocess"):
            if self.config.postprocess == "gpu":
                det = ssd_decode_padded(locs, scores, nms="auto" if self.fused else "torch", **self.decode)
            else:
                results = ssd_decode_loop(locs, scores, host_copy=self.config.postprocess == "loop_host",
                                          **self.decode)
                det = pad_results(results, self.max_detections)
            det.boxes[..., 0::2] *= width  # scalars: a scale tensor would be a synchronising copy
            det.boxes[..., 1::2] *= height
            if self.config.classes is not None:
                det = restrict_classes(det, self.config.classes)
        return det

    def candidates(self, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(box, class) scores above the candidate threshold, per frame."""
        return (class_probs(outputs[1])[:, 1:] > self.config.candidate_threshold).sum((1, 2))

    @property
    def random(self) -> bool:
        return self.config.weights == "random"

    def reaim(self, frames: torch.Tensor, candidates: float) -> float:
        """Random weights only: re-aim the class head so that ``frames`` (uint8 ``[N, 3, H, W]`` on the
        CPU) give about ``candidates`` candidates per frame; returns the load found."""
        from ..weights import calibrate_candidates

        return calibrate_candidates(self.network, preprocess(frames), candidates, self.config.candidate_threshold)

    def save(self, path: Path) -> dict:
        """Write the weights for another process; returns the Config changes that load them."""
        from ..weights import save_checkpoint

        save_checkpoint(self.network, path)
        return {"weights": str(path)}


def pad_results(results: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], d: int) -> Detections:
    """Per-image ``(boxes, labels, scores)`` -> padded :class:`Detections` on the CPU."""
    n = len(results)
    out = Detections(torch.zeros(n, d, 4), torch.zeros(n, d, dtype=torch.int64), torch.zeros(n, d),
                     torch.tensor([len(l) for _, l, _ in results], dtype=torch.int64))
    for i, (b, l, s) in enumerate(results):
        out.boxes[i, :len(l)], out.labels[i, :len(l)], out.scores[i, :len(l)] = b.cpu(), l.cpu(), s.cpu()
    return out
