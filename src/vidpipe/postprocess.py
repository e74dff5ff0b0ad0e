"""SSD300 post-processing with NVIDIA's reference semantics, for a whole batch on the GPU.

In:  ``locs Tensor[N, 4, 8732]`` and ``scores Tensor[N, 81, 8732]`` straight from the model (any
float dtype; computed in float32). Out: per image, at most ``max_detections`` detections as
``boxes Tensor[D, 4]`` (normalised left, top, right, bottom), ``labels Tensor[D]`` int64 in 1..80 and
``scores Tensor[D]`` float32, sorted by score, descending.

Semantics (NVIDIA ``Encoder.decode_single`` followed by the hub example's ``pick_best``): decode the
boxes against the default boxes, softmax over the 81 labels; for each class 1..80 keep the
``per_class_candidates`` best scores above ``candidate_threshold``, greedy NMS inside the class
suppressing every lower-scored box whose IoU with a kept box is >= ``iou_threshold`` (or NaN); keep
the ``max_detections`` best over all classes and drop those with score <= ``score_threshold``.
Ties, which NVIDIA's code leaves to its sort, are broken by the lower default-box index inside a
class and by the lower label across classes.

The fast path issues no host synchronisation. On CUDA five Triton kernels do the work: box
decoding; one read of the logits per block of boxes for the log-sum-exp over labels, which also
appends every candidate's (score, box) key to its (image, class) row; one program per (image,
class) that sorts the row's keys (a bit-wise binary search for the K-th score only past 4 x K
candidates, K rounded up to a power of two) and gathers their boxes; one for greedy NMS in
registers, which stops once the row has as many kept boxes as an image may keep; and one per
image that sorts the rows' kept keys and writes the best. Elsewhere ``topk`` over (score, index)
keys and a vectorised torch NMS loop compute the same. The result stays padded on the device
until :meth:`Detections.split`.
"""

from __future__ import annotations

from functools import lru_cache

from dataclasses import dataclass
from typing import Literal

import torch

from .boxes import NUM_BOXES, SCALE_WH, SCALE_XY, default_boxes
from .config import at_least, below_one, fraction, one_of, validate

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # CPU-only installs may lack Triton; the torch NMS serves them
    triton = None

NmsImpl = Literal["auto", "triton", "torch"]

# Sort keys, the one layout every kernel and its torch twin share: a non-negative float32 score's bits
# order like the score (and are < 2**30 up to 1.0), so (bits << 32) | (n - 1 - index) is a unique
# int64 that sorts best score first, ties to the lower index; -1 marks "no entry".
_INDEX_BITS = 32


def pack_keys(scores: torch.Tensor, index: torch.Tensor | int, n: int) -> torch.Tensor:
    """Keys of float32 ``scores`` (>= 0) at ``index`` in ``[0, n)`` (see ``_key``)."""
    return (scores.contiguous().view(torch.int32).to(torch.int64) << _INDEX_BITS) | (n - 1 - index)


def key_index(keys: torch.Tensor, n: int) -> torch.Tensor:
    """The index a key was packed with (``_key_index``)."""
    return (n - 1) - (keys & ((1 << _INDEX_BITS) - 1))


@dataclass
class Detections:
    """A batch of detections, padded to ``max_detections`` per image, on one device.

    boxes: ``Tensor[N, D, 4]`` float32 ltrb (normalised out of ``ssd_decode``; pixels of the frame
    once a family's ``postprocess`` has scaled them, as the detector returns them); labels: ``Tensor[N, D]`` int64;
    scores: ``Tensor[N, D]`` float32, descending per image; counts: ``Tensor[N]`` int64, the number
    of valid leading entries of each image (rows past it are padding).
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    counts: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Detections:
        return Detections(*(t.to(device, non_blocking=non_blocking) for t in self.astuple()))

    def astuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.boxes, self.labels, self.scores, self.counts

    def split(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One ``(boxes[D_i, 4], labels[D_i], scores[D_i])`` per image (synchronises once)."""
        return [(b[:c], l[:c], s[:c]) for b, l, s, c in
                zip(self.boxes, self.labels, self.scores, self.counts.tolist())]


