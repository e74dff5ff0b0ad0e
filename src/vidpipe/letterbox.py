"""Ultralytics' letterbox on the frames' device, bit for bit.

In:  ``Tensor[N, 3, H, W]`` uint8 RGB frames; the scaled size ``(new_h, new_w)`` and the padding
``(top, bottom, left, right)`` (:func:`vidpipe.models.yolo.letterbox` computes them).
Out: ``Tensor[N, 3, new_h + top + bottom, new_w + left + right]`` in ``dtype``: the frames resized
as ``cv2.resize(INTER_LINEAR)`` resizes uint8 images, padded with 114, then ``/ 255`` in ``dtype``
as torch computes it on the frames' device (Ultralytics converts to the model's dtype first, then
divides), NCHW or channels_last.

OpenCV resizes uint8 in fixed point: per output column two source columns with 11-bit weights
(``round(2048 * (1 - f))``, ``round(2048 * f)``; the column clamped at the borders, its weight then
2048), a horizontal pass in int32, then per output row two source rows (their weights from the
unclamped position, the rows clamped) combined as its SIMD code does,
``(((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16) + 2) >> 2``. A float bilinear resize differs
from it by one level in about one pixel in ten on noise; a random network amplifies that.

On CUDA one Triton kernel reads each output pixel's four source pixels and writes the padded,
scaled input; elsewhere the same integer arithmetic in torch.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs may lack Triton; the torch path serves them
    triton = None

PAD_VALUE = 114
_ONE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE
# torch divides a CUDA tensor by a number as x * (1 / 255) in float32 (so Ultralytics' "/ 255" does
# on a GPU); the kernel does the same. (On the CPU torch divides: 126 of the 256 levels differ in
# float32, none once rounded to float16.)
_INV_255 = float(np.float32(1) / np.float32(255))


def _taps(src: int, dst: int, clamp_weights: bool) -> tuple[np.ndarray, ...]:
    """OpenCV's INTER_LINEAR taps for ``dst`` samples of ``src``: indices ``i0, i1`` and int weights
    ``w0, w1`` (summing to 2048). Columns (``clamp_weights``) get weight 2048 on the border pixel
    past the edges; rows keep the weights of the unclamped position."""
    f = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    i = np.floor(f).astype(np.int64)
    f = (f - i.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        f[(i < 0) | (i >= src - 1)] = 0
        i = np.clip(i, 0, src - 1)
    w0 = np.rint((np.float32(1) - f) * np.float32(_ONE)).astype(np.int32)  # cvRound: half to even
    w1 = np.rint(f * np.float32(_ONE)).astype(np.int32)
    return np.clip(i, 0, src - 1), np.clip(i + 1, 0, src - 1), w0, w1


@lru_cache(maxsize=64)
def _taps_on(src_h: int, src_w: int, new_h: int, new_w: int, device: str) -> tuple[torch.Tensor, ...]:
    # Cached per size and device: made per batch they would be host-to-device copies (none may run
    # in a CUDA graph; the graph's warm-up fills the cache).
    cols = _taps(src_w, new_w, clamp_weights=True)
    rows = _taps(src_h, new_h, clamp_weights=False)
    return tuple(torch.from_numpy(a).to(device) for a in (*cols, *rows))


if triton is not None:
    @triton.jit
    def _letterbox_kernel(src_ptr, out_ptr, xi0_ptr, xi1_ptr, xw0_ptr, xw1_ptr, yi0_ptr, yi1_ptr, yw0_ptr, yw1_ptr,
                          new_h, new_w, top, left, out_h, out_w, ss_n, ss_c, ss_h, ss_w, so_n, so_c, so_h, so_w,
                          INV_255, PAD: tl.constexpr, BLOCK: tl.constexpr):
        # One program per (image, block of output pixels), all three channels.
        n = tl.program_id(0).to(tl.int64)
        p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        valid = p < out_h * out_w
        y, x = p // out_w - top, p % out_w - left
        inside = valid & (y >= 0) & (y < new_h) & (x >= 0) & (x < new_w)
        y, x = tl.minimum(tl.maximum(y, 0), new_h - 1), tl.minimum(tl.maximum(x, 0), new_w - 1)
        xi0, xi1 = tl.load(xi0_ptr + x), tl.load(xi1_ptr + x)
        xw0, xw1 = tl.load(xw0_ptr + x), tl.load(xw1_ptr + x)
        yi0, yi1 = tl.load(yi0_ptr + y), tl.load(yi1_ptr + y)
        yw0, yw1 = tl.load(yw0_ptr + y), tl.load(yw1_ptr + y)
        dst = out_ptr + n * so_n + (p // out_w) * so_h + (p % out_w) * so_w
        for c in tl.static_range(3):
            base = src_ptr + n * ss_n + c * ss_c
            p00 = tl.load(base + yi0 * ss_h + xi0 * ss_w, mask=inside, other=0).to(tl.int32)
            p01 = tl.load(base + yi0 * ss_h + xi1 * ss_w, mask=inside, other=0).to(tl.int32)
            p10 = tl.load(base + yi1 * ss_h + xi0 * ss_w, mask=inside, other=0).to(tl.int32)
            p11 = tl.load(base + yi1 * ss_h + xi1 * ss_w, mask=inside, other=0).to(tl.int32)
            r0 = p00 * xw0 + p01 * xw1
            r1 = p10 * xw0 + p11 * xw1
            v = ((((r0 >> 4) * yw0) >> 16) + (((r1 >> 4) * yw1) >> 16) + 2) >> 2
            v = tl.where(inside, tl.minimum(tl.maximum(v, 0), 255), PAD)
            tl.store(dst + c * so_c, (v.to(tl.float32) * INV_255).to(dst.dtype.element_ty), mask=valid)


def _letterbox_triton(frames: torch.Tensor, new_h: int, new_w: int, pad: tuple[int, int, int, int],
                      dtype: torch.dtype, memory_format: torch.memory_format) -> torch.Tensor:
    n, _, h, w = frames.shape
    top, bottom, left, right = pad
    out_h, out_w = new_h + top + bottom, new_w + left + right
    out = torch.empty(n, 3, out_h, out_w, dtype=dtype, device=frames.device, memory_format=memory_format)
    block = 1024  # as the SSD resize kernel, which reads frames the same way
    _letterbox_kernel[(n, triton.cdiv(out_h * out_w, block))](
        frames, out, *_taps_on(h, w, new_h, new_w, str(frames.device)), new_h, new_w, top, left, out_h, out_w,
        *frames.stride(), *out.stride(), _INV_255, PAD=PAD_VALUE, BLOCK=block, num_warps=4)
    return out


def letterbox(frames: torch.Tensor, new_h: int, new_w: int, pad: tuple[int, int, int, int], dtype: torch.dtype,
              channels_last: bool = False, fused: bool = True) -> torch.Tensor:
    """See the module docstring; ``pad`` is ``(top, bottom, left, right)``; ``fused=False`` forces
    the torch path."""
    if frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 Tensor[N, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if frames.is_cuda and triton is not None and fused:
        return _letterbox_triton(frames, new_h, new_w, pad, dtype, memory_format)
    n, _, h, w = frames.shape
    top, bottom, left, right = pad
    xi0, xi1, xw0, xw1, yi0, yi1, yw0, yw1 = _taps_on(h, w, new_h, new_w, str(frames.device))

    def rows(index: torch.Tensor) -> torch.Tensor:  # the horizontal pass on the rows one tap reads
        r = frames[:, :, index].int()
        return r[..., xi0] * xw0 + r[..., xi1] * xw1

    v = ((((rows(yi0) >> 4) * yw0[:, None]) >> 16) + (((rows(yi1) >> 4) * yw1[:, None]) >> 16) + 2) >> 2
    x = F.pad(v.clamp_(0, 255), (left, right, top, bottom), value=PAD_VALUE)
    return x.to(dtype).div_(255).contiguous(memory_format=memory_format)
