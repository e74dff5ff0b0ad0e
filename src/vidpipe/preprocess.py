"""Batch preprocessing on the frames' device.

In:  ``Tensor[N, 3, H, W]`` uint8 RGB frames (any H, W; NCHW, as decoders deliver them).
Out: ``Tensor[N, 3, 300, 300]`` in the model's dtype, resized bilinearly and normalised, NCHW or
channels_last. ``normalize="imagenet"`` is NVIDIA's evaluation transform (mean/std of ImageNet);
``"symmetric"`` scales to [-1, 1] as torch.hub's SSD example does.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F

INPUT_SIZE = 300
Normalize = Literal["imagenet", "symmetric"]
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=None)
def _imagenet(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached per device: building them per batch would be a synchronising host-to-device copy.
    mean = torch.tensor(_MEAN).view(1, 3, 1, 1) * 255
    inv_std = 1.0 / (torch.tensor(_STD).view(1, 3, 1, 1) * 255)
    return mean.to(device), inv_std.to(device)


def preprocess(frames: torch.Tensor, *, dtype: torch.dtype = torch.float32,
               normalize: Normalize = "imagenet", channels_last: bool = False) -> torch.Tensor:
    if frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 Tensor[N, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    # Resize in float32 (bilinear on uint8 is not supported everywhere), then one fused normalise.
    x = frames.float()
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    if normalize == "imagenet":
        mean, inv_std = _imagenet(str(x.device))
        x = (x - mean) * inv_std
    elif normalize == "symmetric":
        x = x * (2.0 / 255) - 1.0
    else:
        raise ValueError(f"normalize must be 'imagenet' or 'symmetric', got {normalize!r}")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(dtype=dtype, memory_format=memory_format)
