"""Ultralytics YOLO through vidpipe: the same detections as Ultralytics' own predict on the same
frames and weights (random weights re-aimed to a real candidate load, two seeds), its letterbox on
random frame sizes, the classes filter, and checkpoints that would run code refused."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from vidpipe.agreement import agree
from vidpipe.config import Config
from vidpipe.sources import PyAVSource
from vidpipe.synth import make_clip

ultralytics = pytest.importorskip("ultralytics")

CLI = [sys.executable, "-m", "vidpipe.cli", "detect"]


def agreement(video, frames: int, seed: int, device: str, tmp_path):
    """vidpipe vs Ultralytics' predict (batch 1, as its video loop) on the same decoded frames and weights."""
    from ultralytics import YOLO

    from vidpipe import Detector
    from vidpipe.models.yolo import YoloFamily

    cfg = Config(model="yolo11n.yaml", device=device, max_frames=frames, seed=seed, decoder="pyav")
    family = YoloFamily.from_config(cfg)
    family.save(tmp_path / "yolo.pt")
    ours = list(Detector(cfg, model=family).detect(video))
    peer = YOLO(str(tmp_path / "yolo.pt"))
    images = [f for b in PyAVSource(video, max_frames=frames).batches(16) for f in b.frames.permute(0, 2, 3, 1).numpy()]
    theirs = [r for f in images for r in peer.predict(np.ascontiguousarray(f[..., ::-1]), verbose=False,
                                                       device=device, half=device != "cpu")]
    assert len(ours) == len(theirs) == frames
    return agree([(r.boxes, r.labels, r.scores) for r in ours],
                 [(r.boxes.xyxy.cpu().numpy(), r.boxes.cls.cpu().long().numpy(), r.boxes.conf.cpu().numpy())
                  for r in theirs], iou=0.9, score_tol=0.02)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from conftest import SHARED_CLIP

    if SHARED_CLIP.is_file():
        return SHARED_CLIP
    return make_clip(tmp_path_factory.mktemp("yolo") / "v.mp4", frames=8, width=384, height=288)


@pytest.mark.parametrize("seed", [0, 1])
def test_detections_match_ultralytics_predict_on_cpu(video, seed, tmp_path):
    found = agreement(video, 4, seed, "cpu", tmp_path)
    assert found.reference > 100  # the re-aimed weights give NMS real work
    assert found.share >= 0.97 and found.extra_share <= 0.03, found


@pytest.mark.cuda
@pytest.mark.parametrize("seed", [0, 1])
def test_detections_match_ultralytics_predict_on_gpu(video, seed, tmp_path):
    found = agreement(video, 200, seed, "cuda", tmp_path)
    assert found.reference > 5000
    assert found.share >= 0.97 and found.extra_share <= 0.03, found


def test_letterbox_is_ultralytics_on_random_frame_sizes():
    from ultralytics.data.augment import LetterBox

    from vidpipe.models.yolo import YoloFamily

    family = YoloFamily.from_config(Config(model="yolo11n.yaml", device="cpu", random_candidates=0))
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    for _ in range(6):
        h, w = (int(x) for x in torch.randint(40, 700, (2,), generator=g))
        frame = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g)
        theirs = LetterBox(640, auto=True, stride=32)(image=np.ascontiguousarray(frame[0].permute(1, 2, 0).numpy()))
        ours = family.preprocess(frame, torch.float32, channels_last=False)[0].permute(1, 2, 0).numpy() * 255
        assert ours.shape == theirs.shape, (h, w)
        diff = np.abs(ours.round() - theirs.astype(np.float32))
        # cv2.resize interpolates in fixed point: on noise (the worst case) ~1 pixel value in 10 is one
        # level off; never more.
        assert diff.max() <= 1 and diff.mean() < 0.25, (h, w, diff.max(), diff.mean())


def test_classes_filter_keeps_exactly_those_classes(tmp_path, video):
    """With --classes, a frame's detections are those of the unfiltered run in those classes
    (class-aware NMS: other classes never suppress them)."""
    import json

    def run(*extra):
        out = tmp_path / f"o{len(extra)}.jsonl"
        r = subprocess.run([*CLI, str(video), "-o", str(out), "--model", "yolo11n.yaml", "--device", "cpu",
                            "--max-frames", "2", *extra], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return [json.loads(x)["detections"] for x in out.read_text().splitlines()]

    everything = run()
    present = sorted({d["class_id"] for frame in everything for d in frame})
    assert len(present) >= 2
    keep = set(present[::2])
    filtered = run("--classes", ",".join(map(str, sorted(keep))))
    assert filtered == [[d for d in frame if d["class_id"] in keep] for frame in everything]
    assert any(filtered)


def test_a_checkpoint_that_runs_code_is_refused_without_trust_weights(tmp_path, video):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(subprocess.run([sys.executable, "-c", f"""
import os, pickle, sys, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
torch.save({{"model": Evil()}}, sys.stdout.buffer)
"""], capture_output=True, check=True).stdout)
    r = subprocess.run([*CLI, str(video), "-o", str(tmp_path / "o.jsonl"), "--model", str(evil), "--device", "cpu"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--trust-weights" in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr
    assert not marker.exists()


def test_missing_ultralytics_is_one_line(tmp_path, video):
    script = f"""
import sys
sys.modules["ultralytics"] = None  # as if not installed
from vidpipe.cli import main
sys.exit(main(["detect", {str(video)!r}, "-o", {str(tmp_path / 'o.jsonl')!r}, "--model", "yolo11n.yaml",
               "--device", "cpu"]))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and 'pip install "vidpipe[yolo]"' in r.stderr and "Traceback" not in r.stderr
