"""A user's own nn.Module through the whole engine (BoxesFamily): a tiny detector whose boxes
depend on the frame, run with Detector(model=...) and by a registered name, on the CPU in CI and
with CUDA graphs on a GPU. The effect checked: the detections written are the module's outputs,
thresholded, ranked and scaled to the frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vidpipe
from vidpipe import Config, Detector, models
from vidpipe.engine import run
from vidpipe.errors import VidpipeError
from vidpipe.models import register_model
from vidpipe.models.boxes import BoxesFamily
from vidpipe.sinks import open_sink
from vidpipe.sources import PyAVSource
from vidpipe.synth import make_clip

IN_H, IN_W = 32, 48


class Brightness(torch.nn.Module):
    """Per image three boxes in input pixels; their scores are the image's mean brightness (in
    [0, 1]), half of it, and 0.01; labels 2, 0, 1. Constants are buffers, as a module that is
    captured in a CUDA graph keeps them (a tensor made from a list is a host copy per call)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("boxes", torch.tensor([[4.0, 2.0, 20.0, 30.0], [0.0, 0.0, 48.0, 32.0],
                                                    [1.0, 1.0, 2.0, 2.0]]))
        self.register_buffer("labels", torch.tensor([2, 0, 1]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        m = x.float().mean((1, 2, 3))
        scores = torch.stack([m, m / 2, torch.full_like(m, 0.01)], 1)
        return self.boxes.expand(n, -1, -1), scores, self.labels.expand(n, -1)


def family() -> BoxesFamily:
    return BoxesFamily(Brightness(), ["cat", "dog", "bird"], input_size=(IN_H, IN_W), score_threshold=0.05,
                       max_detections=2, name="brightness")


def expected(frame: torch.Tensor) -> tuple[np.ndarray, list[int], np.ndarray]:
    x = torch.nn.functional.interpolate(frame[None].float(), size=(IN_H, IN_W), mode="bilinear",
                                        align_corners=False) / 255
    m = float(x.mean())
    _, h, w = frame.shape
    sx, sy = w / IN_W, h / IN_H
    boxes = np.array([[4 * sx, 2 * sy, 20 * sx, 30 * sy], [0, 0, 48 * sx, 32 * sy]], np.float32)
    keep = [s > 0.05 for s in (m, m / 2)]
    return boxes[keep], [2, 0][:sum(keep)], np.array([m, m / 2], np.float32)[keep]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_a_users_module_runs_through_the_engine(tmp_path, device):
    clip = make_clip(tmp_path / "c.mp4", frames=10, width=96, height=80)
    # PyAV on both devices: the same decoded pixels as the expectation's (NVDEC converts colour its own way).
    det = Detector(Config(device=device, batch_size=4, precision="fp32", decoder="pyav"), model=family())
    results = list(vidpipe.detect(clip, det))
    if device == "cuda":  # the module and the post-processing ran as captured graphs
        from vidpipe.graphs import CudaGraphs

        assert [type(g) for g in det._graphs.values()] == [CudaGraphs]
    frames = [f for b in PyAVSource(str(clip)).batches(16) for f in b.frames]
    assert [r.frame for r in results] == list(range(10))
    for r, frame in zip(results, frames):
        boxes, labels, scores = expected(frame)
        assert r.labels.tolist() == labels and r.class_names == [["cat", "dog", "bird"][i] for i in labels]
        np.testing.assert_allclose(r.boxes, boxes, rtol=1e-5)
        np.testing.assert_allclose(r.scores, scores, rtol=1e-3)


@pytest.fixture
def registry(monkeypatch):
    """Registrations made by a test end with it."""
    monkeypatch.setattr(models, "_BUILDERS", list(models._BUILDERS))


def built(cfg: Config) -> BoxesFamily:  # a module-level builder: worker processes can import it
    return family()


def test_a_registered_name_builds_it_and_the_sinks_name_its_classes(tmp_path, registry):
    register_model("brightness-test", lambda cfg: family())
    clip = make_clip(tmp_path / "c.mp4", frames=5, width=96, height=80)
    det = Detector(Config(model="brightness-test", device="cpu", batch_size=4))
    out = tmp_path / "o.jsonl"
    report = run(det, [str(clip)], lambda v: open_sink("jsonl", out, v.path, v.width, v.height, det.classes))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert report.frames == 5 and [x["frame"] for x in lines] == list(range(5))
    assert all(d["class_name"] == ["cat", "dog", "bird"][d["class_id"]] for x in lines for d in x["detections"])
    assert all(x["detections"] and x["detections"][0]["class_id"] == 2 for x in lines)


def test_a_registered_model_runs_in_worker_processes(tmp_path, registry):
    """Two CPU worker processes share a file's parts, each building the model by the name
    registered in this process: its detections, not SSD300's."""
    from vidpipe.scale import parse_devices, run_processes

    register_model("brightness-procs", built)
    clip = make_clip(tmp_path / "c.mp4", frames=24, width=96, height=80, bframes=False)
    out = tmp_path / "o.jsonl"
    report = run_processes(Config(model="brightness-procs", batch_size=4), {str(clip): out}, "jsonl",
                           parse_devices("cpu") * 2, split_frames=8)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert not report.failed and [x["frame"] for x in lines] == list(range(24))
    assert all(x["detections"] and x["detections"][0]["class_name"] == "bird" for x in lines)  # the module's label 2


def test_a_lambda_registration_over_processes_is_one_line(tmp_path, registry):
    from vidpipe.scale import parse_devices, run_processes

    register_model("brightness-lambda", lambda cfg: family())
    clip = make_clip(tmp_path / "c.mp4", frames=4, width=96, height=80)
    with pytest.raises(VidpipeError, match="--model brightness-lambda: its registration cannot reach worker processes .* not a lambda"):
        run_processes(Config(model="brightness-lambda"), {str(clip): tmp_path / "o.jsonl"}, "jsonl",
                      parse_devices("cpu") * 2)


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="score_threshold must be a number in"):
        BoxesFamily(Brightness(), ["a"], score_threshold=2.0)
    with pytest.raises(ValueError, match="max_detections must be >= 1"):
        BoxesFamily(Brightness(), ["a"], max_detections=0)
