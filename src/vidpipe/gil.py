"""The interpreter while vidpipe's threads compete for the GIL: a shorter switch interval, and a
collector that does not walk the objects that existed before the run.

A thread that lets go of the GIL (a decoder call, a CUDA synchronisation, a hash of a large file)
waits up to Python's switch interval (5 ms) to get it back while another thread runs Python
(``bench/nvdec_gil.py``: NVDEC at one frame per call, 504 frames/s alone, 41 beside a thread running
Python, 424 at 0.5 ms). :func:`switch_interval` sets a shorter interval for a block and gives the
process's own back when the last block that set it ends (blocks may run on several threads at once).

:func:`frozen_heap`: a full collection of Python's cyclic garbage collector walks every object the
process has: ~350,000 once torch, torchvision and a model are loaded, ~150 ms on the CI machine, with
the GIL held, so every decode and compute thread stops meanwhile. ``gc.freeze()`` moves the objects
that exist when a run starts out of the collector's reach until the last run ends (``gc.unfreeze()``);
what the run itself creates is collected as before.
"""

from __future__ import annotations

import gc
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_holders = 0  # blocks inside switch_interval now, on any thread
_before = 0.0  # the process's switch interval before the first of them
_freezers = 0  # blocks inside frozen_heap now


@contextmanager
def switch_interval(seconds: float) -> Iterator[None]:
    """Python's switch interval set to ``seconds`` while the block runs, and given back when the
    last of the process's blocks that set it ends."""
    global _holders, _before
    with _lock:
        if _holders == 0:
            _before = sys.getswitchinterval()
        _holders += 1
        sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                sys.setswitchinterval(_before)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """The objects that exist now left out of the garbage collector's passes while the block runs,
    given back when the last of the process's blocks that froze them ends."""
    global _freezers
    with _lock:
        if _freezers == 0:
            gc.freeze()
        _freezers += 1
    try:
        yield
    finally:
        with _lock:
            _freezers -= 1
            if _freezers == 0:
                gc.unfreeze()
