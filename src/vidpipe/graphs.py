"""CUDA graphs of a detector's chain, and the batches that fill them.

In: a :class:`Chain` (the detector's preprocess + model and post-processing as callables, its
post-processing stream and thread, its capture gate) and a static ``uint8 [B, 3, H, W]`` input on
the GPU. Out, per replay: :class:`~vidpipe.postprocess.Detections` of the first ``n`` rows, on the
device or in pinned host memory behind an event (:class:`Deferred` when a thread issues it).

:class:`Batch` gathers frames of one size for one submit; with a graph it copies each part into
the graph's input as it is added.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from .postprocess import Detections
from .profiling import nvtx_range
from .runtime import CaptureGate
from .timeline import stamp

log = logging.getLogger(__name__)


@dataclass
class Chain:
    """What a detector's graphs capture and replay: ``model(frames, rows) -> outputs`` (preprocess and
    network, the batch padded to ``rows``) and ``post(outputs, h, w) -> Detections``."""

    model: Callable[[torch.Tensor, int], tuple[torch.Tensor, ...]]
    post: Callable[[tuple[torch.Tensor, ...], int, int], Detections]
    graph_postprocess: bool  # post may be captured (static shapes, no host reads)
    max_detections: int
    post_stream: torch.cuda.Stream
    post_thread: ThreadPoolExecutor
    gate: CaptureGate


MAX_GRAPHS = 4  # frame sizes whose captured graphs are kept
EAGER = object()  # a frame size whose capture failed


class CudaGraphs:
    """The detector's chain for one (batch, height, width) as two pairs of CUDA graphs used in turn,
    each pair preprocess + model on the caller's stream and post-processing on the detector's own
    high-priority stream, reading the model's outputs in place: batch i's post-processing runs
    beside batch i+1's model (the other pair), and a pair's model waits only for its own previous
    post-processing, two batches back. Rows of ``frames`` past a short batch hold stale frames:
    they only cost compute. A family whose post-processing cannot be captured (data-dependent
    shapes, host reads) runs it eagerly on the same stream, on the pair's static model outputs."""

    def __init__(self, chain: Chain, frames: torch.Tensor, tiers: tuple[int, ...] = ()) -> None:
        self.frames = frames
        self.post = chain.post_stream
        self.post_eager = None if chain.graph_postprocess else chain.post
        self.post_thread = chain.post_thread
        self.max_detections = chain.max_detections
        self.pending: list[Future | None] = [None, None]  # each pair's eager post-processing job
        device = frames.device
        _, _, h, w = frames.shape
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(current)
        # The full batch first: the smaller tiers' captures reuse the memory its activations freed.
        self.tiers = sorted({frames.shape[0], *(k for k in tiers if 0 < k < frames.shape[0])}, reverse=True)
        with torch.cuda.stream(side):  # warm-up outside the capture: compilation, Triton, cuDNN
            for k in self.tiers:
                for _ in range(2):
                    chain.post(chain.model(frames[:k], k), h, w)
        current.wait_stream(side)
        stamp("warmed")
        self.size = h, w
        # Per pair and tier: the model's graph, the post-processing's (None: eager), and the static
        # outputs the next step reads (the model's, or the detections).
        self.pairs: list[dict[int, tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph | None, tuple | Detections]]] = []
        # Decode threads keep running, but not through calls that would synchronise the device.
        with chain.gate.capture():
            for _ in range(2):
                # A memory pool per pair: one pair's activations never overwrite the other's outputs. A pair's
                # graphs share it: they run one after another, and each tier's outputs stay allocated.
                pool, graphs = torch.cuda.graph_pool_handle(), {}
                for k in self.tiers:
                    model = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(model, pool=pool, capture_error_mode="thread_local"):
                        outputs = chain.model(frames[:k], k)  # the first k rows: the same memory, no copy
                    if self.post_eager is not None:
                        graphs[k] = (model, None, outputs)
                        continue
                    post = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(post, pool=pool, capture_error_mode="thread_local"):
                        out = chain.post(outputs, h, w)
                    graphs[k] = (model, post, out)
                self.pairs.append(graphs)
        self.done: list[torch.cuda.Event | None] = [None, None]  # each pair's last post-processing
        self.turn = 0
        self.filling: Batch | None = None  # the batch being copied into `frames`, not yet submitted
        stamp("captured")
        log.info("captured the detector as CUDA graphs for batch %s at %dx%d", "/".join(map(str, self.tiers)), w, h)

    def tier(self, n: int) -> int:
        """The rows a batch of ``n`` frames costs: the smallest captured batch that holds them."""
        return min(k for k in self.tiers if k >= n)

    def run(self, n: int, host: bool) -> tuple[Detections, torch.cuda.Event | Deferred | None]:
        """Detections of the first ``n`` rows of ``frames``, on the smallest captured batch that holds them."""
        current = torch.cuda.current_stream(self.frames.device)
        turn, self.turn = self.turn, 1 - self.turn
        model, post, static = self.pairs[turn][self.tier(n)]
        with nvtx_range("replay"):
            if self.pending[turn] is not None:  # its eager post-processing is enqueued (and done[turn] recorded)
                self.pending[turn].result()
            if self.done[turn] is not None:  # its post-processing reads this pair's model outputs
                current.wait_event(self.done[turn])
            model.replay()
            if post is None and host:
                return self._post_later(turn, static, n, current)
            self.post.wait_stream(current)
            with torch.cuda.stream(self.post):
                if post is not None:
                    post.replay()
                    # Copies: the static outputs are overwritten by the pair's next replay.
                    out = [t[:n].to("cpu", non_blocking=True) if host else t[:n].clone() for t in static.astuple()]
                else:
                    det = self.post_eager(tuple(t[:n] for t in static), *self.size)
                    out = list(det.astuple())
                done = self.done[turn] = torch.cuda.Event()
                done.record()
        if host:
            return Detections(*out), done
        current.wait_event(done)
        for t in out:
            t.record_stream(current)
        return Detections(*out), None

    def _post_later(self, turn: int, static: tuple, n: int, current: torch.cuda.Stream
                    ) -> tuple[Detections, Deferred]:
        """Eager post-processing (it waits for the GPU between frames) on the detector's post thread,
        so the next batch's model is issued meanwhile; the detections land in pinned host buffers
        returned now, valid once the returned event has completed."""
        ready = torch.cuda.Event()
        ready.record(current)
        done = self.done[turn] = torch.cuda.Event()
        d = self.max_detections
        out = Detections(torch.empty(n, d, 4, pin_memory=True), torch.empty(n, d, dtype=torch.int64, pin_memory=True),
                         torch.empty(n, d, pin_memory=True), torch.empty(n, dtype=torch.int64, pin_memory=True))

        @torch.inference_mode()
        def job() -> None:
            with torch.cuda.device(self.frames.device), torch.cuda.stream(self.post):
                self.post.wait_event(ready)
                det = self.post_eager(tuple(t[:n] for t in static), *self.size)
                for dst, src in zip(out.astuple(), det.astuple()):
                    dst.copy_(src, non_blocking=True)
                done.record()

        self.pending[turn] = self.post_thread.submit(job)
        return out, Deferred(self.pending[turn], done)


    def drain(self) -> None:
        """Wait until no post-processing job reads this graph's outputs (before it is dropped)."""
        for job in self.pending:
            if job is not None:
                job.result()


