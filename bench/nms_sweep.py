"""Tile sizes of vidpipe.nms's kernel: milliseconds per batch of 64 images (CUDA events, median of
20) for each (TILE, CHUNK), at candidate loads from a quiet scene to every anchor of a 640x480
input, IoU 0.7, up to 300 kept. Boxes are clustered as detections are. Usage: python bench/nms_sweep.py"""

import itertools

import torch

from vidpipe import nms


def boxes(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, k // 8 + 1, 1, 2, generator=g) * 600
    xy = (centre + torch.randn(n, k // 8 + 1, 8, 2, generator=g) * 10).reshape(n, -1, 2)[:, :k]
    return torch.cat([xy, xy + torch.rand(n, k, 2, generator=g) * 80 + 4], -1).cuda()


def timed(b: torch.Tensor, counts: torch.Tensor) -> float:
    times = []
    for _ in range(22):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        nms.greedy_nms(b, counts, 0.7, 300)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times[2:])[len(times[2:]) // 2]


g = torch.Generator().manual_seed(0)
loads = (500, 2000, 6300)
print("| TILE | CHUNK | " + " | ".join(f"{k} candidates (ms)" for k in loads) + " |")
print("|---|---|" + "---|" * len(loads))
data = {k: boxes(64, k, g) for k in loads}
for tile, chunk in itertools.product((128, 256, 512, 1024), (8, 16, 32)):
    nms.TILE, nms.CHUNK = tile, chunk
    row = [timed(data[k], torch.full((64,), k, device="cuda")) for k in loads]
    print(f"| {tile} | {chunk} | " + " | ".join(f"{t:.3f}" for t in row) + " |")
