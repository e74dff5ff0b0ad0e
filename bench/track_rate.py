"""The tracker's rate: ms per frame of vidpipe's ByteTrack (``vidpipe.track.Tracker``, batches of 64
frames as the engine feeds it) beside the library's own ``ByteTrackTracker.update`` frame by frame,
on the same synthetic detections (``vidpipe.synth.trajectories``: objects in motion, misses,
occlusions, clutter). Both give the same ids (tests/test_track.py). Median of ``--repeats`` (± the
spread, (max - min) / median).

    python bench/track_rate.py [--objects 10 20 40] [--frames 3000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

from vidpipe.synth import trajectories
from vidpipe.track import Tracker

BATCH = 64


def padded_batches(frames: list) -> list[tuple[np.ndarray, ...]]:
    """The frames as the engine's padded batches (boxes, labels, scores, counts)."""
    d = max(len(s) for _, _, s in frames)
    out = []
    for start in range(0, len(frames), BATCH):
        chunk = frames[start:start + BATCH]
        pad = [[np.concatenate([a, np.zeros((d - len(a), *a.shape[1:]), a.dtype)]) for a in f] for f in chunk]
        out.append((*(np.stack(x) for x in zip(*pad)), np.array([len(s) for _, _, s in chunk])))
    return out


def ms_per_frame(step, n: int, repeats: int) -> tuple[float, float]:
    """Median and spread (max - min) / median of ``step()``'s wall time per frame, ms."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) / n * 1e3)
    m = statistics.median(times)
    return m, (max(times) - min(times)) / m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, nargs="+", default=[10, 20, 40])
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"numpy {np.__version__}, {a.frames} frames, median of {a.repeats}\n")
    print("| objects | detections per frame | vidpipe ms/frame | library ms/frame | speed-up |\n|---|---|---|---|---|")
    for objects in a.objects:
        frames = trajectories(0, a.frames, objects)
        batches = padded_batches(frames)
        dets = [sv.Detections(xyxy=b, confidence=s, class_id=lab) for b, lab, s in frames]

        def ours() -> None:
            t = Tracker(30.0)
            for b in batches:
                t.batch(*b)

        def theirs() -> None:
            t = ByteTrackTracker(frame_rate=30.0)
            for d in dets:
                t.update(d)

        (m1, s1), (m2, s2) = ms_per_frame(ours, len(frames), a.repeats), ms_per_frame(theirs, len(frames), a.repeats)
        print(f"| {objects} | {np.mean([len(s) for _, _, s in frames]):.1f} | {m1:.3f} (±{s1:.0%}) | "
              f"{m2:.3f} (±{s2:.0%}) | {m2 / m1:.1f}x |")


if __name__ == "__main__":
    main()
