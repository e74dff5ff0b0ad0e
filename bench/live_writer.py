"""The writer's host cost per live frame, no GPU: K cameras, each batch one frame of every camera (a
result per camera, as the scheduler issues a live batch), 20 detections a frame, written as JSON Lines
with capture time and latency by the engine's Writer in the calling thread. Compares results that share
their batch's host arrays (``HostBatch``, as the scheduler makes them) with results that each make
their own. Prints microseconds of the writer's thread per frame, median of the repeats (with 48-64
cameras on an H200 the writer held a fifth to a half of the engine process's GIL samples).
Usage: python bench/live_writer.py [--cameras 48] [--batches 100] [--repeats 7]"""

import argparse
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch

from vidpipe.engine.items import BatchResult, HostBatch, VideoEnd, VideoStart
from vidpipe.engine.write import Writer
from vidpipe.postprocess import Detections
from vidpipe.sinks import JsonlSink
from vidpipe.sources import VideoInfo

DETECTIONS = 20


def detections(frames: int, seed: int) -> Detections:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(frames, DETECTIONS, 2, generator=g) * 1800
    return Detections(torch.cat([xy, xy + 60], -1), torch.randint(0, 80, (frames, DETECTIONS), generator=g),
                      torch.rand(frames, DETECTIONS, generator=g).sort(1, descending=True).values,
                      torch.full((frames,), DETECTIONS))


def run(tmp: Path, cameras: int, batches: int, shared: bool) -> float:
    """Microseconds of the writer's thread per frame."""
    infos = [VideoInfo(str(tmp / f"cam{k}"), 1920, 1080, 0, 30.0, "h264", Fraction(1, 30)) for k in range(cameras)]
    writer = Writer(lambda i: JsonlSink(Path(i.path + ".jsonl"), i.path, i.width, i.height), False, None, None)
    for info in infos:
        writer.put(VideoStart(info))
    dets = [detections(cameras, b) for b in range(batches)]
    t0 = time.thread_time()
    for b, det in enumerate(dets):
        host = HostBatch(det, None) if shared else None
        for k, info in enumerate(infos):
            writer.put(BatchResult(info, [b], [b / 30], det, None, k, captured=[time.time()], shared=host))
    spent = time.thread_time() - t0
    for info in infos:
        writer.put(VideoEnd(info.path, batches, batches, info=info))
    writer.finish(True)
    return spent / (cameras * batches) * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cameras", type=int, default=48)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    times = {False: [], True: []}
    with tempfile.TemporaryDirectory() as d:  # the cameras' JSON Lines files
        tmp = Path(d)
        run(tmp, a.cameras, 5, True)  # warm-up
        for _ in range(a.repeats):  # interleaved
            for shared in (False, True):
                times[shared].append(run(tmp, a.cameras, a.batches, shared))
    print("| results | writer µs per frame (median) | spread |")
    print("|---|---|---|")
    for shared, xs in times.items():
        m = statistics.median(xs)
        print(f"| {'share their batch (HostBatch)' if shared else 'each its own (before)'} | {m:.1f} | "
              f"{(max(xs) - min(xs)) / m:.0%} |")


if __name__ == "__main__":
    main()
