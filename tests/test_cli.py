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


def test_every_config_field_has_a_flag_that_sets_it():
    """The options are generated from Config's fields: each field has one, and giving it changes
    that field of the Config the command runs with (and nothing else)."""
    from dataclasses import fields

    from vidpipe.cli import build_parser, config_from_args
    from vidpipe.config import Config

    parser = build_parser()
    detect = {a.dest: a for _, a in _options(parser) if _.endswith("detect")}
    values = {"int": "64", "float": "0.5", "tuple[int, ...]": "3,4", "lines": "door:0,0,9,9",
              "zones": "lobby:0,0,9,0,9,9", "gil_interval_ms": "2"}
    needs = {"lines": ["--track"]}  # crossings are counted per track
    for f in fields(Config):
        action = detect[f.name]
        argv = ["detect", "x.mp4", "-o", "o.jsonl", *needs.get(f.name, []), action.option_strings[0]]
        if f.type != "bool":
            kind = f.type.removesuffix(" | None")
            argv.append(action.choices[-1] if action.choices else values.get(
                f.name, values.get(kind, "cuda:0" if f.name == "device" else "some.pt")))
        cfg = config_from_args(parser.parse_args(argv))
        changed = [g.name for g in fields(Config) if getattr(cfg, g.name) != getattr(Config(), g.name)]
        assert sorted(changed) == sorted([f.name, *(x[2:] for x in needs.get(f.name, []))]), (f.name, changed)


def test_a_config_gives_back_the_options_that_made_it():
    """Config.argv(), which bench passes to the command it times: parsed again, the same Config, for
    random sets of options (each of a random value where the option has choices)."""
    import random
    from dataclasses import fields

    from vidpipe.cli import build_parser, config_from_args
    from vidpipe.config import Config

    parser = build_parser()
    detect = {a.dest: a for _, a in _options(parser) if _.endswith("detect")}
    values = {"int": ["64", "32"], "float": ["0.25", "0.5"], "tuple[int, ...]": ["3,4", "0"],
              "lines": ["door:0,0,9,9"], "zones": ["lobby:0,0,9,0,9,9", "hall:1,1,5,1,5,5"],
              "gil_interval_ms": ["2", "0.2"], "device": ["cuda:0", "cpu"]}
    rng = random.Random()
    assert Config().argv() == []
    for _ in range(20):
        argv = ["detect", "x.mp4", "-o", "o.jsonl"]
        for f in rng.sample(fields(Config), rng.randint(1, 12)):
            action = detect[f.name]
            argv.append(rng.choice(action.option_strings))
            if f.type != "bool":
                pool = values.get(f.name) or values.get(f.type.removesuffix(" | None")) or ["some.pt", "yolo11m.yaml"]
                argv.append(rng.choice(list(action.choices) if action.choices else pool))
        if "--line" in argv and "--track" not in argv:
            argv.append("--track")
        cfg = config_from_args(parser.parse_args(argv))
        again = config_from_args(parser.parse_args(["detect", "x.mp4", "-o", "o.jsonl", *cfg.argv()]))
        assert again == cfg, argv


def test_timeline_records_the_phases_of_a_run_in_order(tmp_path):
    """VIDPIPE_TIMELINE (what `bench --suite startup` reads): every phase of a CPU run, in order."""
    import json
    import os

    from vidpipe.synth import make_clip

    clip = make_clip(tmp_path / "a.mp4", frames=6, width=64, height=48)
    env = dict(os.environ, VIDPIPE_TIMELINE=str(tmp_path / "t.json"))
    r = subprocess.run([sys.executable, "-m", "vidpipe.cli", "detect", str(clip), "-o", str(tmp_path / "o.jsonl"),
                        "--weights", "random", "--device", "cpu"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    stamps = json.loads((tmp_path / "t.json").read_text())
    order = ["cli", "imports", "built", "model", "opened", "decoded", "issued", "written", "done"]  # no CUDA, no graphs
    assert sorted(stamps, key=stamps.get) == order
