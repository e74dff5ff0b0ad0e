"""How torch.compile sees a detector's network: graphs compiled and graph breaks after one call per
frame size, each size on a new detector as `vidpipe bench` builds them. Detector.network runs the
network once eagerly per new input shape before the compiled call (Ultralytics' head makes its anchors
outside the trace); --compiled-only calls the compiled network alone. Runs on the CPU (batch 2) or on a GPU.
Usage: python bench/graph_breaks.py [--model yolov8n.yaml] [--device cpu] [--compiled-only]"""

import argparse
import logging

import torch
from torch._dynamo.utils import counters

from vidpipe import Config, Detector

p = argparse.ArgumentParser()
p.add_argument("--model", default="yolov8n.yaml")
p.add_argument("--device", default="cpu")
p.add_argument("--compiled-only", action="store_true")
p.add_argument("--sizes", default="288x384,1080x1920", help="frame sizes HxW, one detector each")
a = p.parse_args()


class _LimitHits(logging.Handler):
    """Counts Dynamo's "hit config.recompile_limit" warnings: past it, that function runs eagerly."""

    hits = 0

    def emit(self, record: logging.LogRecord) -> None:
        _LimitHits.hits += "recompile_limit" in record.getMessage()


logging.getLogger("torch._dynamo.convert_frame").addHandler(_LimitHits())

print("| frame size | network input | graphs so far | graph breaks so far | "
      "functions past the recompile limit so far |")
print("|---|---|---|---|---|")
for size in a.sizes.split(","):
    h, w = map(int, size.split("x"))
    det = Detector(Config(model=a.model, device=a.device, compile="on", batch_size=2))
    x = torch.zeros(2, 3, *det.family.input_size(h, w), device=det.device, dtype=det.dtype)
    with torch.inference_mode():
        (det.forward if a.compiled_only else det.network)(x)
    print(f"| {h}x{w} | {tuple(x.shape[2:])} | {counters['stats']['unique_graphs']} | "
          f"{sum(counters['graph_break'].values())} | {_LimitHits.hits} |", flush=True)