@lru_cache(maxsize=None)
def constant_on(values: tuple[float, ...], device: str, dtype: torch.dtype) -> torch.Tensor:
    """``values`` as a ``dtype`` tensor on ``device``, made once per device."""
    # Cached per device: built per batch it would be a host-to-device copy (none may run in a graph).
    return torch.tensor(values, dtype=dtype, device=device)


def classes_on(classes: tuple[int, ...], device: str) -> torch.Tensor:
    """``classes`` as an int64 tensor on ``device``, made once per device."""
    return constant_on(classes, device, torch.int64)


def restrict_classes(det: Detections, classes: tuple[int, ...]) -> Detections:
    """Only the detections whose label is in ``classes``, still best first. Static shapes and no
    host synchronisation, so it runs inside a captured CUDA graph."""
    d = det.labels.shape[1]
    keep = torch.isin(det.labels, classes_on(classes, str(det.labels.device)))
    keep &= torch.arange(d, device=keep.device) < det.counts[:, None]
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices  # kept rows first, in order
    return Detections(det.boxes.gather(1, order[..., None].expand(-1, -1, 4)), det.labels.gather(1, order),
                      det.scores.gather(1, order), keep.sum(1))


def kept_detections(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, kept: torch.Tensor
                    ) -> Detections:
    """The rows ``kept`` (``Tensor[N, D]`` int64, -1 past the last, as :func:`~vidpipe.nms.greedy_nms`
    returns them) of candidates ``boxes [N, K, 4]``, ``labels [N, K]``, ``scores [N, K]``, zeros
    past each image's count. Static shapes: it runs inside a captured CUDA graph."""
    valid = kept >= 0
    rows = kept.clamp(min=0)
    zero = torch.zeros((), device=boxes.device)
    return Detections(torch.where(valid[..., None], boxes.float().gather(1, rows[..., None].expand(-1, -1, 4)), zero),
                      torch.where(valid, labels.gather(1, rows), 0),
                      torch.where(valid, scores.float().gather(1, rows), zero),
                      valid.sum(1))


def decode_boxes(locs: torch.Tensor, dboxes: torch.Tensor) -> torch.Tensor:
    """``locs Tensor[N, 4, A]`` offsets -> ``Tensor[N, A, 4]`` ltrb boxes, float32 (NVIDIA's
    ``scale_back_batch``, with its operation order so results match it bit for bit on the CPU)."""
    loc = locs.float().permute(0, 2, 1)
    d = dboxes.unsqueeze(0)
    xy = (SCALE_XY * loc[..., :2]) * d[..., 2:] + d[..., :2]
    wh = (SCALE_WH * loc[..., 2:]).exp() * d[..., 2:]
    return torch.cat([xy - 0.5 * wh, xy + 0.5 * wh], dim=-1)


def class_probs(scores: torch.Tensor) -> torch.Tensor:
    """``scores Tensor[N, C, A]`` logits -> softmax over the C labels, float32, same layout;
    computed along a contiguous label axis, as NVIDIA's code does, so values match it exactly."""
    return torch.softmax(scores.float().transpose(1, 2), dim=-1).transpose(1, 2)


def _topk_keys(scores: torch.Tensor, k: int, valid: torch.Tensor) -> torch.Tensor:
    """Indices of the ``k`` best entries along the last axis, best first, ties to the lower index.

    ``scores`` are float32 in [0, 1], whose bit patterns order like the values, so
    (bits << 32) | (reversed index) is a unique int64 key; invalid entries get key -1.
    """
    n = scores.shape[-1]
    keys = pack_keys(scores, torch.arange(n, device=scores.device, dtype=torch.int64), n)
    keys = torch.where(valid, keys, torch.full_like(keys, -1))
    top = keys.topk(min(k, n), dim=-1, sorted=True).values
    return torch.where(top >= 0, key_index(top, n), torch.full_like(top, -1))


