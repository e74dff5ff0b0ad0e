"""Tracking: a ``track_id`` for every detection, stable across the frames of one video.

In: one video's results in frame order, a batch at a time: ``boxes float32[N, D, 4]`` (frame
pixels), ``labels int64[N, D]``, ``scores float32[N, D]``, ``counts int64[N]``, on the host.
Out: the same detections (none dropped), best first per frame, and ``track_ids int64[N, D]``: the
ByteTrack id of each, -1 while a detection belongs to no confirmed track (ByteTrack confirms a
track on its second frame, and never tracks detections below its activation threshold).

The algorithm is the ``trackers`` package's ``ByteTrackTracker`` (Roboflow's maintained successor
of supervision's ByteTrack), with its defaults and the video's frame rate; vidpipe only feeds it in
frame order (the engine's writer does, after parallel segments are put back in order) and pads
its output. Optional dependency: ``pip install "vidpipe[track]"``.
"""

from __future__ import annotations

import numpy as np

from .errors import VidpipeError


class Tracker:
    """ByteTrack state for one video."""

    def __init__(self, fps: float) -> None:
        try:
            import supervision
            from trackers import ByteTrackTracker
        except ImportError:
            raise VidpipeError('--track needs the trackers package: pip install "vidpipe[track]"') from None
        self._detections = supervision.Detections
        self.tracker = ByteTrackTracker(frame_rate=fps if fps and fps > 0 else 30.0)

    def frame(self, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One frame's ``D`` detections -> the same, score-descending, and their track ids."""
        out = self.tracker.update(self._detections(xyxy=boxes.astype(np.float32).reshape(-1, 4),
                                                   confidence=scores.astype(np.float32),
                                                   class_id=labels.astype(np.int64)))
        order = np.argsort(-out.confidence, kind="stable")  # the tracker reorders; results are best first
        return (out.xyxy[order].astype(np.float32), out.class_id[order].astype(np.int64),
                out.confidence[order].astype(np.float32), out.tracker_id[order].astype(np.int64))

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
