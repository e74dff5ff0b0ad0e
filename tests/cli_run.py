"""Running ``vidpipe detect`` as a user does, in a fresh process, and reading what it said and wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "vidpipe.cli", "detect"]
COMMON = ["--weights", "random", "--device", "cpu", "--batch-size", "4"]


def detect(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args), *COMMON], capture_output=True, text=True, timeout=timeout, **kw)


def one_line_error(r: subprocess.CompletedProcess, name: str) -> str:
    """The first error line, which must name ``name``; no traceback anywhere."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("vidpipe: error:")]
    assert lines and name in lines[0], r.stderr
    return lines[0]


def frames_of(path: Path) -> list[int]:
    return [json.loads(x)["frame"] for x in path.read_text().splitlines()]
