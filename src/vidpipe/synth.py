"""Synthetic clips for tests and benchmarks, made with PyAV (FFmpeg's encoders).

``make_clip`` encodes moving noise over a gradient (H.264 or HEVC, optional B-frames, variable
frame rate, rotation metadata); ``repeat_clip`` remuxes a file N times end to end without
re-encoding (a long input with the same content). ``trajectories`` makes per-frame detections of
objects in motion, for the tracker's tests and benchmark.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_clip(path: str | os.PathLike, *, frames: int = 24, width: int = 64, height: int = 48,
              codec: str = "libx264", fps: int = 30, bframes: bool = True, vfr: bool = False,
              crf: int = 23, gop: int = 12, faststart: bool = False, rotation: int | None = None,
              seed: int = 0, pix_fmt: str = "yuv420p") -> Path:
    path = Path(path)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1),
                     (xx + yy) * 127 // max(1, width + height - 2)], -1).astype(np.uint8)
    noise = rng.integers(0, 64, size=(height, width, 3), dtype=np.uint8)
    options = {"movflags": "faststart"} if faststart else {}  # index first: streamable, cut-tolerant
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = Fraction(1, 90000)
        stream.codec_context.time_base = Fraction(1, 90000)  # exact variable frame times
        stream.gop_size = gop
        if rotation is not None:
            stream.set_display_rotation(rotation)  # display-matrix metadata, as phones write it
        if codec == "libx264":
            stream.options = {"bf": "2" if bframes else "0", "crf": str(crf), "preset": "veryfast"}
        elif codec == "libx265":
            stream.options = {"crf": str(crf), "preset": "ultrafast",
                              "x265-params": f"log-level=error:bframes={2 if bframes else 0}:keyint={gop}"}
        pts, step = 0, 90000 // fps
        for i in range(frames):
            img = base + np.roll(noise, shift=(i * 2, i * 3), axis=(0, 1))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = pts
            frame.time_base = stream.time_base
            pts += step if not vfr else int(step * rng.choice([0.5, 1.0, 2.0]))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def repeat_clip(src: str | os.PathLike, dst: str | os.PathLike, times: int) -> Path:
    """``src``'s video stream ``times`` times in a row, packets copied (no re-encode)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        ins = inp.streams.video[0]
        outs = out.add_stream_from_template(ins)
        packets = [p for p in inp.demux(ins) if p.size]
        span = max(p.pts for p in packets) - min(p.pts for p in packets) + (packets[1].duration or 1)
        dspan = max(p.dts for p in packets) - min(p.dts for p in packets) + (packets[1].duration or 1)
        span = max(span, dspan)
        for k in range(times):
            for p in packets:
                q = av.Packet(bytes(p))
                q.pts, q.dts = p.pts + k * span, p.dts + k * span
                q.is_keyframe = p.is_keyframe
                q.time_base, q.stream = ins.time_base, outs
                out.mux(q)
    return Path(dst)


def smooth_frames(n: int, seed: int, height: int, width: int, detail: float = 0.0):
    """Smooth random scenes for re-aiming random weights: a 9 x 16 grid of random colours
    (bicubic), plus a ``detail`` share of noise on an eighth-size grid; ``Tensor[n, 3, height,
    width]`` uint8 on the CPU."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    img = F.interpolate(torch.rand(n, 3, 9, 16, generator=g), size=(height, width), mode="bicubic")
    if detail:
        fine = torch.rand(n, 3, height // 8, width // 8, generator=g)
        img = img * (1 - detail) + F.interpolate(fine, size=(height, width)) * detail
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def trajectories(seed: int, frames: int, objects: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame (boxes [D, 4], labels [D], scores [D]): objects moving at constant speed with
    jitter, each sometimes missed for a frame and sometimes hidden for 20-60 frames (past the
    library's 30-frame lost-track budget, or not), seen at confidences on both sides of ByteTrack's
    thresholds (0.6 high, 0.7 activation), plus clutter, shuffled."""
    g = np.random.default_rng(seed)
    start = g.uniform(0, 400, (objects, 2))
    speed = g.uniform(-6, 6, (objects, 2))
    size = g.uniform(20, 60, (objects, 2))
    labels = g.integers(0, 3, objects)
    hidden_from = g.integers(0, frames, objects)
    hidden_for = g.integers(20, 60, objects)
    out = []
    for f in range(frames):
        hidden = (f >= hidden_from) & (f < hidden_from + hidden_for)
        seen = (g.random(objects) > 0.1) & ~hidden
        xy = start[seen] + f * speed[seen] + g.normal(0, 1.5, (seen.sum(), 2))
        boxes = np.concatenate([xy, xy + size[seen]], 1)
        scores = g.uniform(0.3, 0.95, seen.sum())
        clutter = g.uniform(0, 400, (2, 2))
        boxes = np.concatenate([boxes, np.concatenate([clutter, clutter + 10], 1)]).astype(np.float32)
        scores = np.concatenate([scores, g.uniform(0.1, 0.4, 2)]).astype(np.float32)
        lab = np.concatenate([labels[seen], [0, 1]]).astype(np.int64)
        order = g.permutation(len(scores))
        out.append((boxes[order], lab[order], scores[order]))
    return out
