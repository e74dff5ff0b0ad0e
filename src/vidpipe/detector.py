"""The detector: preprocess -> SSD300 -> post-process for a batch of frames, on one device.

In:  ``Tensor[N, 3, H, W]`` uint8 RGB frames on the detector's device.
Out: :class:`~vidpipe.postprocess.Detections` on the same device, boxes in pixels of the
original frame (x1, y1, x2, y2), issued asynchronously (nothing waits for the GPU).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .coco import CLASS_NAMES
from .config import Config, resolve_device
from .model import SSD300
from .postprocess import Detections, ssd_decode_loop, ssd_decode_padded
from .preprocess import INPUT_SIZE, preprocess
from .profiling import nvtx_range
from .weights import load_model

log = logging.getLogger(__name__)

@dataclass
class FrameResult:
    """Detections of one frame: ``boxes float32[D, 4]`` pixels (x1, y1, x2, y2), ``labels int64[D]``
    1..80, ``scores float32[D]`` descending; ``time`` in seconds since the first frame."""

    video: str
    frame: int
    time: float
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    @property
    def class_names(self) -> list[str]:
        return [CLASS_NAMES[i] for i in self.labels.tolist()]

    def __repr__(self) -> str:
        return f"FrameResult(video={self.video!r}, frame={self.frame}, detections={len(self.labels)})"


def _setup_compile_cache() -> None:
    # Inductor's caches persist here, so a second run skips most of the compile time.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "vidpipe", "inductor"))


class Detector:
    """SSD300 on one device with the switches of a :class:`Config`.

    Build once, then call :meth:`infer` per batch or :meth:`detect` per video::

        det = Detector(Config(weights="random", device="cuda"))
        for result in det.detect("video.mp4"):
            print(result.frame, result.class_names)
    """

    def __init__(self, config: Config = Config(), model: SSD300 | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        cpu = self.device.type == "cpu"
        # CPUs have no fast half-precision convolutions; stay exact there.
        self.dtype = torch.float32 if cpu else config.dtype
        self.channels_last = config.channels_last and not cpu
        model = model if model is not None else load_model(
            config.weights, random_candidates=config.random_candidates,
            random_classes=config.random_classes)
        model = model.eval().to(self.device, dtype=self.dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.compiled = config.compile == "on" or (config.compile == "auto" and not cpu)
        self.cuda_graphs = self.compiled and config.cuda_graphs and not cpu
        if self.compiled:
            _setup_compile_cache()
            self.forward = torch.compile(model, dynamic=False,
                                         mode="reduce-overhead" if self.cuda_graphs else None)
        else:
            self.forward = model
        self.batch_size = config.batch_size

    @torch.inference_mode()
    def infer(self, frames: torch.Tensor) -> Detections:
        """Detections for ``frames`` (uint8 ``[N, 3, H, W]`` on this device), boxes in pixels.

        Compiled models see a fixed batch shape: a short batch is padded and the padding dropped.
        A CUDA out-of-memory error retries the batch in halves, and later batches stay smaller.
        """
        n = frames.shape[0]
        if n > self.batch_size:
            parts = [self.infer(f) for f in frames.split(self.batch_size)]
            return Detections(*(torch.cat(ts) for ts in zip(*(p.astuple() for p in parts))))
        try:
            return self._infer(frames)
        except torch.cuda.OutOfMemoryError:
            if n == 1:
                raise
            torch.cuda.empty_cache()
            self.batch_size = max(1, n // 2)
            log.warning("CUDA out of memory at batch %d; retrying with batch size %d", n, self.batch_size)
            return self.infer(frames)

    def _infer(self, frames: torch.Tensor) -> Detections:
        n, _, h, w = frames.shape
        with nvtx_range("preprocess"):
            x = preprocess(frames, dtype=self.dtype, normalize=self.config.normalize,
                           channels_last=self.channels_last)
            if self.compiled and n < self.batch_size:
                x = torch.cat([x, x.new_zeros(self.batch_size - n, 3, INPUT_SIZE, INPUT_SIZE)])
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
        with nvtx_range("inference"):
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()  # the previous batch's outputs are consumed
            locs, scores = self.forward(x)
            locs, scores = locs[:n], scores[:n]
        with nvtx_range("postprocess"):
            det = self.postprocess(locs, scores)
            det.boxes[..., 0::2] *= w  # scalars: a scale tensor would be a synchronising copy
            det.boxes[..., 1::2] *= h
        return det

    def postprocess(self, locs: torch.Tensor, scores: torch.Tensor) -> Detections:
        mode, kw = self.config.postprocess, self.config.decode_kwargs()
        if mode == "gpu":
            return ssd_decode_padded(locs, scores, **kw)
        results = ssd_decode_loop(locs, scores, host_copy=mode == "loop_host", **kw)
        return pad_results(results, self.config.max_detections)

    def detect(self, path: str | os.PathLike) -> Iterator[FrameResult]:
        """Lazily yield one :class:`FrameResult` per frame of ``path``, in order."""
        from .engine import iter_results

        yield from iter_results(self, [str(path)])


def pad_results(results: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], d: int) -> Detections:
    """Per-image ``(boxes, labels, scores)`` -> padded :class:`Detections` on the CPU."""
    n = len(results)
    out = Detections(torch.zeros(n, d, 4), torch.zeros(n, d, dtype=torch.int64), torch.zeros(n, d),
                     torch.tensor([len(l) for _, l, _ in results], dtype=torch.int64))
    for i, (b, l, s) in enumerate(results):
        out.boxes[i, :len(l)], out.labels[i, :len(l)], out.scores[i, :len(l)] = b.cpu(), l.cpu(), s.cpu()
    return out
