"""Planning: which units of work an input becomes, and how many decode workers a run gets.

In: a path (file or stream URL) and the decoder chosen for it. Out: :class:`~.items.Unit` s (frames
``[start, stop)``; ``seq`` is set by the producer as units are opened). A file NVDEC decodes is cut
at keyframes so that several workers decode it at once, unless seeks in it are not exact (MPEG-TS,
streams without timestamps); anything else is one unit.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import VidpipeError
from ..inputs import is_stream_url
from ..sources import VideoInfo, probe, scan_packets
from .items import Unit

SEGMENT_FRAMES = 1024  # longest part of one file a worker decodes alone; cuts fall on keyframes
# A tracked file's parts: one keyframe interval each. Workers decode their parts side by side, so
# parts finish in waves of about (workers x part) frames, and a video's tracker, which takes frames
# in order only, gets each wave at once: it tracks the last wave after decoding has ended. With
# 1024-frame parts that tail is ~12 x 1024 frames x 0.2 ms (~2.5 s); with one interval, 12 x 60
# frames at the camera clip's GOP of 60. On an H200, 9,000 frames of 1080p tracked at 0.61 of the
# untracked rate with 1024-frame parts, 0.88 with one interval (``vidpipe bench CLIP --track``).
TRACKED_SEGMENT_FRAMES = 1


def default_decoders(info: VideoInfo | None, decoder: str, device: torch.device) -> int:
    """Decode workers: small frames decode fast, so four NVDEC sessions cover the model (~7,900
    frames/s at 384x288 on an H100); 1080p needs 8-12 (~1,600-1,900 frames/s), see
    shared/reference-h100.md. FFmpeg decode threads internally, so two workers overlap files."""
    if decoder != "nvdec":
        return 2
    pixels = info.width * info.height if info else 1920 * 1080
    return 4 if pixels <= 640 * 480 else 12


def plan_units(path: str, info: VideoInfo | None, decoder: str, workers: int, *, segment_min: int = 16,
               segment_max: int = SEGMENT_FRAMES, frames: tuple[int, int] | None = None,
               max_frames: int | None = None) -> list[Unit]:
    """Cut a file NVDEC decodes into keyframe-aligned units for parallel decode: about two per
    worker, at least ``segment_min`` frames each, and no longer than ``segment_max`` where keyframes
    allow (each cut is the first keyframe at least that far from the one before). ``info``:
    the input's probe if already made; ``frames``: only frames ``[a, b)`` (a part of a split file).
    An input that cannot be probed is one unit carrying the error."""
    try:
        # Its own copy (probes are cached per file): the writer tells videos apart by identity.
        info = replace(info or probe(path))
    except VidpipeError as e:
        return [Unit(-1, None, path, error=str(e))]
    if is_stream_url(path):
        return [Unit(-1, info, path, *(frames or (0, None)))]
    scan = scan_packets(path) if decoder == "nvdec" or not info.num_frames else None
    if not info.num_frames:  # a header without a count (MPEG-TS, Matroska): the scan's, so a shortfall shows
        info = replace(info, num_frames=len(scan.times))
    # One unit, but for NVDEC's parts of a file seeks land in exactly (else each would decode from the start).
    if decoder != "nvdec" or workers == 1 or not scan.exact_seeks:
        return [Unit(-1, info, path, *(frames or (0, None)))]
    lo, n = frames or (0, len(scan.times))
    n = min(n, len(scan.times), max_frames or n)
    target = max(segment_min, min(segment_max, -(-(n - lo) // (2 * workers))))
    bounds = [lo]
    for k in scan.keyframes:
        if k >= n:
            break
        if k - bounds[-1] >= target:
            bounds.append(k)
    bounds.append(n)
    return [Unit(-1, info, path, a, b, first=i == 0, last=i == len(bounds) - 2)
            for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