def _iou_not_below(a: torch.Tensor, b: torch.Tensor, thr: float) -> torch.Tensor:
    """``a Tensor[..., K, 4]``, ``b Tensor[..., M, 4]`` -> bool ``[..., K, M]``: not (IoU < thr)."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iou = inter / (area_a[..., :, None] + area_b[..., None, :] - inter)
    return ~(iou < thr)


def _nms_torch(boxes: torch.Tensor, valid: torch.Tensor, thr: float) -> torch.Tensor:
    """Greedy NMS for each row: ``boxes Tensor[R, K, 4]`` sorted best first, ``valid Tensor[R, K]``
    bool (a prefix) -> kept ``Tensor[R, K]`` bool. Reads the candidate count on the host."""
    keep = valid.clone()
    for rows in valid.any(1).nonzero().squeeze(1).split(1024):  # bounds the [rows, K, K] IoU
        if rows.numel() == 0:
            continue
        k = int(valid[rows].sum(1).max())
        sub_keep = keep[rows, :k]
        suppress = _iou_not_below(boxes[rows, :k], boxes[rows, :k], thr).triu_(diagonal=1)
        for i in range(k - 1):
            sub_keep[:, i + 1:] &= ~(sub_keep[:, i, None] & suppress[:, i, i + 1:])
        keep[rows, :k] = sub_keep
    return keep


if triton is not None:
    @triton.jit
    def _key(bits, index, n):
        # pack_keys' twin, from a score's int32 bits
        return (bits.to(tl.int64) << 32) | (n - 1 - index).to(tl.int64)

    @triton.jit
    def _key_index(key, n):
        return n - 1 - (key & 0xFFFFFFFF)

    @triton.jit
    def _key_score(key):
        return (key >> 32).to(tl.int32).to(tl.float32, bitcast=True)

    @triton.jit
    def _boxes_kernel(locs_ptr, dbox_ptr, out_ptr, A, scale_xy, scale_wh, BLOCK: tl.constexpr):
        # decode_boxes for a block of one image's boxes, operation for operation: the _rn
        # intrinsics keep the compiler from fusing multiply-adds, libdevice's exp is CUDA's expf.
        n = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < A
        loc = locs_ptr + n.to(tl.int64) * 4 * A + offs
        lx = tl.load(loc, mask=m, other=0.0).to(tl.float32)
        ly = tl.load(loc + A, mask=m, other=0.0).to(tl.float32)
        lw = tl.load(loc + 2 * A, mask=m, other=0.0).to(tl.float32)
        lh = tl.load(loc + 3 * A, mask=m, other=0.0).to(tl.float32)
        dx = tl.load(dbox_ptr + offs * 4 + 0, mask=m, other=0.0)
        dy = tl.load(dbox_ptr + offs * 4 + 1, mask=m, other=0.0)
        dw = tl.load(dbox_ptr + offs * 4 + 2, mask=m, other=0.0)
        dh = tl.load(dbox_ptr + offs * 4 + 3, mask=m, other=0.0)
        cx = libdevice.add_rn(libdevice.mul_rn(libdevice.mul_rn(lx, scale_xy), dw), dx)
        cy = libdevice.add_rn(libdevice.mul_rn(libdevice.mul_rn(ly, scale_xy), dh), dy)
        hw = 0.5 * libdevice.mul_rn(libdevice.exp(libdevice.mul_rn(lw, scale_wh)), dw)
        hh = 0.5 * libdevice.mul_rn(libdevice.exp(libdevice.mul_rn(lh, scale_wh)), dh)
        out = out_ptr + (n.to(tl.int64) * A + offs) * 4
        tl.store(out + 0, libdevice.sub_rn(cx, hw), mask=m)
        tl.store(out + 1, libdevice.sub_rn(cy, hh), mask=m)
        tl.store(out + 2, libdevice.add_rn(cx, hw), mask=m)
        tl.store(out + 3, libdevice.add_rn(cy, hh), mask=m)

    @triton.jit
    def _nms_kernel(boxes_ptr, score_ptr, count_ptr, key_ptr, thr, LABELS: tl.constexpr, K: tl.constexpr,
                    KB: tl.constexpr, DR: tl.constexpr):
        # One program per (image, class) row; the row's candidates live in registers and the greedy
        # scan visits the kept ones best first, jumping over suppressed ones. The _rn intrinsics stop
        # fused multiply-adds and approximate division so IoU rounds exactly like the float32 reference.
        # Out: the row's DR best kept boxes as cross-class keys (score bits, reversed label * K + rank),
        # -1 padded. A box is final once the scan reaches it (only better boxes suppress), and an
        # image keeps at most DR detections, so the scan stops after DR kept boxes.
        row = tl.program_id(0)
        n = tl.minimum(tl.load(count_ptr + row), K)
        offs = tl.arange(0, KB)
        inb = offs < n
        base = boxes_ptr + row.to(tl.int64) * KB * 4
        x1 = tl.load(base + offs * 4 + 0, mask=inb, other=0.0)
        y1 = tl.load(base + offs * 4 + 1, mask=inb, other=0.0)
        x2 = tl.load(base + offs * 4 + 2, mask=inb, other=0.0)
        y2 = tl.load(base + offs * 4 + 3, mask=inb, other=0.0)
        area = libdevice.mul_rn(x2 - x1, y2 - y1)
        keep = inb
        i = tl.min(tl.where(keep, offs, KB))
        visited = 0
        while (i < n) & (visited < DR):
            bx1 = tl.load(base + i * 4 + 0)
            by1 = tl.load(base + i * 4 + 1)
            bx2 = tl.load(base + i * 4 + 2)
            by2 = tl.load(base + i * 4 + 3)
            barea = libdevice.mul_rn(bx2 - bx1, by2 - by1)
            w = tl.maximum(tl.minimum(x2, bx2) - tl.maximum(x1, bx1), 0.0)
            h = tl.maximum(tl.minimum(y2, by2) - tl.maximum(y1, by1), 0.0)
            inter = libdevice.mul_rn(w, h)
            union = libdevice.sub_rn(libdevice.add_rn(area, barea), inter)
            iou = libdevice.div_rn(inter, union)
            keep = keep & ~((offs > i) & ~(iou < thr))
            i = tl.min(tl.where(keep & (offs > i), offs, KB))
            visited += 1
        bits = tl.load(score_ptr + row.to(tl.int64) * KB + offs, mask=inb, other=0.0).to(tl.int32, bitcast=True)
        flat = (row % LABELS) * K + offs
        key = _key(bits, flat, LABELS * K)
        pos = tl.cumsum(keep.to(tl.int32), 0) - 1
        out = key_ptr + row.to(tl.int64) * DR
        tl.store(out + pos, key, mask=keep & (pos < DR))
        tl.store(out + offs, tl.full([KB], -1, tl.int64), mask=(offs > tl.max(pos, 0)) & (offs < DR))

    @triton.jit
    def _best_kernel(key_ptr, cbox_ptr, boxes_ptr, labels_ptr, scores_ptr, counts_ptr, score_thr,
                     ROW: tl.constexpr, LABELS: tl.constexpr, K: tl.constexpr, KB: tl.constexpr, D: tl.constexpr,
                     RB: tl.constexpr):
        # One program per image: the D best of its ROW keys (from _nms_kernel), ties to the lower
        # (label, rank) as topk over the keys gives; those scoring above score_thr are written out.
        img = tl.program_id(0)
        offs = tl.arange(0, RB)
        keys = tl.load(key_ptr + img.to(tl.int64) * ROW + offs, mask=offs < ROW, other=-1)
        keys = tl.sort(keys, descending=True)
        score = _key_score(keys)
        ok = (offs < D) & (keys >= 0) & (score > score_thr)
        flat = _key_index(keys, LABELS * K)
        slot = (img * LABELS + flat // K) * KB + flat % K
        out = img.to(tl.int64) * D + offs
        for j in tl.static_range(4):
            tl.store(boxes_ptr + out * 4 + j, tl.load(cbox_ptr + slot * 4 + j, mask=ok, other=0.0), mask=offs < D)
        tl.store(labels_ptr + out, tl.where(ok, flat // K + 1, 0), mask=offs < D)
        tl.store(scores_ptr + out, tl.where(ok, score, 0.0), mask=offs < D)
        tl.store(counts_ptr + img, tl.sum(ok.to(tl.int64), 0))

    @triton.jit
    def _select_kernel(logits_ptr, lse_ptr, count_ptr, key_ptr, A, thr_bits, C: tl.constexpr, CB: tl.constexpr,
                       LB: tl.constexpr, CAP: tl.constexpr, BLOCK: tl.constexpr):
        # One program per (image, block of boxes), one read of the logits: the log-sum-exp over the
        # C labels in float32 (torch's logsumexp first materialises a float32 copy), then every
        # score of labels 1.. above the threshold appended to its (image, label) row as a
        # (score bits, reversed box index) key. Append order is arbitrary; the keys are unique and
        # sorted later. Past CAP keys in a row only its count is used.
        n = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inb = offs < A
        labels = tl.arange(0, CB)
        plane = logits_ptr + n.to(tl.int64) * C * A
        z = tl.load(plane + labels[:, None] * A + offs[None, :], mask=(labels[:, None] < C) & inb[None, :],
                    other=float("-inf")).to(tl.float32)
        top = tl.max(z, 0)
        lse = top + tl.log(tl.sum(tl.exp(z - top[None, :]), 0))
        tl.store(lse_ptr + n.to(tl.int64) * A + offs, lse, mask=inb)
        for c0 in range(1, C, LB):  # labels in slices: the block's logits are in cache by now
            lab = c0 + tl.arange(0, LB)
            m = (lab[:, None] < C) & inb[None, :]
            zc = tl.load(plane + lab[:, None] * A + offs[None, :], mask=m, other=0.0).to(tl.float32)
            bits = tl.exp(zc - lse[None, :]).to(tl.int32, bitcast=True)
            sel = m & (bits > thr_bits)
            row = n * (C - 1) + lab[:, None] - 1 + offs[None, :] * 0
            pos = tl.atomic_add(count_ptr + row, 1, mask=sel)
            tl.store(key_ptr + row.to(tl.int64) * CAP + pos, _key(bits, offs[None, :], A),
                     mask=sel & (pos < CAP))

    @triton.jit
    def _score_bits(logit_row, lse_row, start, offs, A):
        # Softmax scores of one chunk of a row as float32 bit patterns (ordered like the values).
        m = start + offs < A
        z = tl.load(logit_row + start + offs, mask=m, other=0.0).to(tl.float32)
        p = tl.exp(z - tl.load(lse_row + start + offs, mask=m, other=0.0))
        return m, p.to(tl.int32, bitcast=True)

    @triton.jit
    def _sort_store(keys, slots, box_row, cbox_ptr, score_ptr, out_row, A, K):
        # Keys sorted best first -> the first K candidates' (box, score) in the output row.
        keys = tl.sort(keys, descending=True)
        take = (keys >= 0) & (slots < K)
        idx = _key_index(keys, A)
        tl.store(score_ptr + out_row + slots, _key_score(keys), mask=take)
        for j in tl.static_range(4):
            tl.store(cbox_ptr + (out_row + slots) * 4 + j, tl.load(box_row + idx * 4 + j, mask=take), mask=take)

    @triton.jit
    def _candidates_kernel(logits_ptr, lse_ptr, count_ptr, key_ptr, boxes_ptr, cbox_ptr, score_ptr, A, thr_bits,
                           C: tl.constexpr, K: tl.constexpr, KB: tl.constexpr, CAP: tl.constexpr,
                           BLOCK: tl.constexpr):
        # One program per (image, class) row: the row's K best scores above the threshold, best
        # first, ties to the lower box index -- exactly what topk over (score, index) keys gives --
        # with their decoded boxes (slots past the row's count are left unwritten).
        # Up to CAP candidates, _select_kernel has left all their keys in the row: sort them.
        # Beyond, a binary search over the float bits finds the K-th best score and one pass over
        # the row's scores writes the K selected keys.
        row = tl.program_id(0)
        n = row // (C - 1)
        out_row = row.to(tl.int64) * KB
        key_row = key_ptr + row.to(tl.int64) * CAP
        box_row = boxes_ptr + n.to(tl.int64) * A * 4
        count = tl.load(count_ptr + row)
        slots = tl.arange(0, KB)
        if count == 0:  # an empty class: nothing to sort
            pass
        elif count <= KB:
            few = tl.load(key_row + slots, mask=slots < count, other=-1)
            _sort_store(few, slots, box_row, cbox_ptr, score_ptr, out_row, A, K)
        elif count <= CAP:
            wide = tl.arange(0, CAP)
            many = tl.load(key_row + wide, mask=wide < count, other=-1)
            _sort_store(many, wide, box_row, cbox_ptr, score_ptr, out_row, A, K)
        else:
            n = row // (C - 1)
            logit_row = logits_ptr + (n * C + row % (C - 1) + 1).to(tl.int64) * A
            lse_row = lse_ptr + n.to(tl.int64) * A
            offs = tl.arange(0, BLOCK)
            lo = thr_bits + 1  # selected: bits > lo, plus the lowest-index (quota) entries with bits == lo
            hi = 0x3F800001  # just above 1.0f: scores are probabilities
            for _ in range(31):  # halves [lo, hi) each time: 31 steps cover any int32 range
                mid = lo + (hi - lo) // 2
                above = 0
                for start in range(0, A, BLOCK):
                    m, bits = _score_bits(logit_row, lse_row, start, offs, A)
                    above += tl.sum((m & (bits >= mid)).to(tl.int32))
                if above >= K:
                    lo = mid
                else:
                    hi = mid
            greater = 0
            for start in range(0, A, BLOCK):
                m, bits = _score_bits(logit_row, lse_row, start, offs, A)
                greater += tl.sum((m & (bits > lo)).to(tl.int32))
            quota = K - greater
            written = 0
            ties = 0
            for start in range(0, A, BLOCK):
                m, bits = _score_bits(logit_row, lse_row, start, offs, A)
                tie = m & (bits == lo)
                tie_rank = ties + tl.cumsum(tie.to(tl.int32), 0)
                sel = (m & (bits > lo)) | (tie & (tie_rank <= quota))
                pos = written + tl.cumsum(sel.to(tl.int32), 0) - 1
                key = _key(bits, start + offs, A)
                tl.store(key_row + pos, key, mask=sel)
                written += tl.sum(sel.to(tl.int32))
                ties += tl.sum(tie.to(tl.int32))
            tl.debug_barrier()
            best = tl.load(key_row + slots, mask=slots < K, other=-1)
            _sort_store(best, slots, box_row, cbox_ptr, score_ptr, out_row, A, K)


def _boxes_triton(locs: torch.Tensor) -> torch.Tensor:
    """:func:`decode_boxes` in one kernel (CUDA): ``locs Tensor[N, 4, A]`` -> ``Tensor[N, A, 4]``."""
    n, _, a = locs.shape
    out = torch.empty(n, a, 4, dtype=torch.float32, device=locs.device)
    _boxes_kernel[(n, triton.cdiv(a, 512))](locs.contiguous(), default_boxes(locs.device), out, a, SCALE_XY,
                                            SCALE_WH, BLOCK=512, num_warps=4)
    return out


def _candidates_triton(scores: torch.Tensor, boxes: torch.Tensor, k: int, threshold: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``scores Tensor[N, C, A]`` logits, ``boxes Tensor[N, A, 4]`` -> for each (image, label 1..C-1)
    row, best first: the candidates' boxes ``[N * (C-1), KB, 4]`` and softmax scores
    ``[N * (C-1), KB]`` float32 (KB >= k; slots past the row's count are unset) and the count of
    scores above ``threshold`` per row ``[N * (C-1)]`` int32 (the row holds min(count, k))."""
    n, c, a = scores.shape
    kb = max(16, triton.next_power_of_2(k))
    cap = 4 * kb  # candidates per row kept by the first pass; more take the binary search
    rows = n * (c - 1)
    logits = scores.contiguous()
    lse = torch.empty(n, a, dtype=torch.float32, device=scores.device)
    counts = torch.zeros(rows, dtype=torch.int32, device=scores.device)
    keys = torch.empty(rows, cap, dtype=torch.int64, device=scores.device)
    cand_boxes = torch.empty(rows, kb, 4, dtype=torch.float32, device=scores.device)
    cand_scores = torch.empty(rows, kb, dtype=torch.float32, device=scores.device)
    thr_bits = int(torch.tensor(threshold, dtype=torch.float32).view(torch.int32))
    # LB 8: a block/warp sweep of this kernel on an H100 (124 -> 106 us; ``vidpipe bench --suite postprocess``).
    _select_kernel[(n, triton.cdiv(a, 64))](logits, lse, counts, keys, a, thr_bits, C=c, CB=triton.next_power_of_2(c),
                                            LB=8, CAP=cap, BLOCK=64, num_warps=4)
    _candidates_kernel[(rows,)](logits, lse, counts, keys, boxes.contiguous(), cand_boxes, cand_scores, a, thr_bits,
                                C=c, K=k, KB=kb, CAP=cap, BLOCK=2048, num_warps=8)
    return cand_boxes, cand_scores, counts


