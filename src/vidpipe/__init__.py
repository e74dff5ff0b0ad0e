"""vidpipe: object detection over video at the GPU's limit.

Sources (decode) -> preprocess -> model -> postprocess -> sinks, scheduled by the engine.
The names below load on first use (PEP 562): ``import vidpipe`` and ``vidpipe --help`` do not
import torch.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"
_EXPORTS = {"detect": "api", "Config": "config", "Detector": "detector", "FrameResult": "detector",
            "Detections": "postprocess", "ssd_decode": "postprocess", "VidpipeError": "errors"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'vidpipe' has no attribute {name!r}")
