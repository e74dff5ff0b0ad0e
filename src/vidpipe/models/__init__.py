"""Detector families: what the engine needs to know about a detector, and how one is chosen.

A :class:`ModelFamily` is the one thing that differs between detectors; the engine, CUDA graphs,
``torch.compile``, worker processes, Ray, sinks and the CLI are the same for all of them. It says:

* how frames are prepared on their device (:meth:`~ModelFamily.preprocess`: uint8
  ``Tensor[N, 3, H, W]`` RGB -> the network's input ``Tensor[N, 3, h, w]`` in the model's dtype;
  ``h, w`` = :meth:`~ModelFamily.input_size` of the frame size, fixed per video);
* the ``network`` (an ``nn.Module`` on the CPU, eval mode; the detector moves, casts and compiles
  it) whose ``forward(x)`` returns a tuple of tensors with the batch first;
* batched post-processing with the family's own semantics (:meth:`~ModelFamily.postprocess`:
  network outputs -> :class:`~vidpipe.postprocess.Detections` with boxes in pixels of the frame,
  padded to ``max_detections`` per frame) and whether it can be captured in a CUDA graph;
* its classes (:class:`~vidpipe.coco.Classes`: the name of each ``class_id`` results carry);
* the candidate load it puts on post-processing (:meth:`~ModelFamily.candidates`), printed
  beside benchmark figures;
* optionally ``capturable = False`` when its network cannot run inside a CUDA graph (data-dependent
  shapes or host reads in ``forward``): the detector then launches it eagerly;
* optionally ``fused: bool`` when it has vidpipe's Triton kernels (:mod:`vidpipe.kernels`) and a
  torch path for the same operations: the detector sets it from ``Config.kernels``.

Adding a family is one module with a builder registered under a name (:func:`register_model`).
Built in: ``ssd300`` (NVIDIA's SSD300), Ultralytics YOLO checkpoints and model yamls
(``--model yolo11m.pt``, ``--model yolo11n.yaml``), torchvision's detection models
(``--model torchvision:retinanet_resnet50_fpn_v2``), and a user's own module (:mod:`.boxes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

from ..errors import VidpipeError

if TYPE_CHECKING:
    import torch

    from ..coco import Classes
    from ..config import Config
    from ..postprocess import Detections


@runtime_checkable
class ModelFamily(Protocol):
    name: str
    network: torch.nn.Module
    classes: Classes
    max_detections: int
    graph_postprocess: bool  # postprocess has static shapes and never waits for the GPU

    def input_size(self, height: int, width: int) -> tuple[int, int]: ...

    def preprocess(self, frames: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor: ...

    def postprocess(self, outputs: tuple[torch.Tensor, ...], height: int, width: int) -> Detections: ...

    def candidates(self, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor: ...


Builder = Callable[["Config"], ModelFamily]
Registration = tuple[Callable[[str], bool], Builder]
_BUILDERS: list[Registration] = []


class _Named:
    """``matches`` given as a name (picklable, so a registration reaches worker processes)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, model: str) -> bool:
        return model == self.name


def register_model(matches: str | Callable[[str], bool], builder: Builder) -> None:
    """Make ``--model NAME`` (``Config.model``) build a family: ``matches`` is a name, or a test on
    the name; ``builder(config)`` returns the :class:`ModelFamily`. Later registrations win. Runs over
    worker processes (``--procs-per-device``, ``--devices``) take the registrations with them: there
    ``matches`` and ``builder`` must be picklable (a module-level function, not a lambda)."""
    _BUILDERS.insert(0, (matches if callable(matches) else _Named(matches), builder))


def registrations(model: str) -> list[Registration]:
    """What a worker process must replay to build ``model`` as this process would: the registration
    made after vidpipe's own that matches it, if any."""
    for i, (matches, builder) in enumerate(_BUILDERS):
        if matches(model):
            return [(matches, builder)] if i < len(_BUILDERS) - _BUILT_IN else []
    return []


def replay(registered: list[Registration]) -> None:
    """Register in this process what :func:`registrations` returned in another."""
    for matches, builder in registered:
        register_model(matches, builder)


def build_family(config: Config) -> ModelFamily:
    """The family ``config.model`` names, built (weights loaded) on the CPU."""
    for matches, builder in _BUILDERS:
        if matches(config.model):
            return builder(config)
    raise VidpipeError(f"--model {config.model}: unknown model; use ssd300, an Ultralytics checkpoint (*.pt) or "
                       "model yaml (*.yaml), torchvision:NAME, or register one with vidpipe.models.register_model")


def batchnorm_statistics(model: torch.nn.Module, forward: Callable[[], object]) -> list[torch.nn.Module]:
    """Random weights: every BatchNorm of ``model`` gets its statistics from one call of
    ``forward`` (which runs the model on real frames); returns those BatchNorms. A freshly
    initialised network's activations shrink or grow layer by layer past what fp16 holds."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: one batch sets the statistics
        bn.train()
    try:
        forward()
    finally:
        for bn in norms:
            bn.eval()
    return norms


def _ssd300(config: Config) -> ModelFamily:
    from .ssd300 import SSD300Family

    return SSD300Family.from_config(config)


def _yolo(config: Config) -> ModelFamily:
    from .yolo import YoloFamily

    return YoloFamily.from_config(config)


def _torchvision(config: Config) -> ModelFamily:
    from .tv import TorchvisionFamily

    return TorchvisionFamily.from_config(config)


register_model(lambda name: name.lower().endswith((".pt", ".pth", ".yaml", ".yml")), _yolo)
register_model(lambda name: name.startswith("torchvision:"), _torchvision)
register_model("ssd300", _ssd300)
_BUILT_IN = len(_BUILDERS)
