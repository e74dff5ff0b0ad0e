"""SSD300 default (anchor) boxes, exactly as NVIDIA's ``dboxes300_coco``.

Out: ``Tensor[8732, 4]`` float32, (cx, cy, w, h) normalised to [0, 1], clamped to [0, 1],
ordered feature map by feature map (38, 19, 10, 5, 3, 1), then box shape, then row, then column:
the order in which ``SSD300.forward`` flattens its head outputs.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from math import sqrt

import torch

FIGURE_SIZE = 300
FEATURE_SIZES = (38, 19, 10, 5, 3, 1)
STEPS = (8, 16, 32, 64, 100, 300)
SCALES = (21, 45, 99, 153, 207, 261, 315)
ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SCALE_XY = 0.1
SCALE_WH = 0.2
NUM_BOXES = 8732


@lru_cache(maxsize=None)
def _default_boxes_cpu() -> torch.Tensor:
    boxes: list[tuple[float, float, float, float]] = []
    for idx, fsize in enumerate(FEATURE_SIZES):
        fk = FIGURE_SIZE / STEPS[idx]
        sk1 = SCALES[idx] / FIGURE_SIZE
        sk2 = SCALES[idx + 1] / FIGURE_SIZE
        sk3 = sqrt(sk1 * sk2)
        sizes = [(sk1, sk1), (sk3, sk3)]
        for alpha in ASPECT_RATIOS[idx]:
            w, h = sk1 * sqrt(alpha), sk1 / sqrt(alpha)
            sizes += [(w, h), (h, w)]
        for w, h in sizes:
            for i, j in itertools.product(range(fsize), repeat=2):
                boxes.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
    out = torch.tensor(boxes, dtype=torch.float32).clamp_(0, 1)
    assert out.shape == (NUM_BOXES, 4)
    return out


def default_boxes(device: torch.device | str = "cpu") -> torch.Tensor:
    """The 8732 default boxes as ``Tensor[8732, 4]`` (cx, cy, w, h), float32, on ``device``
    (cached: a host-to-device copy per batch would stall the GPU pipeline)."""
    return _default_boxes_on(str(torch.device(device)))


@lru_cache(maxsize=None)
def _default_boxes_on(device: str) -> torch.Tensor:
    return _default_boxes_cpu().to(device)
