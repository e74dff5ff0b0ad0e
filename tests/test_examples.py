"""Every script in examples/ runs as the docs show it, on a small clip, on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vidpipe.synth import make_clip

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("examples") / "clip.mp4", frames=12, width=160, height=120)


def run_example(name: str, *args, timeout: float = 300) -> str:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # the CPU path, as CI runs it
    r = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_every_example_has_a_test():
    tested = {"own_model.py", "supervision_annotate.py", "cameras.py", "parquet_query.py", "events.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_own_model(clip):
    lines = run_example("own_model.py", clip).splitlines()
    assert [int(x.split()[0]) for x in lines] == list(range(12))


def test_supervision_annotate(clip, tmp_path):
    pytest.importorskip("supervision")
    out = tmp_path / "frame.jpg"
    said = run_example("supervision_annotate.py", clip, out, 3)
    assert out.stat().st_size > 1000 and "on frame 3" in said


def test_cameras_added_and_removed(clip, tmp_path):
    said = run_example("cameras.py", clip, tmp_path)
    assert "['cam1.jsonl', 'cam2.jsonl']" in said
    for name in ("cam1", "cam2"):
        frames = [json.loads(x)["frame"] for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert frames and frames == sorted(set(frames))


def test_parquet_query(clip, tmp_path):
    pytest.importorskip("duckdb")
    pytest.importorskip("pyarrow")
    said = run_example("parquet_query.py", clip, tmp_path)
    assert "class_name" in said and "detections" in said
