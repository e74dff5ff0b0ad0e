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
is a row of one array, and predict and update run once per frame for all tracks, with the same
operations per track (the observation matrix's products as the slices they equal), so the ids are
the library's (``tests/test_track.py`` compares them frame by frame on fresh random trajectories):
0.19 ms per frame at 20 detections and ~35 tracks on the H200 machine's CPU. The engine's
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
    1.1-1.3 s of a tracked run's start on the H200 machine (docs/results.md, "Fourteenth session"),
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
        if not np.array_equal(kf.observation_mtx, np.eye(4, kf.dim_x)):
            raise VidpipeError("--track: this trackers version observes its Kalman state differently; vidpipe "
                               "needs trackers 2.6 (pip install \"vidpipe[track]\")")
        # The observation matrix H = [I 0] selects the box: H @ a, a @ H.T and K @ H are slices of a
        # (exactly: the other terms are products with 0.0), which saves a third of the calls per frame.
        self.F, self.Q, self.R = kf.transition_mtx, kf.process_noise, kf.measurement_noise
        self.P0, self.x0, self.eye = kf.state_covariance, kf.state, np.eye(kf.dim_x)
        self.x = np.empty((0, *self.x0.shape))  # [T, 8, 1] state
        self.P = np.empty((0, *self.P0.shape))  # [T, 8, 8] covariance
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

    def _update(self, rows: np.ndarray, z: np.ndarray) -> None:
        """The Kalman update of tracks ``rows`` with measurements ``z float64[k, 4, 1]``
        (``KalmanFilter.update``'s operations, Joseph form, one stacked call each; H as slices)."""
        x, P, R = self.x[rows], self.P[rows], self.R
        PHT = P[:, :, :4]  # P @ H.T
        K = PHT @ np.linalg.inv(PHT[:, :4] + R)  # H @ PHT + R
        self.x[rows] = x + K @ (z - x[:, :4])  # z - H @ x
        I_KH = np.repeat(self.eye[None], len(rows), 0)
        I_KH[:, :, :4] -= K  # eye - K @ H
        self.P[rows] = I_KH @ P @ np.swapaxes(I_KH, 1, 2) + K @ R @ np.swapaxes(K, 1, 2)

    def frame(self, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One frame's ``D`` detections -> the same, score-descending, and their track ids."""
        boxes = boxes.astype(np.float32).reshape(-1, 4)
        scores = scores.astype(np.float32)
        if len(self.ids) == 0 and len(scores) == 0:
            return boxes, labels.astype(np.int64), scores, _NONE
        # Predict every track one frame ahead; a track missed last frame restarts its hit count.
        self.x = self.F @ self.x
        self.P = self.F @ self.P @ self.F.T + self.Q
        self.hits[self.missed > 0] = 0
        self.missed += 1
        predicted = self.x[:, :4, 0]
        confident = scores >= self.high
        high, low = np.flatnonzero(confident), np.flatnonzero(~confident)
        # Stage 1: confident detections against every track; stage 2: the rest against the rest.
        rows1, cols1 = self._match(predicted, boxes[high])
        left = _unused(len(self.ids), rows1) if len(low) else _NONE
        rows2, cols2 = self._match(predicted[left], boxes[low])
        rows = np.concatenate([rows1, left[rows2]])
        dets = np.concatenate([high[cols1], low[cols2]])
        if len(rows):
            self._update(rows, boxes[dets].astype(np.float64)[:, :, None])
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
            x = np.repeat(self.x0[None], len(new), 0)
            x[:, :4, 0] = boxes[new]
            self.x = np.concatenate([self.x, x])
            self.P = np.concatenate([self.P, np.repeat(self.P0[None], len(new), 0)])
            self.ids = np.concatenate([self.ids, np.full(len(new), -1)])
            self.hits = np.concatenate([self.hits, np.ones(len(new), np.int64)])
            self.missed = np.concatenate([self.missed, np.zeros(len(new), np.int64)])
        alive = (self.missed <= self.max_missed) & ((self.ids != -1) | (self.hits >= self.min_hits)
                                                    | (self.missed == 0))
        if not alive.all():
            self.x, self.P, self.ids, self.hits, self.missed = (a[alive] for a in (self.x, self.P, self.ids, self.hits,
                                                                                    self.missed))
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
    a lane's first tracked batch held up the whole run (docs/results.md, "Ninth session")."""
    Tracker(30.0)


def forget(key: str) -> None:
    """Drop video ``key``'s tracker (the video has ended)."""
    _in_worker.pop(key, None)
