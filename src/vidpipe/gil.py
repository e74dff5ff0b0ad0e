"""The process's GIL switch interval, shortened while vidpipe's threads compete for the GIL.

A thread that lets go of the GIL (a decoder call, a CUDA synchronisation, a hash of a large file)
waits up to Python's switch interval (5 ms) to get it back while another thread runs Python
(``bench/nvdec_gil.py``: NVDEC at one frame per call, 504 frames/s alone, 41 beside a thread running
Python, 424 at 0.5 ms). :func:`switch_interval` sets a shorter interval for a block and gives the
process's own back when the last block that set it ends (blocks may run on several threads at once).
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_holders = 0  # blocks inside switch_interval now, on any thread
_before = 0.0  # the process's switch interval before the first of them


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
