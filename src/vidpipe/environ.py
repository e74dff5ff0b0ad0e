"""The environment a child process starts with, and its tie to the process that started it.

A process started with ``spawn`` (or ``subprocess``) copies this process's ``os.environ`` as it
starts, and some settings are read once, early, in the child: CUDA's ``CUDA_VISIBLE_DEVICES`` (a
worker's GPU), OpenBLAS's thread count (a formatting process's). :func:`child_environ` sets them
around the start and gives this process's own values back. :func:`die_with_parent` ends a child
with its parent, however the parent ends; :func:`as_child` also leaves Ctrl-C to the parent. Stdlib only.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
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


def die_with_parent(parent: int) -> None:
    """End this worker when the process that started it dies, even by SIGKILL (no orphan keeps a
    GPU busy and writes outputs nobody waits for)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def as_child(parent: int) -> None:
    """A child's start: it dies with ``parent``, and Ctrl-C (which a terminal sends to every process of
    the group) is the parent's to handle: the child ends when the parent stops it, with no traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
