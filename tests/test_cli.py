"""The command line a new user meets: help for every option, help without heavy imports."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest


def _options(parser: argparse.ArgumentParser, path: str = "vidpipe"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


def test_every_option_has_help():
    from vidpipe.cli import build_parser

    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, a in _options(build_parser())
               if not (a.help or "").strip()]
    assert missing == []


@pytest.mark.parametrize("argv", [["--help"], ["detect", "--help"], ["bench", "--help"], ["ladder", "--help"]])
def test_help_imports_neither_torch_nor_pyav(argv):
    code = f"""
import runpy, sys
sys.argv = ["vidpipe", *{argv!r}]
try:
    runpy.run_module("vidpipe.cli", run_name="__main__")
except SystemExit:
    pass
print("HEAVY", sorted(m for m in ("torch", "av", "triton", "numpy") if m in sys.modules))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "usage: vidpipe" in r.stdout and "HEAVY []" in r.stdout
