"""The writer's host chain alone, no GPU: batches of 64 frames x 20 detections (SSD300's load on
the 1080p clip) put at a fixed rate into the engine's Writer (threaded, with formatting lanes),
tracked and untracked, beside a thread that holds the GIL in bursts as the parent's decode and
compute threads do. Prints each run's wall time, its tail (last batch put to the writer done) and
its frames/s. On a 2-core machine it shows a tail only; on an H200 a tracked run was throughput-bound
(its lane waiting for the parent's threads, hence TRACK_GROUP), which this single GIL-holding thread
does not reproduce.
Usage: python bench/writer_chain.py [--lanes 2] [--fps 2300] [--hog-ms 4]"""

import argparse
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from vidpipe.engine.items import BatchResult, VideoEnd, VideoStart
from vidpipe.engine.write import FormatPool, Writer
from vidpipe.postprocess import Detections
from vidpipe.sinks import JsonlSink
from vidpipe.sources import VideoInfo

FRAMES, DETECTIONS = 64, 20


def detections(batch: int) -> Detections:
    """20 boxes moving 2 px a frame across the batch's frames (tracks that live on)."""
    start = np.random.default_rng(0).uniform(0, 1700, (DETECTIONS, 2))
    xy = start[None] + (np.arange(FRAMES)[:, None, None] + batch * FRAMES) * 2 % 1700
    boxes = torch.from_numpy(np.concatenate([xy, xy + 60], -1).astype(np.float32))
    return Detections(boxes, torch.ones(FRAMES, DETECTIONS, dtype=torch.int64), torch.full((FRAMES, DETECTIONS), 0.9),
                      torch.full((FRAMES,), DETECTIONS))


def gil_hog(stop: threading.Event, burst_s: float) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < burst_s:  # pure Python: holds the GIL
            pass
        time.sleep(0.0005)


def run(out: Path, batches: int, fps: float, lanes: int, track: bool) -> tuple[float, float]:
    """Wall seconds of one video's batches through a Writer, and its tail."""
    info = VideoInfo(str(out), 1920, 1080, batches * FRAMES, 30.0, "h264", Fraction(1, 30))
    dets = [detections(b) for b in range(batches)]
    writer = Writer(lambda i: JsonlSink(out, i.path, i.width, i.height), True, None, None, formatters=lanes,
                    track=track)
    t0 = time.perf_counter()
    writer.put(VideoStart(info))
    for b, det in enumerate(dets):
        r = BatchResult(info, list(range(b * FRAMES, (b + 1) * FRAMES)), [0.0] * FRAMES, det, None)
        writer.issue(r)
        while time.perf_counter() - t0 < (b + 1) * FRAMES / fps:  # the batch lands at the GPU's rate
            time.sleep(0.0002)
        writer.put(r)
    last = time.perf_counter()
    writer.put(VideoEnd(info.path, batches * FRAMES, batches * FRAMES, info=info))
    writer.finish(True)
    end = time.perf_counter()
    return end - t0, end - last


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lanes", type=int, default=2, help="formatting processes (--formatters)")
    p.add_argument("--fps", type=float, default=2300.0, help="rate the batches land at (frames/s)")
    p.add_argument("--hog-ms", type=float, default=4.0, help="GIL-holding bursts of another thread (0: none)")
    p.add_argument("--batches", default="15,60", help="video lengths in batches of 64 (15: the 900-frame clip)")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    stop = threading.Event()
    if a.hog_ms:
        threading.Thread(target=gil_hog, args=(stop, a.hog_ms / 1000), daemon=True).start()
    out = Path(tempfile.mkdtemp()) / "out.jsonl"
    run(out, 4, a.fps, a.lanes, True)  # warm-up: the lanes start and import the tracking library
    print("| batches | tracked | wall s (median) | tail ms (median) | frames/s (median) |")
    print("|---|---|---|---|---|")
    for batches in map(int, a.batches.split(",")):
        for track in (False, True):
            runs = sorted(run(out, batches, a.fps, a.lanes, track) for _ in range(a.repeats))
            wall, tail = runs[len(runs) // 2][0], sorted(t for _, t in runs)[len(runs) // 2]
            print(f"| {batches} | {track} | {wall:.3f} | {tail * 1000:.0f} | {batches * FRAMES / wall:,.0f} |",
                  flush=True)
    stop.set()
    FormatPool.close_all()


if __name__ == "__main__":  # the lanes are spawned: they import this file without running it
    main()
