"""vidpipe: object detection over video at the GPU's limit.

Sources (decode) -> preprocess -> model -> postprocess -> sinks, scheduled by the engine.
"""

from .config import Config
from .detector import Detector, FrameResult
from .errors import VidpipeError
from .postprocess import Detections, ssd_decode

__version__ = "0.1.0"
__all__ = ["Config", "Detector", "Detections", "FrameResult", "VidpipeError", "ssd_decode", "__version__"]
