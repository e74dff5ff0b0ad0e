"""Tracking: a ``track_id`` for every detection, stable across the frames of one video.

In: one video's results in frame order, a batch at a time: ``boxes float32[N, D, 4]`` (frame
pixels), ``labels int64[N, D]``, ``scores float32[N, D]``, ``counts int64[N]``, on the host.
Out: the same detections (none dropped), best first per frame, and ``track_ids int64[N, D]``: the
ByteTrack id of each, -1 while a detection belongs to no confirmed track (ByteTrack confirms a
track on its second frame, and never tracks detections below its activation threshold).

The algorithm is the ``trackers`` package's ``ByteTrackTracker`` (Roboflow's maintained successor
of supervision's ByteTrack) at a fixed frame rate, with its defaults and its Kalman matrices, read
from the library, and its IoU's arithmetic. What vidpipe changes is only how the arithmetic is laid
out: the library keeps one Python object and one Kalman filter per track (~0.9 ms per frame at 15
tracks on the 2-core CI machine, half of it in ``KalmanFilter.update``); here every track's state
is a row of a few arrays, and predict and update run once per frame for all tracks, as the
element-wise operations the library's matrix products reduce to, so the states and ids are the
library's (``tests/test_track.py`` compares them frame by frame on fresh random trajectories).
``bench/track_rate.py`` measures both on the same detections. The engine's
writer feeds it in frame order, after parallel segments are put back in order. Optional
dependency: ``pip install "vidpipe[track]"``.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from .errors import VidpipeError


def _unused(n: int, used: np.ndarray) -> np.ndarray:
    """``range(n)`` without ``used``, ascending."""
    free = np.ones(n, bool)
    free[used] = False
    return np.flatnonzero(free)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``float32[len(a), len(b)]`` IoUs of xyxy boxes with the arithmetic of the library's IoU
    (supervision's ``box_iou_batch``: float64 corners, float32 result, 0 where the union is not
    positive), in a third of its NumPy calls: it was a quarter of the tracker's time."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    wh = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])
    np.maximum(wh, 0.0, out=wh)
    inter = wh[..., 0] * wh[..., 1]
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None] + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    out = np.zeros(inter.shape, np.float32)
    np.divide(inter, union, out=out, where=union > 0)
    return out


_NONE = np.empty(0, np.int64)  # no rows, no columns
_MISSING = '--track needs the trackers package: pip install "vidpipe[track]"'


def check_installed() -> None:
    """Fail in one line when the tracking library is missing, without importing it: the import took
    1.1-1.3 s of a tracked run's start on an H200 machine (``vidpipe bench --suite startup --track``),
    in the process that does not track files (its formatting processes do, and import it there)."""
    if any(importlib.util.find_spec(name) is None for name in ("trackers", "scipy")):
        raise VidpipeError(_MISSING)


class Tracker:
    """ByteTrack state for one video: track ``t`` is row ``t`` of every array, in the library's
    track order (creation order, pruned in place)."""

    def __init__(self, fps: float) -> None:
        try:
            from scipy.optimize import linear_sum_assignment
            from trackers import ByteTrackTracker
            from trackers.core.bytetrack.tracklet import ByteTrackTracklet
        except ImportError:
            raise VidpipeError(_MISSING) from None
        ref = ByteTrackTracker(frame_rate=fps if fps and fps > 0 else 30.0)
        self._assign = linear_sum_assignment
        self.max_missed = ref.maximum_frames_without_update
        self.min_hits = ref.minimum_consecutive_frames
        self.match_iou = ref.minimum_iou_threshold
        self.high = ref.high_conf_det_threshold
        self.activation = ref.track_activation_threshold
        # The library's filter for one frame step (fixed-rate mode), as its tracklets configure it.
        est = ByteTrackTracklet(np.zeros(4, np.float32)).state_estimator
        est.motion.apply(est.kf, 1.0, None)
        kf = est.kf
        q, r, p0 = kf.process_noise[0, 0], kf.measurement_noise[0, 0], kf.state_covariance[0, 0]
        eye, zero = np.eye(4), np.zeros((4, 4))
        if not (np.array_equal(kf.observation_mtx, np.eye(4, 8)) and not kf.state.any()
                and np.array_equal(kf.transition_mtx, np.block([[eye, eye], [zero, eye]]))
                and np.array_equal(kf.process_noise, q * np.eye(8)) and np.array_equal(kf.measurement_noise, r * eye)
                and np.array_equal(kf.state_covariance, p0 * np.eye(8))):
            raise VidpipeError("--track: this trackers version models its Kalman state differently; vidpipe "
                               "needs trackers 2.6 (pip install \"vidpipe[track]\")")
        # With these matrices the 8-dimensional filter is four identical (position, velocity) filters,
        # one per box coordinate, whose 2 x 2 covariances stay equal (they never depend on the
        # measurements). So a track's state is its box, its velocity and one 2 x 2 covariance, and
        # predict and update are a few element-wise operations on all tracks at once instead of
        # stacked 8 x 8 products (a quarter less time per frame, bench/track_rate.py). Each element is
        # computed with the operations the library's products
        # reduce to: every sum there has at most two non-zero terms, the later one (in the products'
        # order) a product with 1.0, so fused multiply-adds change nothing. The states are the
        # library's bit for bit, which tests/test_track.py checks on its tracklets.
        self.q, self.r, self.p0 = q, r, p0
        self.box = np.empty((0, 4))  # [T, 4] float64: the state's box (x1, y1, x2, y2)
        self.vel = np.empty((0, 4))  # [T, 4] float64: its velocity per frame
        self.cov = np.empty((4, 0))  # [4, T] float64: each coordinate's covariance, [[pp, pv], [vp, vv]] flattened
        self.ids = np.empty(0, np.int64)  # -1 until confirmed
        self.hits = np.empty(0, np.int64)  # consecutive successful updates
        self.missed = np.empty(0, np.int64)  # frames since the last update
        self.next_id = 0

    def _match(self, tracks: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the matched (track, detection) pairs, in assignment order: the
        library's optimal assignment on IoU, pairs below its threshold left unmatched."""
        if len(tracks) == 0 or len(boxes) == 0:
            return _NONE, _NONE
        iou = _iou(tracks, boxes)
        rows, cols = self._assign(iou, maximize=True)
        ok = iou[rows, cols] >= self.match_iou
        return rows[ok], cols[ok]

    def _predict(self) -> None:
        """Every track one frame ahead: ``F @ x`` and ``F @ P @ F.T + Q`` per coordinate."""
        self.box += self.vel
        pp, pv, vp, vv = self.cov  # views: updated in place, each from the values before
        pv_vv = pv + vv
        pp += vp
        pp += pv_vv
        pp += self.q
        pv[:] = pv_vv
        vp += vv
        vv += self.q

    def _update(self, rows: np.ndarray, z: np.ndarray) -> None:
        """The Kalman update of tracks ``rows`` with measured boxes ``z float64[k, 4]``:
        ``KalmanFilter.update``'s Joseph form per coordinate, with ``K`` = ``(kp, kv)``."""
        pp, pv, vp, vv = self.cov[:, rows]
        inv = 1.0 / (pp + self.r)  # the innovation covariance is diagonal: its inverse is exactly this
        kp, kv = pp * inv, vp * inv
        innovation = z - self.box[rows]
        self.box[rows] += kp[:, None] * innovation
        self.vel[rows] += kv[:, None] * innovation
        e, f = 1.0 - kp, -kv  # I - K @ H
        a00, a01, a10, a11 = e * pp, e * pv, f * pp + vp, f * pv + vv  # (I - K @ H) @ P
        kpr, kvr = kp * self.r, kv * self.r  # K @ R
        cov = np.empty((4, len(rows)))
        np.add(a00 * e, kpr * kp, out=cov[0])
        np.add(a00 * f + a01, kpr * kv, out=cov[1])
        np.add(a10 * e, kvr * kp, out=cov[2])
        np.add(a10 * f + a11, kvr * kv, out=cov[3])
        self.cov[:, rows] = cov

    def frame(self, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One frame's ``D`` detections -> the same, score-descending, and their track ids."""
        boxes = boxes.astype(np.float32).reshape(-1, 4)
        scores = scores.astype(np.float32)
        if len(self.ids) == 0 and len(scores) == 0:
            return boxes, labels.astype(np.int64), scores, _NONE
        # Predict every track one frame ahead; a track missed last frame restarts its hit count.
        self._predict()
        self.hits[self.missed > 0] = 0
        self.missed += 1
        predicted = self.box
        confident = scores >= self.high
        high, low = np.flatnonzero(confident), np.flatnonzero(~confident)
        # Stage 1: confident detections against every track; stage 2: the rest against the rest.
        rows1, cols1 = self._match(predicted, boxes[high])
        left = _unused(len(self.ids), rows1) if len(low) else _NONE
        rows2, cols2 = self._match(predicted[left], boxes[low])
        rows = np.concatenate([rows1, left[rows2]])
        dets = np.concatenate([high[cols1], low[cols2]])
        if len(rows):
            self._update(rows, boxes[dets].astype(np.float64))
            self.missed[rows] = 0
            self.hits[rows] += 1
            confirm = rows[(self.hits[rows] >= self.min_hits) & (self.ids[rows] == -1)]  # ids in match order
            self.ids[confirm] = self.next_id + np.arange(len(confirm))
            self.next_id += len(confirm)
        out_ids = self.ids[rows]
        # Unmatched: low-confidence detections stay untracked; confident ones may start a track.
        low_left, high_left = _unused(len(low), cols2), _unused(len(high), cols1)
        new = high[high_left][scores[high[high_left]] >= self.activation]
        if len(new):
            self.box = np.concatenate([self.box, boxes[new]])
            self.vel = np.concatenate([self.vel, np.zeros((len(new), 4))])
            self.cov = np.concatenate([self.cov, np.tile([[self.p0], [0.0], [0.0], [self.p0]], len(new))], 1)
            self.ids = np.concatenate([self.ids, np.full(len(new), -1)])
            self.hits = np.concatenate([self.hits, np.ones(len(new), np.int64)])
            self.missed = np.concatenate([self.missed, np.zeros(len(new), np.int64)])
        alive = (self.missed <= self.max_missed) & ((self.ids != -1) | (self.hits >= self.min_hits)
                                                    | (self.missed == 0))
        if not alive.all():
            self.box, self.vel, self.ids, self.hits, self.missed = (
                a[alive] for a in (self.box, self.vel, self.ids, self.hits, self.missed))
            self.cov = self.cov[:, alive]
        # The library's output order, then best first (stable, so ties keep that order).
        index = np.concatenate([dets, low[low_left], high[high_left]])
        ids = np.concatenate([out_ids, np.full(len(index) - len(dets), -1)])
        order = np.argsort(-scores[index], kind="stable")
        index = index[order]
        return boxes[index], labels[index].astype(np.int64), scores[index], ids[order].astype(np.int64)

    def batch(self, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, counts: np.ndarray
              ) -> tuple[np.ndarray, ...]:
        """A batch of consecutive frames (padded arrays, see the module docstring) -> ``(boxes,
        labels, scores, counts, track_ids)``, padded the same way."""
        out = (np.zeros_like(boxes), np.zeros_like(labels), np.zeros_like(scores), counts.copy(),
               np.full(labels.shape, -1, np.int64))
        for i, c in enumerate(counts.tolist()):
            b, lab, s, ids = self.frame(boxes[i, :c], labels[i, :c], scores[i, :c])
            k = len(ids)
            out[0][i, :k], out[1][i, :k], out[2][i, :k], out[4][i, :k] = b, lab, s, ids
            out[3][i] = k
        return out


_in_worker: dict[str, Tracker] = {}  # in a formatting worker process: the trackers of its videos


def in_worker(key: str, fps: float, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """:meth:`Tracker.batch` by the tracker of video ``key``, kept in this (worker) process."""
    if key not in _in_worker:
        _in_worker[key] = Tracker(fps)
    return _in_worker[key].batch(*arrays)


def preload() -> None:
    """Import the tracking library in this (worker) process ahead of its first video: ~1 s, which in
    a lane's first tracked batch held up the whole run (``vidpipe bench CLIP --track``)."""
    Tracker(30.0)


def forget(key: str) -> None:
    """Drop video ``key``'s tracker (the video has ended)."""
    _in_worker.pop(key, None)
