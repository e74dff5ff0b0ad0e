"""Clips of frames a test draws itself (scenes whose detections are known), encoded as H.264."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def encode_rgb(path: str | Path, images: Sequence[np.ndarray], options: dict[str, str] | None = None) -> Path:
    """``images`` (RGB uint8 ``[H, W, 3]``, all one size) as a 30 fps libx264 MP4 at ``path``, frame i at
    time i / 30; ``options``: libx264's (``{"crf": "10"}``)."""
    height, width = images[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = options or {}
        stream.codec_context.time_base = Fraction(1, 30)
        for i, img in enumerate(images):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(path)
