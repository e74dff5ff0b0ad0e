"""Agreement between two detectors' results on the same frames (a reference and ours).

In: per frame ``(boxes float32[D, 4] xyxy pixels, class ids int64[D], scores float32[D])`` on the
host, ours and the reference's, frame by frame. Out: :class:`Agreement`: how many of the
reference's detections ours matched (same class, IoU >= ``iou``, and |score difference| <=
``score_tol`` where given), each of ours used at most once, and how many of ours are extra.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Frame = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Agreement:
    matched: int = 0
    reference: int = 0  # the reference's detections
    extra: int = 0  # ours beyond the reference's count, frame by frame

    @property
    def share(self) -> float:
        """Matched share of the reference's detections."""
        return self.matched / self.reference if self.reference else 1.0

    @property
    def extra_share(self) -> float:
        return self.extra / self.reference if self.reference else 0.0

    def __str__(self) -> str:
        return f"{self.share:.1%} of {self.reference:,} matched, {self.extra_share:.1%} extra"


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` with every box of ``b`` (``[len(a), len(b)]``). Two boxes without
    area (a box clipped to a frame edge) have no defined IoU: 1 when they are the same box, else 0."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], -1), np.prod(b[:, 2:] - b[:, :2], -1)
    union = area_a[:, None] + area_b[None, :] - inter
    same = (a[:, None, :] == b[None, :, :]).all(-1)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), same.astype(np.float64))


def agree(ours: list[Frame], reference: list[Frame], iou: float = 0.9, score_tol: float | None = None) -> Agreement:
    out = Agreement()
    for (bo, lo, so), (br, lr, sr) in zip(ours, reference, strict=True):
        out.reference += len(lr)
        out.extra += max(0, len(lo) - len(lr))
        if not len(lo) or not len(lr):
            continue
        overlap = _iou(np.asarray(br, np.float64), np.asarray(bo, np.float64))
        used = np.zeros(len(lo), bool)
        for i in range(len(lr)):
            for j in np.argsort(-overlap[i], kind="stable"):
                if overlap[i, j] < iou:
                    break
                if not used[j] and lo[j] == lr[i] and (score_tol is None or abs(so[j] - sr[i]) <= score_tol):
                    used[j] = True
                    out.matched += 1
                    break
    return out
