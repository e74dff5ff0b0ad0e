"""An opt-in record of when a process reached each phase of a run, for start-up measurements.

With ``VIDPIPE_TIMELINE=FILE`` in the environment, :func:`stamp` records the wall-clock time
(``time.time()``) at which each phase was first reached, and :func:`save` writes them to FILE as a
JSON object. Without it both do nothing. Phases: ``cli`` (command line parsed), ``imports`` (torch
and the pipeline imported), ``built`` (the family's network built on the CPU, weights loaded),
``cuda`` (CUDA initialised), ``model`` (detector ready: weights on the device), ``opened`` (first
decoder opened), ``decoded`` (first frames decoded), ``warmed`` (the first graphs' eager warm-up
run), ``captured`` (first CUDA graphs captured), ``issued`` (first batch issued),
``written`` (first result written), ``done`` (every input finished). Stdlib only.
"""

from __future__ import annotations

import json
import os
import time

_STAMPS: dict[str, float] = {}


def stamp(phase: str) -> None:
    if phase not in _STAMPS and os.environ.get("VIDPIPE_TIMELINE"):
        _STAMPS[phase] = time.time()


def save() -> None:
    path = os.environ.get("VIDPIPE_TIMELINE")
    if path:
        with open(path, "w") as f:
            json.dump(_STAMPS, f)
