"""Whether this machine has compiled vidpipe's Triton kernels yet, and compiling them off the
critical path when it has not.

Triton compiles a kernel on its first launch and keeps it in its cache directory. SSD300's five
post-processing kernels take ~15 s to compile on an H200 machine (most of it in Triton's MLIR
passes, which hold the GIL, for their sorting networks), longer than a whole short run. So with
``Config.kernels="auto"`` a run on a machine whose cache does not have them starts on the torch
implementation of the same operations (the reference the kernels are tested against; nothing to
compile, 0.4-0.6x the frames/s) and starts one background process that compiles the kernels into
the cache; the detector takes them as soon as they are ready, mid-run, and the runs after find
them. (Compiling on the critical path never pays: in the ~20 s the background compile took, the
torch path handled 30,000-50,000 frames.)

In: a :class:`~vidpipe.config.Config` (the settings the kernels are specialised on) and a frame
size. Out: :func:`choose` says "triton" or "torch", :func:`marker` where the compile's marker
lands; :func:`compile_in_background` starts a detached ``python -m vidpipe.kernels`` that builds a
detector with Triton kernels on the same device, runs it once on a blank batch of that size, and
then writes a marker file into Triton's cache directory, next to what it compiled (clearing that
cache clears the marker too). Nothing here touches CUDA in this process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .gil import switch_interval

# Settings that change what Triton compiles: the kernels' constants (candidates, detections kept,
# how the NMS threshold's float32 midpoint rounds), their integer arguments (Triton specialises an
# integer on divisibility by 16: the candidate threshold's bits, YOLO's candidate count from imgsz),
# input dtypes and layouts. Float arguments (score thresholds, SSD300's IoU) and everything about
# inputs, outputs and scheduling do not.
_SPECIALISED = ("model", "precision", "channels_last", "imgsz", "postprocess", "candidate_threshold",
                "per_class_candidates", "max_detections", "iou_threshold")
_SOURCES = ("postprocess.py", "preprocess.py", "letterbox.py", "nms.py")  # vidpipe's Triton kernels
# A compiling process older than this is taken as dead (the background compile takes ~20 s on an H200).
STALE_S = 600.0


def cache_dir() -> Path:
    """Triton's cache directory (``TRITON_CACHE_DIR``, else ``~/.triton/cache``)."""
    return Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")


def key(config) -> str:
    """What the compiled kernels depend on: vidpipe's kernel sources, Triton's and torch's versions
    and the settings they are specialised on. (Not the GPU: a machine whose GPU model changed
    compiles on first use, as Triton keys its own cache by the target.)"""
    import torch
    import triton

    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    h.update(json.dumps([triton.__version__, torch.__version__,
                         [getattr(config, f) for f in _SPECIALISED]], default=str).encode())
    return h.hexdigest()[:32]


def marker(config) -> Path:
    """The file whose existence says a background compile of ``config``'s kernels has finished."""
    return cache_dir() / "vidpipe" / f"{key(config)}.ready"


def ready(config) -> bool:
    """Whether a background compile for ``config``'s kernels has finished on this machine."""
    return marker(config).is_file()


def choose(config, device_type: str) -> str:
    """``config.kernels`` resolved: "auto" is "triton" on a GPU whose cache has the kernels (or
    when Triton is missing: the torch path then serves anyway), else "torch"."""
    if config.kernels != "auto":
        return config.kernels
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton"
    return "triton" if device_type != "cuda" or ready(config) else "torch"


def key_ahead(switch_s: float) -> threading.Thread | None:
    """Start, on a daemon thread, the key Triton computes on a process's first kernel launch (even one
    served from its cache): a hash of Triton's own files, ``libtriton.so`` (~0.5 GB) among them, 0.42 s
    on an H200 machine and ~1 s on a 2-core CPU, before any first batch could run (``vidpipe bench
    --suite startup``). Started as the detector is built, it overlaps the model's build (torchvision's
    import); hashlib lets go of the GIL, and the thread takes it back once per MB read and hashed, sooner
    with the switch interval at ``switch_s`` (at Python's 5 ms, beside the import, the hash took 3.6-4.6
    s). Join the thread before the first launch: Triton caches the key once computed, and a launch meanwhile
    would compute it again. None without Triton's key function (another Triton version)."""
    try:
        from triton.runtime.cache import triton_key
    except ImportError:
        return None

    def work() -> None:
        with switch_interval(switch_s):
            triton_key()

    thread = threading.Thread(target=work, name="vidpipe-triton-key", daemon=True)
    thread.start()
    return thread


def compile_in_background(config, device: str, height: int, width: int) -> bool:
    """Start the process that compiles ``config``'s kernels for ``height x width`` frames on
    ``device``, unless one is already at it. True if one was started."""
    done = marker(config)
    done.parent.mkdir(parents=True, exist_ok=True)
    busy = done.with_suffix(".compiling")
    try:
        if time.time() - busy.stat().st_mtime < STALE_S:
            return False
    except FileNotFoundError:
        pass
    busy.write_text(str(os.getpid()))
    spec = {"config": dataclasses.asdict(config), "device": device, "size": [height, width], "marker": str(done)}
    # The child finds vidpipe where this process did, whatever put it on the path.
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    # Its output goes to a log beside the marker: nobody waits on this process to read an error.
    with open(done.with_suffix(".log"), "wb") as log:
        subprocess.Popen([sys.executable, "-m", "vidpipe.kernels", json.dumps(spec)], env=env, start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return True


def _compile(spec: dict) -> None:
    """The background process: one blank batch through a detector with Triton kernels, then the
    marker. Eager (no graphs, no torch.compile): the kernels are the same, and nothing else is
    worth compiling here."""
    import torch

    from .config import Config
    from .detector import Detector

    fields = {f.name for f in dataclasses.fields(Config)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items() if k in fields}
    config = Config(**values).replace(kernels="triton", cuda_graphs=False, compile="off", device=spec["device"])
    done, busy = Path(spec["marker"]), Path(spec["marker"]).with_suffix(".compiling")
    try:
        detector = Detector(config)
        h, w = spec["size"]
        detector.infer(torch.zeros(1, 3, h, w, dtype=torch.uint8, device=detector.device))
        if detector.device.type == "cuda":
            torch.cuda.synchronize(detector.device)
        done.write_text(json.dumps({"size": spec["size"], "time": time.time()}))
    finally:
        busy.unlink(missing_ok=True)


if __name__ == "__main__":
    _compile(json.loads(sys.argv[1]))
