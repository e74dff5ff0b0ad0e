"""Batched greedy NMS over candidates already sorted best first: the ``torchvision.ops.nms``
semantics (a box is suppressed by a kept, better box whose IoU with it is ``> iou_threshold``), for
every image of a batch at once, with static shapes.

In:  ``boxes Tensor[N, K, 4]`` float32 (x1, y1, x2, y2), best first per image; ``counts Tensor[N]``
int, the valid leading rows of each image (rows past it are ignored); ``iou_threshold``; ``limit``,
how many kept boxes an image may keep at most.
Out: ``kept Tensor[N, limit]`` int64, the kept rows of each image in order (best first), -1 past
``nkept Tensor[N]`` int64; on the input's device.

On CUDA one Triton program per image scans its candidates in tiles: a tile is first cleared of the
boxes that the image's already-kept boxes suppress (an IoU matrix per chunk of kept boxes), then
scanned greedily in registers; the scan stops once ``limit`` boxes are kept (only better boxes
suppress, so the first ``limit`` kept are final). Nothing waits for the GPU, so it runs inside a
captured CUDA graph. Elsewhere ``torchvision.ops.nms`` per image computes the same.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import at_least, fraction, validate

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs may lack Triton; torchvision's NMS serves them
    triton = None

CAPTURABLE = triton is not None  # on CUDA, greedy_nms then never waits for the GPU (CUDA graphs)

# Candidates per tile and kept boxes per chunk of the suppression matrix (a [CHUNK, TILE] tile of
# IoUs, 8,192 values over 8 warps). Chosen by bench/nms_sweep.py: 0.11-0.12 ms per batch of 64 at
# 500-6,300 candidates on an H100.
TILE = 512
CHUNK = 16


def greedy_nms(boxes: torch.Tensor, counts: torch.Tensor, iou_threshold: float, limit: int, fused: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """See the module docstring. Uses the Triton kernel for CUDA tensors when Triton is installed,
    unless ``fused=False`` (the torch path, which reads the counts on the host)."""
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or counts.shape != boxes.shape[:1]:
        raise ValueError(f"boxes must be Tensor[N, K, 4] and counts Tensor[N], got {tuple(boxes.shape)} and "
                         f"{tuple(counts.shape)}")
    validate("iou_threshold", iou_threshold, fraction)
    validate("limit", limit, at_least(1))
    if boxes.is_cuda and triton is not None and fused:
        return _greedy_nms_triton(boxes.float().contiguous(), counts, iou_threshold, limit)
    return _greedy_nms_torch(boxes.float(), counts, iou_threshold, limit)


def _greedy_nms_torch(boxes: torch.Tensor, counts: torch.Tensor, iou_threshold: float, limit: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.ops import nms

    n, k, _ = boxes.shape
    kept = torch.full((n, limit), -1, dtype=torch.int64, device=boxes.device)
    nkept = torch.zeros(n, dtype=torch.int64, device=boxes.device)
    # torchvision sorts by score: descending ranks reproduce the given order, ties included.
    rank = torch.arange(k, 0, -1, dtype=torch.float32, device=boxes.device)
    for i, c in enumerate(counts.clamp(max=k).tolist()):
        keep = nms(boxes[i, :c], rank[:c], iou_threshold)[:limit]
        kept[i, :len(keep)] = keep
        nkept[i] = len(keep)
    return kept, nkept


if triton is not None:
    @triton.jit
    def _iou_above(x1, y1, x2, y2, area, bx1, by1, bx2, by2, barea, thr_bits, TIE_UP: tl.constexpr):
        # torchvision's test: a float32 IoU against the float64 threshold, inter / union > thr. Not
        # by dividing: Triton's `/` is approximate (the IoU of identical boxes came out above 1.0),
        # the exact div_rn made the kernel 1.6x slower (bench/nms_sweep.py), and a
        # float32 threshold rounded up (0.3, 0.6) is not torchvision's. With m the midpoint between
        # the largest float32 <= thr and the next float32 (see _threshold), the rounded quotient is
        # above thr iff inter > m * union (>= where that midpoint rounds up), exact in float64 (24 x
        # 25 significant bits). union must be positive and finite, else the IoU is NaN, <= 0 or 0.
        # (Launched without fused multiply-adds, which torchvision's rounding lacks.)
        w = tl.maximum(tl.minimum(x2, bx2) - tl.maximum(x1, bx1), 0.0)
        h = tl.maximum(tl.minimum(y2, by2) - tl.maximum(y1, by1), 0.0)
        inter = w * h
        union = area + barea - inter
        bound = thr_bits.to(tl.float64, bitcast=True) * union.to(tl.float64)
        above = inter.to(tl.float64) > bound
        if TIE_UP:
            above = inter.to(tl.float64) >= bound
        return above & (union > 0.0) & (union <= 3.4028234663852886e38)

    @triton.jit
    def _greedy_nms_kernel(boxes_ptr, count_ptr, kept_ptr, nkept_ptr, K, thr_bits, LIMIT: tl.constexpr,
                           LIMIT_P2: tl.constexpr, TILE: tl.constexpr, CHUNK: tl.constexpr,
                           TIE_UP: tl.constexpr):
        img = tl.program_id(0)
        n = tl.minimum(tl.load(count_ptr + img).to(tl.int32), K)
        base = boxes_ptr + img.to(tl.int64) * K * 4
        kept_row = kept_ptr + img.to(tl.int64) * LIMIT
        offs = tl.arange(0, TILE)
        chunk = tl.arange(0, CHUNK)
        nk = 0
        start = 0
        while (start < n) & (nk < LIMIT):
            row = start + offs
            keep = row < n
            x1 = tl.load(base + row * 4 + 0, mask=keep, other=0.0)
            y1 = tl.load(base + row * 4 + 1, mask=keep, other=0.0)
            x2 = tl.load(base + row * 4 + 2, mask=keep, other=0.0)
            y2 = tl.load(base + row * 4 + 3, mask=keep, other=0.0)
            area = (x2 - x1) * (y2 - y1)
            for c0 in range(0, nk, CHUNK):  # boxes kept from earlier tiles suppress first
                ok = c0 + chunk < nk
                j = tl.load(kept_row + c0 + chunk, mask=ok, other=0)
                bx1 = tl.load(base + j * 4 + 0, mask=ok, other=0.0)[:, None]
                by1 = tl.load(base + j * 4 + 1, mask=ok, other=0.0)[:, None]
                bx2 = tl.load(base + j * 4 + 2, mask=ok, other=0.0)[:, None]
                by2 = tl.load(base + j * 4 + 3, mask=ok, other=0.0)[:, None]
                hit = _iou_above(x1[None, :], y1[None, :], x2[None, :], y2[None, :], area[None, :], bx1, by1, bx2,
                                 by2, (bx2 - bx1) * (by2 - by1), thr_bits, TIE_UP) & ok[:, None]
                keep = keep & (tl.max(hit.to(tl.int32), 0) == 0)
            i = tl.min(tl.where(keep, offs, TILE))
            while (i < TILE) & (nk < LIMIT):  # greedy inside the tile, best first
                bx1 = tl.load(base + (start + i) * 4 + 0)
                by1 = tl.load(base + (start + i) * 4 + 1)
                bx2 = tl.load(base + (start + i) * 4 + 2)
                by2 = tl.load(base + (start + i) * 4 + 3)
                hit = _iou_above(x1, y1, x2, y2, area, bx1, by1, bx2, by2, (bx2 - bx1) * (by2 - by1),
                                 thr_bits, TIE_UP)
                keep = keep & ~((offs > i) & hit)
                tl.store(kept_row + nk, (start + i).to(tl.int64))
                nk += 1
                i = tl.min(tl.where(keep & (offs > i), offs, TILE))
            start += TILE
            tl.debug_barrier()  # the next tile's threads read the kept rows stored here
        rest = tl.arange(0, LIMIT_P2)
        tl.store(kept_row + rest, tl.full(rest.shape, -1, tl.int64), mask=(rest >= nk) & (rest < LIMIT))
        tl.store(nkept_ptr + img, nk.to(tl.int64))


def _greedy_nms_triton(boxes: torch.Tensor, counts: torch.Tensor, iou_threshold: float, limit: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    n, k, _ = boxes.shape
    kept = torch.empty(n, limit, dtype=torch.int64, device=boxes.device)
    nkept = torch.empty(n, dtype=torch.int64, device=boxes.device)
    thr_bits, tie_up = _threshold(iou_threshold)
    _greedy_nms_kernel[(n,)](boxes, counts, kept, nkept, k, thr_bits, LIMIT=limit,
                             LIMIT_P2=triton.next_power_of_2(limit), TILE=TILE, CHUNK=CHUNK, TIE_UP=tie_up,
                             num_warps=8, enable_fp_fusion=False)
    return kept, nkept


def _threshold(thr: float) -> tuple[int, bool]:
    """A float64 IoU threshold ``thr`` >= 0 -> the float64 bits of the midpoint between the largest
    float32 ``lo <= thr`` and the next float32 ``hi``, and whether that midpoint rounds to ``hi``
    (ties to even: ``lo``'s last bit is odd). A float32 ``q`` is ``> thr`` iff ``q >= hi``, i.e.
    iff the exact quotient it was rounded from is above the midpoint, or on it and rounding up."""
    lo = np.float32(thr)  # rounded to nearest
    if float(lo) > thr:  # compared in float64 (a Python float would be cast to float32)
        lo = np.nextafter(lo, np.float32(0))
    mid = (float(lo) + float(np.nextafter(lo, np.float32(np.inf)))) / 2  # exact in float64
    return int(np.float64(mid).view(np.int64)), bool(lo.view(np.int32) & 1)
