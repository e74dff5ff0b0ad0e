"""NV12 frames to RGB on their device: what FFmpeg's NVDEC decoding hands over, as the engine reads it.

In: a frame's luma ``uint8[H, W]`` and interleaved chroma ``uint8[ceil(H/2), ceil(W/2), 2]`` (Cb, Cr),
any strides (FFmpeg's CUDA frames are pitched), and the frame's colour matrix and range. Out:
``uint8[3, H, W]`` RGB, contiguous, on the same device and the current stream.

The conversion is FFmpeg's for the same frame (``VideoFrame.to_ndarray(format="rgb24")``): the
frame's matrix (BT.709 when it says so, BT.601 otherwise), limited range unless the frame says
full, each chroma sample shared by its 2x2 pixels, in exact arithmetic (FFmpeg's fixed-point
conversion lands about one level lower on average). On CUDA one Triton kernel reads each plane
once; torch ops elsewhere (the reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs may lack Triton; the torch path serves them
    triton = None


@dataclass(frozen=True)
class Matrix:
    """RGB = ((Y - y0) * ys) + Cr * rv, - Cb * gu - Cr * gv, + Cb * bu, with Cb, Cr = (U, V - 128) * cs."""

    y0: float
    ys: float
    cs: float
    rv: float
    gu: float
    gv: float
    bu: float


@lru_cache(maxsize=None)
def matrix(bt709: bool = False, full_range: bool = False) -> Matrix:
    """The conversion for a frame whose colour matrix is BT.709 (else BT.601's coefficients, FFmpeg's
    choice for every other and for an unspecified one) and whose range is full (else limited)."""
    kr, kb = (0.2126, 0.0722) if bt709 else (0.299, 0.114)
    kg = 1.0 - kr - kb
    y0, ys, cs = (0.0, 1.0, 1.0) if full_range else (16.0, 255.0 / 219.0, 255.0 / 224.0)
    return Matrix(y0, ys, cs, 2 * (1 - kr), 2 * kb * (1 - kb) / kg, 2 * kr * (1 - kr) / kg, 2 * (1 - kb))


def nv12_to_rgb_torch(y: torch.Tensor, uv: torch.Tensor, m: Matrix) -> torch.Tensor:
    """The reference: ``uint8[3, H, W]``."""
    h, w = y.shape
    chroma = uv.float().repeat_interleave(2, 0).repeat_interleave(2, 1)[:h, :w]
    cb, cr = (chroma[..., 0] - 128.0) * m.cs, (chroma[..., 1] - 128.0) * m.cs
    luma = (y.float() - m.y0) * m.ys
    rgb = torch.stack([luma + m.rv * cr, luma - m.gu * cb - m.gv * cr, luma + m.bu * cb])
    return rgb.round_().clamp_(0, 255).to(torch.uint8)


if triton is not None:
    @triton.jit
    def _nv12_kernel(y_ptr, uv_ptr, out_ptr, H, W, y_stride, uv_stride, y0, ys, cs, rv, gu, gv, bu,
                     BLOCK: tl.constexpr):
        # One program per (row, block of columns): each luma sample once, its chroma pair beside it.
        r = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        valid = c < W
        luma = (tl.load(y_ptr + r * y_stride + c, mask=valid, other=0).to(tl.float32) - y0) * ys
        chroma = uv_ptr + (r // 2) * uv_stride + (c // 2) * 2
        cb = (tl.load(chroma, mask=valid, other=128).to(tl.float32) - 128.0) * cs
        cr = (tl.load(chroma + 1, mask=valid, other=128).to(tl.float32) - 128.0) * cs
        out = out_ptr + r * W + c
        plane = H * W
        # + 0.5 and truncation: rounding half up, where torch.round (the reference) rounds half to even
        tl.store(out, (tl.minimum(tl.maximum(luma + rv * cr, 0.0), 255.0) + 0.5).to(tl.uint8), mask=valid)
        tl.store(out + plane, (tl.minimum(tl.maximum(luma - gu * cb - gv * cr, 0.0), 255.0) + 0.5).to(tl.uint8),
                 mask=valid)
        tl.store(out + 2 * plane, (tl.minimum(tl.maximum(luma + bu * cb, 0.0), 255.0) + 0.5).to(tl.uint8), mask=valid)


def nv12_to_rgb(y: torch.Tensor, uv: torch.Tensor, m: Matrix) -> torch.Tensor:
    """``uint8[3, H, W]`` RGB of one NV12 frame (see the module docstring), on the current stream."""
    if (y.dtype != torch.uint8 or uv.dtype != torch.uint8 or y.dim() != 2 or uv.dim() != 3 or uv.shape[-1] != 2
            or uv.shape[0] * 2 < y.shape[0] or uv.shape[1] * 2 < y.shape[1]
            or y.stride(1) != 1 or uv.stride(2) != 1 or uv.stride(1) != 2):
        raise ValueError(f"not an NV12 frame: luma {tuple(y.shape)}, chroma {tuple(uv.shape)}")
    if not (y.is_cuda and triton is not None):
        return nv12_to_rgb_torch(y, uv, m)
    return _nv12_to_rgb_triton(y, uv, m)


def _nv12_to_rgb_triton(y: torch.Tensor, uv: torch.Tensor, m: Matrix, block: int = 1024) -> torch.Tensor:
    h, w = y.shape
    out = torch.empty(3, h, w, dtype=torch.uint8, device=y.device)
    _nv12_kernel[(h, triton.cdiv(w, block))](y, uv, out, h, w, y.stride(0), uv.stride(0),
                                             m.y0, m.ys, m.cs, m.rv, m.gu, m.gv, m.bu, BLOCK=block)
    return out
