"""The environment a child process starts with.

A process started with ``spawn`` (or ``subprocess``) copies this process's ``os.environ`` as it
starts, and some settings are read once, early, in the child: CUDA's ``CUDA_VISIBLE_DEVICES`` (a
worker's GPU), OpenBLAS's thread count (a formatting process's). :func:`child_environ` sets them
around the start and gives this process's own values back. Stdlib only.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()  # one start at a time: another thread's start would copy the other values


@contextmanager
def child_environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment while the block starts child processes, then the
    values from before (a name that was unset is unset again)."""
    with _lock:
        saved = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
