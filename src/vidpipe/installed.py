"""What this machine has installed for vidpipe, and a one-line answer where it does not work.

In: nothing (the installed packages and the GPU). Out: :func:`torch_pair` (raises
:class:`~vidpipe.errors.VidpipeError` naming the command to run when torch and torchvision were built
for each other's other versions), and :func:`report`, the lines ``vidpipe check`` prints: versions,
the GPU, NVDEC through PyNvVideoCodec and through PyAV, Triton, and each optional extra.
"""

from __future__ import annotations

import importlib.metadata as metadata
import platform
import re
from importlib.util import find_spec

from .errors import VidpipeError

# Optional packages: (import name, distribution, what it is for, the extra that installs it).
EXTRAS = [("PyNvVideoCodec", "PyNvVideoCodec", "NVDEC decoding of files", "nvdec"),
          ("ultralytics", "ultralytics", "YOLO checkpoints (--model best.pt)", "yolo"),
          ("trackers", "trackers", "tracking (--track)", "track"),
          ("supervision", "supervision", "lines and zones (--line, --zone)", "track"),
          ("pyarrow", "pyarrow", "--format parquet", "parquet"),
          ("ray", "ray", "Ray clusters (--ray)", "ray"),
          ("paho", "paho-mqtt", "events to an MQTT broker (--mqtt)", "service"),
          ("prometheus_client", "prometheus-client", "Prometheus metrics (--metrics)", "service"),
          ("flask", "flask", "the live view (--serve)", "service")]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def matching_torchvision(torch_version: str) -> str | None:
    """The torchvision release built for a torch release (2.N pairs with 0.(N+15))."""
    m = re.match(r"2\.(\d+)\.(\d+)", torch_version)
    return f"0.{int(m.group(1)) + 15}.{m.group(2)}" if m else None


def torch_pair() -> None:
    """torchvision's compiled operators load into this torch (a pair installed from two sources, or two
    releases, fails only deep inside a run: "operator torchvision::nms does not exist")."""
    import torch

    try:
        import torchvision

        torchvision.ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    except (RuntimeError, ImportError, AttributeError) as e:
        tv = _version("torchvision") or "?"
        want = matching_torchvision(torch.__version__.split("+")[0]) or "the release built for it"
        cpu = "+cpu" in torch.__version__ or not torch.cuda.is_available()
        index = " --index-url https://download.pytorch.org/whl/cpu" if cpu else ""
        raise VidpipeError(f"torch {torch.__version__} and torchvision {tv} do not work together "
                           f"({str(e).strip().splitlines()[0][:80]}); install a matching pair: pip install "
                           f"torch=={torch.__version__.split('+')[0]} torchvision=={want}{index}") from None


def report() -> list[tuple[str, bool, str]]:
    """``(what, ok, details)`` per line of ``vidpipe check``."""
    import torch

    lines = [("python", True, platform.python_version())]
    try:
        torch_pair()
        lines.append(("torch + torchvision", True, f"{torch.__version__} + {_version('torchvision')}"))
    except VidpipeError as e:
        lines.append(("torch + torchvision", False, str(e)))
    if torch.cuda.is_available():
        lines.append(("GPU", True, ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
                      + f" (CUDA {torch.version.cuda})"))
    else:
        lines.append(("GPU", False, "none visible: vidpipe runs on the CPU (FFmpeg decode, fp32)"))
    from .sources import ffmpeg_nvdec_available

    lines.append(("PyAV", True, f"{_version('av')} (FFmpeg); NVDEC for camera streams: "
                                f"{'yes' if ffmpeg_nvdec_available() else 'no'}"))
    triton = _version("triton")
    lines.append(("Triton", triton is not None, triton or "missing: GPU runs use torch ops for pre- and "
                                                          "post-processing (slower)"))
    for module, dist, purpose, extra in EXTRAS:
        version = _version(dist) if find_spec(module) is not None else None
        lines.append((dist, version is not None,
                      f"{version} ({purpose})" if version else f'missing: pip install "vidpipe[{extra}]" for {purpose}'))
    return lines
