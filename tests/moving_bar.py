"""A scene whose detections are known: a white bar crossing a black frame left to right, and a model
that finds it (the brightest column), registered as ``--model bar`` in the process that imports this."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from drawn_clip import encode_rgb
from vidpipe.models import register_model
from vidpipe.models.boxes import BoxesFamily

W, H, BAR = 160, 120, 10


def bar_clip(path: Path, frames: int = 48) -> Path:
    """``frames`` frames of a bar moving W / frames pixels a frame, then the clip ends (a loop restarts it)."""
    images = [np.zeros((H, W, 3), np.uint8) for _ in range(frames)]
    for i, img in enumerate(images):
        x = round(i * (W - BAR) / (frames - 1))
        img[:, x:x + BAR] = 255
    return encode_rgb(path, images, {"bf": "0", "crf": "18"})


class Bar(torch.nn.Module):
    """One box around the brightest column: [N, 1, 4], score 0.9, class 0."""

    def forward(self, x: torch.Tensor):
        columns = x.float().mean((1, 2))  # [N, W]
        centre = columns.argmax(1).float() + BAR / 2
        n = x.shape[0]
        boxes = torch.stack([centre - BAR / 2, torch.full_like(centre, 10.0), centre + BAR / 2,
                             torch.full_like(centre, H - 10.0)], 1)[:, None]
        return boxes, torch.full((n, 1), 0.9, device=x.device), torch.zeros((n, 1), dtype=torch.long, device=x.device)


def bar_family(config) -> BoxesFamily:  # module-level: worker processes build it by name too
    return BoxesFamily(Bar(), ["bar"])


register_model("bar", bar_family)