class Deferred:
    """A CUDA event that the post-processing thread records: waiting on it waits for the thread
    to have issued the work first (an event never recorded would count as complete)."""

    def __init__(self, job: Future, event: torch.cuda.Event) -> None:
        self.job, self.event = job, event

    def query(self) -> bool:
        return self.job.done() and self.job.result() is None and self.event.query()

    def synchronize(self) -> None:
        self.job.result()
        self.event.synchronize()


class Batch:
    """Frames of one size gathered for one :meth:`Detector.submit`: ``size`` rows at most, ``n`` so
    far. With a CUDA graph the parts added are copied into the graph's input at :meth:`commit` (in
    the order of the current stream, so after the graph's previous replay has read it), all of them
    in one copy: the scheduler commits once per turn of its loop, so decoded frames are freed a turn
    after they arrive instead of waiting for the batch to fill, and many cameras' frames, which arrive
    one at a time, cost one copy a turn instead of one each. Without a graph, parts are kept."""

    def __init__(self, size: int, graph: CudaGraphs | None = None) -> None:
        self.size, self.graph = size, graph
        self.parts: list[torch.Tensor] = []  # with a graph: those not yet in its input
        self.n = 0
        if graph is not None:
            graph.filling = self

    def add(self, frames: torch.Tensor) -> None:
        """``frames``: uint8 ``[k, 3, H, W]`` on the detector's device, ``n + k <= size``."""
        k = frames.shape[0]
        if self.n + k > self.size:
            raise ValueError(f"{k} frames do not fit a batch of {self.size} holding {self.n}")
        self.parts.append(frames)
        self.n += k

    def commit(self) -> None:
        """With a graph: the parts added since the last commit copied into its input. Each copy lets go
        of the GIL and waits to take it back, behind every camera's decode thread."""
        if self.graph is None or not self.parts:
            return
        with torch.inference_mode():  # the graph's input is an inference tensor
            rows = self.graph.frames[self.n - sum(p.shape[0] for p in self.parts):self.n]
            if len(self.parts) == 1:
                rows.copy_(self.parts[0])
            else:
                torch.cat(self.parts, out=rows)
        self.parts = []

    def row(self, i: int) -> torch.Tensor:
        """Frame ``i`` of those added, ``[1, 3, H, W]``, a tensor of its own."""
        if self.graph is not None:
            self.commit()
            return self.graph.frames[i:i + 1].clone()
        for part in self.parts:
            if i < part.shape[0]:
                return part[i:i + 1].clone()
            i -= part.shape[0]
        raise IndexError(f"row {i} of a batch of {self.n}")

    def frames(self) -> torch.Tensor:
        """The ``n`` frames added, a tensor of their own (the graph's input is reused by the next batch)."""
        if self.graph is not None:
            self.commit()
            return self.graph.frames[:self.n].clone()
        return torch.cat(self.parts)
