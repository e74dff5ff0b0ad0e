"""The Python API's entry point for a video: :func:`detect`.

In: a path or stream URL, and a :class:`~vidpipe.detector.Detector` (or a
:class:`~vidpipe.config.Config` to build one). Out: one :class:`~vidpipe.detector.FrameResult`
per frame, in order, lazily (host NumPy arrays, boxes in frame pixels).
"""

from __future__ import annotations

import os
from typing import Iterator

from .config import Config
from .detector import Detector, FrameResult
from .engine import iter_results


def detect(video: str | os.PathLike, detector: Detector | Config | None = None) -> Iterator[FrameResult]:
    """Lazily yield one :class:`FrameResult` per frame of ``video``, in order::

        det = vidpipe.Detector(vidpipe.Config(model="yolo11m.pt"))
        for r in vidpipe.detect("video.mp4", det):
            print(r.frame, r.class_names, r.scores)

    Build the detector once and reuse it across videos (its model, graphs and decoders stay warm).
    A damaged or unreadable video raises :class:`~vidpipe.errors.VidpipeError` after its good frames.
    """
    if detector is None or isinstance(detector, Config):
        detector = Detector(detector or Config())
    yield from iter_results(detector, [os.fspath(video)])
