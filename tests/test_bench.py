"""vidpipe bench on the CPU: the pipeline suite's table, its one-command column from a command that ran."""

from __future__ import annotations

import re
import subprocess
import sys

from vidpipe.synth import make_clip


def test_pipeline_suite_times_the_same_configuration_as_one_command(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=10, width=64, height=48)
    results = tmp_path / "results.md"
    r = subprocess.run([sys.executable, "-m", "vidpipe.cli", "bench", str(clip), "--weights", "random", "--device",
                        "cpu", "--repeats", "1", "--max-frames", "3", "--batch-size", "1", "--results", str(results)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = results.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| input"))
    row = next(line for line in text.splitlines() if line.startswith("| clip.mp4"))
    assert header.count("|") == row.count("|") and "(d) one command" in header
    wall, beyond = map(float, re.fullmatch(r"([\d.]+) \((-?[\d.]+)\)", row.strip("| ").split(" | ")[-1]).groups())
    assert wall > 0 and beyond < wall  # (wall - the import, measured apart: negative when the import varies)
    # The command got the options the bench was given, and ran: its output holds the frames asked for.
    assert "`vidpipe detect VIDEO -o OUT --weights random --device cpu --batch-size 1 --max-frames 3`" in text
    assert "the command wrote 3 frames" in text
