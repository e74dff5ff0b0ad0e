"""Batch preprocessing on the frames' device.

In:  ``Tensor[N, 3, H, W]`` uint8 RGB frames (any H, W; NCHW, as decoders deliver them).
Out: ``Tensor[N, 3, 300, 300]`` in the model's dtype, resized bilinearly and normalised, NCHW or
channels_last. ``normalize="imagenet"`` is NVIDIA's evaluation transform (mean/std of ImageNet);
``"symmetric"`` scales to [-1, 1] as torch.hub's SSD example does.

On CUDA one Triton kernel reads the uint8 frames once and writes the normalised input (the
torch path materialises a float32 copy of the full-size frames first: 1.6 GB for 64 1080p
frames); it computes ``F.interpolate(mode="bilinear", align_corners=False)``'s formula.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs may lack Triton; the torch path serves them
    triton = None

INPUT_SIZE = 300
Normalize = Literal["imagenet", "symmetric"]
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _constants(normalize: Normalize) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel float32 ``mean`` and ``1 / std`` on the 0..255 scale: out = (x - mean) * inv_std."""
    if normalize == "imagenet":
        return torch.tensor(_MEAN) * 255, 1.0 / (torch.tensor(_STD) * 255)
    if normalize == "symmetric":
        return torch.full((3,), 127.5), torch.full((3,), 2.0 / 255)
    raise ValueError(f"normalize must be 'imagenet' or 'symmetric', got {normalize!r}")


@lru_cache(maxsize=None)
def _constants_on(normalize: Normalize, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached per device: building them per batch would be a synchronising host-to-device copy.
    mean, inv_std = _constants(normalize)
    return mean.view(1, 3, 1, 1).to(device), inv_std.view(1, 3, 1, 1).to(device)


if triton is not None:
    @triton.jit
    def _bilinear_channel(base, dst, y0, y1, x0, x1, hy, ly, hx, lx, ss_h, ss_w, mean, inv_std, valid):
        p00 = tl.load(base + y0 * ss_h + x0 * ss_w, mask=valid, other=0).to(tl.float32)
        p01 = tl.load(base + y0 * ss_h + x1 * ss_w, mask=valid, other=0).to(tl.float32)
        p10 = tl.load(base + y1 * ss_h + x0 * ss_w, mask=valid, other=0).to(tl.float32)
        p11 = tl.load(base + y1 * ss_h + x1 * ss_w, mask=valid, other=0).to(tl.float32)
        v = hy * (hx * p00 + lx * p01) + ly * (hx * p10 + lx * p11)
        tl.store(dst, ((v - mean) * inv_std).to(dst.dtype.element_ty), mask=valid)

    @triton.jit
    def _resize_normalize_kernel(src_ptr, out_ptr, H, W, scale_h, scale_w, m0, m1, m2, s0, s1, s2,
                                 ss_n, ss_c, ss_h, ss_w, so_n, so_c, so_h, so_w,
                                 OUT: tl.constexpr, BLOCK: tl.constexpr):
        # One program per (image, block of output pixels), all three channels.
        n = tl.program_id(0).to(tl.int64)
        p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        valid = p < OUT * OUT
        oy, ox = p // OUT, p % OUT
        sy = tl.maximum(scale_h * (oy.to(tl.float32) + 0.5) - 0.5, 0.0)
        sx = tl.maximum(scale_w * (ox.to(tl.float32) + 0.5) - 0.5, 0.0)
        y0, x0 = sy.to(tl.int32), sx.to(tl.int32)  # truncation is floor: both are >= 0
        y1, x1 = tl.minimum(y0 + 1, H - 1), tl.minimum(x0 + 1, W - 1)
        ly, lx = sy - y0, sx - x0
        hy, hx = 1.0 - ly, 1.0 - lx
        src, dst = src_ptr + n * ss_n, out_ptr + n * so_n + oy * so_h + ox * so_w
        _bilinear_channel(src, dst, y0, y1, x0, x1, hy, ly, hx, lx, ss_h, ss_w, m0, s0, valid)
        _bilinear_channel(src + ss_c, dst + so_c, y0, y1, x0, x1, hy, ly, hx, lx, ss_h, ss_w, m1, s1, valid)
        _bilinear_channel(src + 2 * ss_c, dst + 2 * so_c, y0, y1, x0, x1, hy, ly, hx, lx, ss_h, ss_w, m2, s2, valid)


def _preprocess_triton(frames: torch.Tensor, dtype: torch.dtype, normalize: Normalize,
                       channels_last: bool) -> torch.Tensor:
    n, _, h, w = frames.shape
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(n, 3, INPUT_SIZE, INPUT_SIZE, dtype=dtype, device=frames.device, memory_format=memory_format)
    mean, inv_std = (t.tolist() for t in _constants(normalize))
    block = 1024
    _resize_normalize_kernel[(n, triton.cdiv(INPUT_SIZE * INPUT_SIZE, block))](
        frames, out, h, w, h / INPUT_SIZE, w / INPUT_SIZE, *mean, *inv_std, *frames.stride(), *out.stride(),
        OUT=INPUT_SIZE, BLOCK=block, num_warps=4)
    return out


def preprocess(frames: torch.Tensor, *, dtype: torch.dtype = torch.float32,
               normalize: Normalize = "imagenet", channels_last: bool = False, fused: bool = True) -> torch.Tensor:
    """See the module docstring; ``fused=False`` forces the torch path (the reference)."""
    if frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 Tensor[N, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    if frames.is_cuda and triton is not None and fused:
        return _preprocess_triton(frames, dtype, normalize, channels_last)
    # Resize in float32 (bilinear on uint8 is not supported everywhere), then one fused normalise.
    x = frames.float()
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    mean, inv_std = _constants_on(normalize, str(x.device))
    x = (x - mean) * inv_std
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(dtype=dtype, memory_format=memory_format)