def _decode_triton(boxes: torch.Tensor, scores: torch.Tensor, candidate_threshold: float, iou_threshold: float,
                   max_detections: int, per_class_candidates: int, score_threshold: float) -> Detections:
    """:func:`ssd_decode_padded` from decoded boxes, in four kernels: select, candidates, NMS, best."""
    n, c, a = scores.shape
    k, labels, d = min(per_class_candidates, a), c - 1, max_detections
    cand_boxes, cand_scores, counts = _candidates_triton(scores, boxes, k, candidate_threshold)
    kb, dr = cand_scores.shape[1], min(d, k)
    keys = torch.empty(n * labels, dr, dtype=torch.int64, device=scores.device)
    # 8 warps: the same sweep.
    _nms_kernel[(n * labels,)](cand_boxes, cand_scores, counts, keys, float(iou_threshold), LABELS=labels, K=k,
                               KB=kb, DR=dr, num_warps=8)
    keys = keys.view(n, labels * dr)
    if keys.shape[1] > _BEST_KEYS:  # more than one program sorts well: topk keeps the deciding keys
        keys = keys.topk(min(d, keys.shape[1]), dim=1).values
    rb = triton.next_power_of_2(max(keys.shape[1], d))
    dev = scores.device
    out = Detections(torch.empty(n, d, 4, device=dev), torch.empty(n, d, dtype=torch.int64, device=dev),
                     torch.empty(n, d, device=dev), torch.empty(n, dtype=torch.int64, device=dev))
    _best_kernel[(n,)](keys, cand_boxes, *out.astuple(), float(score_threshold), ROW=keys.shape[1], LABELS=labels,
                       K=k, KB=kb, D=d, RB=rb, num_warps=min(16, max(4, rb // 128)))
    return out


_BEST_KEYS = 16384  # keys per image sorted by one program of _best_kernel, at most


def _check_args(locs: torch.Tensor, scores: torch.Tensor, candidate_threshold: float,
                iou_threshold: float, max_detections: int, per_class_candidates: int) -> None:
    if locs.dim() != 3 or locs.shape[1] != 4 or locs.shape[2] != NUM_BOXES:
        raise ValueError(f"locs must be Tensor[N, 4, {NUM_BOXES}], got {tuple(locs.shape)}")
    if scores.dim() != 3 or scores.shape[0] != locs.shape[0] or scores.shape[2] != NUM_BOXES:
        raise ValueError(f"scores must be Tensor[N, C, {NUM_BOXES}] matching locs, got {tuple(scores.shape)}")
    validate("iou_threshold", iou_threshold, fraction)
    validate("candidate_threshold", candidate_threshold, below_one)
    validate("max_detections", max_detections, at_least(1))
    validate("per_class_candidates", per_class_candidates, at_least(1))


def ssd_decode_padded(locs: torch.Tensor, scores: torch.Tensor, *, candidate_threshold: float = 0.05,
                      iou_threshold: float = 0.5, max_detections: int = 20,
                      per_class_candidates: int = 200, score_threshold: float = 0.3,
                      nms: NmsImpl = "auto") -> Detections:
    """:func:`ssd_decode` without the final split: results stay padded on the input's device.

    ``nms``: ``"triton"`` runs candidate selection and NMS as Triton kernels (CUDA; nothing waits
    for the GPU), ``"torch"`` uses ``topk`` and a vectorised loop that reads counts on the host,
    ``"auto"`` picks Triton for CUDA tensors when it is installed."""
    _check_args(locs, scores, candidate_threshold, iou_threshold, max_detections, per_class_candidates)
    validate("nms", nms, one_of("auto", "triton", "torch"))
    use_triton = nms == "triton" or (nms == "auto" and locs.is_cuda and triton is not None)
    if use_triton and (triton is None or not locs.is_cuda):
        raise ValueError("nms='triton' needs Triton and CUDA tensors")
    if use_triton:
        return _decode_triton(_boxes_triton(locs), scores, candidate_threshold, iou_threshold, max_detections,
                              per_class_candidates, score_threshold)
    n, c = scores.shape[:2]
    boxes = decode_boxes(locs, default_boxes(locs.device))  # [N, A, 4]
    probs = class_probs(scores)[:, 1:]
    cand = _topk_keys(probs, per_class_candidates, probs > candidate_threshold)  # [N, C-1, K]
    cand_scores = probs.gather(2, cand.clamp(min=0))
    valid = cand >= 0
    safe = cand.clamp(min=0)
    cand_boxes = boxes.gather(1, safe.reshape(n, -1, 1).expand(-1, -1, 4)).reshape(*safe.shape, 4)
    k = safe.shape[-1]
    kept = _nms_torch(cand_boxes.reshape(-1, k, 4), valid.reshape(-1, k), iou_threshold).reshape(n, c - 1, k)
    return _best_torch(cand_boxes, cand_scores, kept, max_detections, score_threshold)


def _best_torch(cand_boxes: torch.Tensor, cand_scores: torch.Tensor, kept: torch.Tensor, d: int,
                score_threshold: float) -> Detections:
    """Across classes: per image the ``d`` best kept candidates scoring above ``score_threshold``,
    from ``cand_boxes [N, L, K, 4]``, ``cand_scores [N, L, K]``, ``kept [N, L, K]`` bool; ties go
    to the lower (label, rank in class)."""
    n, _, k = kept.shape
    flat_scores = cand_scores.reshape(n, -1)
    best = _topk_keys(flat_scores, d, kept.reshape(n, -1))  # [N, D]
    ok = (best >= 0)
    best = best.clamp(min=0)
    out_scores = flat_scores.gather(1, best)
    ok &= out_scores > score_threshold
    out_boxes = cand_boxes.reshape(n, -1, 4).gather(1, best.unsqueeze(-1).expand(-1, -1, 4))
    zero = torch.zeros((), device=kept.device)
    return Detections(
        torch.where(ok.unsqueeze(-1), out_boxes, zero),
        torch.where(ok, best // k + 1, 0),
        torch.where(ok, out_scores, zero),
        ok.sum(1),
    )


def ssd_decode(locs: torch.Tensor, scores: torch.Tensor, *, candidate_threshold: float = 0.05,
               iou_threshold: float = 0.5, max_detections: int = 20, per_class_candidates: int = 200,
               score_threshold: float = 0.3) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Detections for each image of the batch; see the module docstring for shapes and semantics.

    Returns one ``(boxes Tensor[D, 4] ltrb normalised, labels Tensor[D] int64, scores Tensor[D])``
    per image, on the input's device, score-descending, ``D <= max_detections``.
    """
    return ssd_decode_padded(locs, scores, candidate_threshold=candidate_threshold,
                             iou_threshold=iou_threshold, max_detections=max_detections,
                             per_class_candidates=per_class_candidates,
                             score_threshold=score_threshold).split()


def ssd_decode_loop(locs: torch.Tensor, scores: torch.Tensor, *, host_copy: bool,
                    candidate_threshold: float = 0.05, iou_threshold: float = 0.5,
                    max_detections: int = 20, per_class_candidates: int = 200,
                    score_threshold: float = 0.3) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The article's first rungs: the same semantics as NVIDIA's per-image, per-class loop, which
    reads one element at a time (the picked index, each kept score) back to Python.

    With ``host_copy=False`` the loop runs on the model's (GPU) tensors (rung 0); with
    ``host_copy=True`` the two outputs are copied to the host once first (rung 1). Results are on
    the CPU. Kept for the ladder; use :func:`ssd_decode` for real work.
    """
    if host_copy:
        locs, scores = locs.cpu(), scores.cpu()
    boxes_all = decode_boxes(locs, default_boxes(locs.device))
    probs_all = class_probs(scores)
    out = []
    for boxes, probs in zip(boxes_all, probs_all):
        det_boxes, det_labels, det_scores = [], [], []
        for label in range(1, probs.shape[0]):
            score = probs[label]
            idx = (score > candidate_threshold).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            cand = idx[score[idx].sort(descending=True, stable=True).indices[:per_class_candidates]]
            while cand.numel() > 0:
                best = cand[0].item()
                det_boxes.append(boxes[best])
                det_labels.append(label)
                det_scores.append(score[best].item())
                rest = cand[1:]
                cand = rest[~_iou_not_below(boxes[rest], boxes[best][None], iou_threshold)[:, 0]]
        ranked = sorted(range(len(det_scores)), key=lambda j: -det_scores[j])[:max_detections]
        ranked = [j for j in ranked if det_scores[j] > score_threshold]
        out.append((
            torch.stack([det_boxes[j] for j in ranked]).cpu() if ranked else torch.zeros(0, 4),
            torch.tensor([det_labels[j] for j in ranked], dtype=torch.int64),
            torch.tensor([det_scores[j] for j in ranked], dtype=torch.float32),
        ))
    return out
