"""The detector: a model family's preprocess -> network -> post-process for a batch of frames, on
one device (the family, :class:`~vidpipe.models.ModelFamily`, says what each step is).

In:  ``Tensor[N, 3, H, W]`` uint8 RGB frames on the detector's device.
Out: :class:`~vidpipe.postprocess.Detections` on the same device, boxes in pixels of the
original frame (x1, y1, x2, y2), class ids the family's own, issued asynchronously (nothing
waits for the GPU, unless the family's post-processing must).

On CUDA the chain is captured once per frame size as CUDA graphs with static buffers
(preprocess + model; post-processing on a second stream, overlapping the next batch's model), so
a batch costs a few copies and two replays on the host: the issuing thread holds the GIL for well
under a millisecond instead of the ~8 ms of launching a few hundred kernels one by one.

A family's pre- and post-processing run as vidpipe's Triton kernels or as torch ops
(``Config.kernels``); with "auto" on a machine that has not compiled the kernels yet, the detector
starts on torch ops and takes the kernels mid-run once a background process has compiled them
(:mod:`vidpipe.kernels`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .coco import SSD300_CLASSES, Classes
from .config import Config, resolve_device
from .models import ModelFamily, build_family
from .postprocess import Detections
from .graphs import EAGER, MAX_GRAPHS, Batch, Chain, CudaGraphs
from .installed import torch_pair
from .kernels import choose as choose_kernels, compile_in_background, key_ahead, marker as kernels_marker
from .profiling import nvtx_range
from .runtime import DeviceRuntime, warm_up
from .timeline import stamp

log = logging.getLogger(__name__)
# How often a run on torch ops looks for the kernels a background process compiles: one stat() a
# second, against a compile of ~20 s.
KERNELS_POLL_S = 1.0
# Fractions of the batch size captured beside the full batch for live runs, whose batches mostly go
# out short: a padded row costs as much as a frame; a batch of more than a quarter pads by under half
# its frames.
TIERS = (1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4)
# A frame size whose graphs ran this recently is in use: a live camera's batches run every MAX_WAIT
# (50 ms) at the least, a file's parts every few batches.
IN_USE_S = 5.0


@dataclass
class FrameResult:
    """Detections of one frame: ``boxes float32[D, 4]`` pixels (x1, y1, x2, y2), ``labels int64[D]``
    the model's class ids (SSD300: 1..80), ``scores float32[D]`` descending; ``time`` in seconds
    since the first frame; ``classes`` names the ids; ``track_ids int64[D]`` with ``Config.track``
    (-1: no confirmed track), else None."""

    video: str
    frame: int
    time: float
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    classes: Classes = field(default=SSD300_CLASSES, repr=False)
    track_ids: np.ndarray | None = None

    @property
    def class_names(self) -> list[str]:
        return [self.classes.names[i] for i in self.labels.tolist()]

    def to_supervision(self):
        """These detections as a ``supervision.Detections`` (``xyxy``, ``confidence``, ``class_id``,
        ``tracker_id``, ``data["class_name"]``); needs supervision (``pip install supervision``)."""
        try:
            import supervision
        except ImportError:
            raise ImportError('FrameResult.to_supervision needs supervision: pip install "vidpipe[track]"') from None
        return supervision.Detections(xyxy=self.boxes.astype(np.float32).reshape(-1, 4),
                                      confidence=self.scores.astype(np.float32), class_id=self.labels.astype(int),
                                      tracker_id=None if self.track_ids is None else self.track_ids.astype(int),
                                      data={"class_name": np.array(self.class_names, dtype=str)})

    def __repr__(self) -> str:
        return f"FrameResult(video={self.video!r}, frame={self.frame}, detections={len(self.labels)})"


class Detector:
    """A detector model on one device with the switches of a :class:`Config`.

    Build once, then call :meth:`infer` per batch, or :func:`vidpipe.detect` per video::

        det = Detector(Config(weights="random", device="cuda"))          # SSD300
        det = Detector(Config(model="yolo11m.pt", device="cuda"))        # an Ultralytics YOLO
        for result in vidpipe.detect("video.mp4", det):
            print(result.frame, result.class_names)

    ``model``: a :class:`~vidpipe.models.ModelFamily` to run instead of the one ``config.model``
    names (or an SSD300 network, for SSD300 with other weights).
    """

    def __init__(self, config: Config = Config(), model: ModelFamily | torch.nn.Module | None = None) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"Detector takes a vidpipe.Config (e.g. Config(model='yolo11m.pt')), "
                            f"got {type(config).__name__} {config!r:.60}")
        torch_pair()  # a mismatched torchvision fails here in one line, not inside the first batch
        self.device = resolve_device(config.device)
        kernels = choose_kernels(config, self.device.type)
        # Not compiled on this machine yet: torch ops now; a background process compiles the kernels
        # once the first frame size is known, and _kernels_for takes them when they are ready.
        self._kernels_ready: Path | None = (kernels_marker(config) if config.kernels == "auto" and kernels == "torch"
                                            else None)
        self._kernels_polled: float | None = None  # when _kernels_ready was last looked for; None: not started
        self.config = config = config.replace(kernels=kernels)
        cpu = self.device.type == "cpu"
        # CPUs have no fast half-precision convolutions; stay exact there.
        self.dtype = torch.float32 if cpu else config.dtype
        self.channels_last = config.channels_last and not cpu
        warm_up(self.device)  # CUDA and its libraries load while the model is built
        # And Triton's key, when this run launches vidpipe's kernels: joined before the first batch.
        triton = self.device.type == "cuda" and kernels == "triton"
        self._triton_key = key_ahead(config.gil_interval_ms / 1000) if triton else None
        if isinstance(model, torch.nn.Module):
            from .models.ssd300 import SSD300Family

            model = SSD300Family.from_config(config, network=model)
        self.family: ModelFamily = model if model is not None else build_family(config)
        if hasattr(self.family, "fused"):
            self.family.fused = kernels != "torch"  # this config's choice, also for a family built elsewhere
        else:
            self._kernels_ready = None  # none of vidpipe's kernels to compile
        stamp("built")
        if self.device.type == "cuda":
            torch.cuda.init()  # the CUDA context, timed apart from the weights' copy (bench --suite startup)
            stamp("cuda")
        network = self.family.network.eval().to(self.device, dtype=self.dtype)
        if self.channels_last:
            network = network.to(memory_format=torch.channels_last)
        self.model = network
        # "auto" is decided per run where its length is known (Config.for_run); here it means off.
        self.compiled = config.compile == "on"
        self.cuda_graphs = config.cuda_graphs and not cpu and getattr(self.family, "capturable", True)
        self.forward = torch.compile(network, dynamic=False) if self.compiled else network
        self._eager_shape: torch.Size | None = None  # the input shape the network last ran on eagerly
        self.batch_size = config.batch_for(self.device)
        self.runtime = DeviceRuntime(self.device)  # streams, NVDEC sessions and the capture gate of this device
        self.post_stream = torch.cuda.Stream(self.device, priority=-1) if self.cuda_graphs else None
        # One thread, so eager post-processing (a family whose post-processing cannot be captured)
        # runs in batch order beside the next batch's model.
        self.post_thread = ThreadPoolExecutor(1, thread_name_prefix="vidpipe-post") if self.cuda_graphs else None
        self._graphs: OrderedDict[tuple[int, int, int, bool], CudaGraphs] = OrderedDict()
        self._used: dict[tuple[int, int, int, bool], float] = {}  # when each kept graph was last asked for

    @property
    def classes(self) -> Classes:
        return self.family.classes

    @torch.inference_mode()
    def infer(self, frames: torch.Tensor) -> Detections:
        """Detections for ``frames`` (uint8 ``[N, 3, H, W]`` on this device), boxes in pixels,
        ready in the order of the current stream.

        On GPUs a short batch is padded to the batch size and the padding dropped.
        A CUDA out-of-memory error retries the batch in halves, and later batches stay smaller.
        """
        return self._run([frames], host=False)[0]

    @torch.inference_mode()
    def batch(self, h: int, w: int, short: bool = False) -> Batch:
        """An empty batch for frames of ``h x w``: :meth:`Batch.add` frames, then :meth:`submit` it.
        One open batch per frame size at a time (with CUDA graphs it fills the graph's input; a
        batch left unsubmitted is overwritten by the next). ``short``: see :meth:`prepare`."""
        graph = self.prepare(h, w, short)
        return Batch(self.batch_size, None if graph is EAGER else graph)

    @torch.inference_mode()
    def prepare(self, h: int, w: int, short: bool = False) -> CudaGraphs | object:
        """The CUDA graphs for frames of ``h x w`` at the current batch size, captured now if they
        were not (``EAGER``: none: a CPU, graphs off, or a capture that failed). A run calls it for its
        first input's size while its decoders start, so the capture does not wait for the first frames.
        ``short``: batches mostly go out short (live sources), so graphs are captured for ``TIERS`` of the
        batch too and a batch runs on the smallest that holds it: many cameras over several processes
        cost the GPU their frames rather than a full batch each time a process's frames waited
        ``MAX_WAIT``. A frame's detections then follow its tier's kernels (equal to fp16 rounding). Not
        with ``--compile on``: one shape, one compile."""
        if not self.cuda_graphs:
            return EAGER
        try:
            return self._graph(h, w, short)
        except torch.cuda.OutOfMemoryError:
            return EAGER  # submit() meets it again and retries in smaller batches

    @torch.inference_mode()
    def submit(self, batch: Batch) -> tuple[Detections, torch.cuda.Event | None]:
        """:meth:`infer` on ``batch``, with the detections copied to (pinned) host memory: valid once
        the returned event has completed (None: already valid). On CUDA the copy to the host is
        issued where post-processing runs, so the current stream never waits for it and the next
        batch's model overlaps this batch's post-processing."""
        return self._submit(batch, host=True)

    def _submit(self, batch: Batch, host: bool) -> tuple[Detections, torch.cuda.Event | None]:
        if batch.graph is None:
            return self._run(batch.parts, host)
        batch.commit()
        batch.graph.filling = None
        return batch.graph.run(batch.n, host)

    def _run(self, parts: list[torch.Tensor], host: bool) -> tuple[Detections, torch.cuda.Event | None]:
        while True:
            try:
                return self._run_once(parts, host)
            except torch.cuda.OutOfMemoryError:
                if not self._after_oom(sum(p.shape[0] for p in parts)):
                    raise

    def _after_oom(self, n: int) -> bool:
        """The out-of-memory policy: a batch of ``n`` > 1 frames is retried in halves, and later
        batches stay at the smaller size (graphs are recaptured for it). False: give up."""
        if n == 1:
            return False
        self._drop_graphs()
        torch.cuda.empty_cache()
        self.batch_size = max(1, n // 2)
        log.warning("CUDA out of memory at batch %d; retrying with batch size %d", n, self.batch_size)
        return True

    def _run_once(self, parts: list[torch.Tensor], host: bool) -> tuple[Detections, torch.cuda.Event | None]:
        n = sum(p.shape[0] for p in parts)
        if n > self.batch_size:
            results = [self.infer(f) for f in torch.cat(parts).split(self.batch_size)]
            return self._finish(Detections(*(torch.cat(ts) for ts in zip(*(r.astuple() for r in results)))), host)
        graph = self._graph(*parts[0].shape[-2:]) if self.cuda_graphs else EAGER
        # Launched one by one while a batch fills the graph's input (infer() on frames of a
        # size that a running detect() is batching): the same kernels, so the same results.
        if graph is not EAGER and graph.filling is None:
            batch = Batch(self.batch_size, graph)
            for p in parts:
                batch.add(p)
            return self._submit(batch, host)
        self._kernels_for(*parts[0].shape[-2:])
        return self._finish(self._infer(parts[0] if len(parts) == 1 else torch.cat(parts)), host)

    def _kernels_for(self, h: int, w: int) -> None:
        """On torch ops for want of compiled kernels: have them compiled (first call), and take them
        once they are ready (looked for every KERNELS_POLL_S; the graphs are captured again)."""
        if self._kernels_ready is None:
            return
        now = time.monotonic()
        if self._kernels_polled is None:
            self._kernels_polled = now
            if compile_in_background(self.config, str(self.device), h, w):
                log.info("Triton kernels not compiled on this machine yet: torch ops until a background process has "
                         "compiled them")
            return
        if now - self._kernels_polled < KERNELS_POLL_S:
            return
        self._kernels_polled = now
        if self._kernels_ready.is_file():
            self._kernels_ready = None
            self.family.fused = True
            self.config = self.config.replace(kernels="triton")
            self._drop_graphs()
            log.info("Triton kernels compiled: taking them")

    def _finish(self, det: Detections, host: bool) -> tuple[Detections, torch.cuda.Event | None]:
        if not host:
            return det, None
        if self.device.type != "cuda":
            return det.to("cpu"), None
        det = det.to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return det, event

    def _drop_graphs(self) -> None:
        """Forget the captured graphs (a batch being filled keeps its own until submitted)."""
        for g in self._graphs.values():
            if g is not EAGER:
                g.drain()
        self._graphs.clear()
        self._used.clear()

    def _graph(self, h: int, w: int, short: bool = False) -> CudaGraphs | object:
        """The graphs for this size, captured if need be; ``EAGER`` where they could not be, or where
        every kept size ran within ``IN_USE_S``: frames of more sizes than ``MAX_GRAPHS`` at once (cameras
        of five resolutions, a folder of mixed clips) would otherwise evict and capture again batch after
        batch, each capture stalling every input; the extra size runs eagerly until a kept one goes idle."""
        self._kernels_for(h, w)
        key, now = (self.batch_size, h, w, short), time.monotonic()
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= MAX_GRAPHS and now - self._used[next(iter(self._graphs))] < IN_USE_S:
                return EAGER
            graph = self._graphs[key] = self._capture(h, w, short)
            while len(self._graphs) > MAX_GRAPHS:  # each holds its activations; keep the recent sizes
                old_key, old = self._graphs.popitem(last=False)
                del self._used[old_key]
                if old is not EAGER:
                    old.drain()
        self._graphs.move_to_end(key)
        self._used[key] = now
        return graph

    def _capture(self, h: int, w: int, short: bool = False) -> CudaGraphs | object:
        frames = torch.zeros(self.batch_size, 3, h, w, dtype=torch.uint8, device=self.device)
        # A compiled network keeps its one shape: each tier would be a compile of its own.
        tiers = tuple(round(self.batch_size * f) for f in TIERS) if short and not self.compiled else ()
        chain = Chain(self._model, self._post, self.family.graph_postprocess, self.family.max_detections,
                      self.post_stream, self.post_thread, self.runtime.gate)
        for _ in range(3):
            try:
                return CudaGraphs(chain, frames, tiers)
            except RuntimeError as e:  # e.g. a capture invalidated by another thread's CUDA call
                error = e
        log.warning("CUDA graph capture failed at %dx%d (%s); launching kernels one by one instead",
                    w, h, str(error).splitlines()[0])
        return EAGER

    def _infer(self, frames: torch.Tensor) -> Detections:
        _, _, h, w = frames.shape
        return self._post(self._model(frames), h, w)

    def _model(self, frames: torch.Tensor, rows: int | None = None) -> tuple[torch.Tensor, ...]:
        """The network's outputs for ``frames``, run as a batch of ``rows`` (default: the batch size)."""
        if self._triton_key is not None:
            self._triton_key.join()
            self._triton_key = None
        n, rows = frames.shape[0], rows or self.batch_size
        with nvtx_range("preprocess"):
            x = self.family.preprocess(frames, self.dtype, self.channels_last)
            # On GPUs every batch runs at a fixed size (the batch; a live run's tiers of it): compiled code
            # and captured graphs need fixed shapes, and a frame's detections must not depend on how many
            # frames share its batch (cuDNN picks kernels by batch size, and fp16 rounding follows).
            if self.device.type != "cpu" and n < rows:
                x = torch.cat([x, x.new_zeros(rows - n, *x.shape[1:])])
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
        with nvtx_range("inference"):
            outputs = self.network(x)
        return tuple(o[:n] for o in outputs)

    def network(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The network alone on a preprocessed batch ``x`` (``[B, 3, h, w]`` in this detector's
        dtype and memory format, on its device), compiled where configured."""
        if self.compiled and x.shape != self._eager_shape:
            # A network may cache state per input shape on first sight of one (Ultralytics' head
            # makes its anchors, reading its strides on the host). Run eagerly once per change of
            # shape, that stays out of the trace: YOLO compiles to one graph per shape instead of
            # 23 graphs and 7 breaks, after which a process's second detector passed Dynamo's
            # recompile limit and ran eagerly (bench/graph_breaks.py).
            self.model(x)
            self._eager_shape = x.shape
        return self.forward(x)

    def _post(self, outputs: tuple[torch.Tensor, ...], h: int, w: int) -> Detections:
        return self.family.postprocess(outputs, h, w)
