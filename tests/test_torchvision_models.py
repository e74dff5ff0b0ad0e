"""torchvision's detection models through vidpipe (--model torchvision:NAME): the same detections
as torchvision's own eager model(images) on the same frames and weights (random, re-aimed to a
real candidate load, a fresh seed each run), on the CPU in CI and on the GPU."""

from __future__ import annotations

import copy
import os

import pytest
import torch

import vidpipe
from vidpipe import Config, Detector
from vidpipe.agreement import agree
from vidpipe.models.tv import TorchvisionFamily
from vidpipe.sources import PyAVSource
from vidpipe.synth import make_clip

MODELS = ["ssdlite320_mobilenet_v3_large", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "ssd300_vgg16"]
BATCHED = {"ssdlite320_mobilenet_v3_large", "retinanet_resnet50_fpn_v2", "ssd300_vgg16"}  # vidpipe's post-processing


def family(name: str, seed: int) -> TorchvisionFamily:
    """Random weights as `--weights random` makes them; the two-stage-free models at a smaller
    min_size than their default 800, so that CI's CPU runs them in seconds (the semantics compared
    are the same at any size)."""
    from torchvision.models import get_model, get_model_weights

    small = {} if name.startswith("ssd") else dict(min_size=320, max_size=480)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_model(name, weights=None, weights_backbone=None, **small)
    fam = TorchvisionFamily(model, name, list(get_model_weights(name).DEFAULT.meta["categories"]), random=True)
    fam.reaim(next(PyAVSource(CLIP[0], max_frames=2).batches(2)).frames, 200)
    return fam


CLIP: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def clip(tmp_path_factory):
    seed = int.from_bytes(os.urandom(2), "little")
    CLIP[:] = [str(make_clip(tmp_path_factory.mktemp("tv") / "c.mp4", frames=3, width=200, height=150, seed=seed))]
    return CLIP[0]


def compare(name: str, device: str) -> None:
    seed = int.from_bytes(os.urandom(2), "little")
    fam = family(name, seed)
    reference = copy.deepcopy(fam.network.model)
    reference.transform = fam.transform  # torchvision's own transform and post-processing back in place
    # fp32 NCHW without TF32 on both sides: the same convolution kernels, so what is compared is the
    # pipeline, not two algorithms' rounding, which a random network amplifies past the thresholds.
    # Triton's NMS pinned on the GPU: RetinaNet's and SSD's post-processing is then captured in the graphs.
    det = Detector(Config(device=device, precision="fp32", channels_last=False, batch_size=3, decoder="pyav",
                          kernels="triton"), model=fam)
    ours = list(vidpipe.detect(CLIP[0], det))
    if device == "cuda" and name in BATCHED:  # the detections above came out of a replayed post-processing graph
        assert det._graphs and all(post is not None for g in det._graphs.values() for _, post, _ in g.pairs), name
    frames = next(PyAVSource(CLIP[0]).batches(8)).frames
    with torch.inference_mode():
        theirs = reference.to(device).eval()([f.to(device).float() / 255 for f in frames])
    found = agree([(r.boxes, r.labels, r.scores) for r in ours],
                  [(t["boxes"].cpu().numpy(), t["labels"].cpu().numpy(), t["scores"].cpu().numpy()) for t in theirs],
                  iou=0.9, score_tol=0.02)
    assert found.reference > 50, (name, seed, found)  # the re-aimed weights give post-processing real work
    assert found.share >= 0.97 and found.extra_share <= 0.03, (name, seed, found)


@pytest.mark.parametrize("name", MODELS)
def test_detections_match_torchvision_on_cpu(name):
    compare(name, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("name", MODELS)
def test_detections_match_torchvision_on_gpu(name, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    compare(name, "cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])  # RetinaNet's, SSD's
def test_box_decoding_is_torchvisions(weights, dtype):
    """vidpipe's copy of BoxCoder.decode_single (which it cannot call inside a CUDA graph) gives
    the same bits on fresh random offsets and anchors."""
    from torchvision.models.detection._utils import BoxCoder

    from vidpipe.models.tv import _decode

    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    rel = (torch.randn(2000, 4, generator=g) * 2).to(dtype)
    corner = torch.rand(2000, 2, generator=g) * 1000
    anchors = torch.cat([corner, corner + 1 + torch.rand(2000, 2, generator=g) * 300], 1)
    coder = BoxCoder(weights)
    assert torch.equal(_decode(coder, rel, anchors), coder.decode_single(rel, anchors))


def test_random_weights_give_candidates_in_fp16():
    """Re-aimed random SSDlite run in fp16 (as on a GPU) still has finite logits and about the
    stated load (its random MobileNet overflows fp16 unless its BatchNorm statistics are set)."""
    fam = family("ssdlite320_mobilenet_v3_large", int.from_bytes(os.urandom(2), "little"))
    frames = next(PyAVSource(CLIP[0], max_frames=2).batches(2)).frames
    net = copy.deepcopy(fam.network).half()
    with torch.inference_mode():
        outputs = net(fam.preprocess(frames, torch.float16, channels_last=False))
    assert torch.isfinite(outputs[0]).all()
    assert 100 <= float(fam.candidates(outputs).float().mean()) <= 400  # re-aimed at 200 in fp32


def test_unknown_name_is_one_clear_error():
    with pytest.raises(vidpipe.VidpipeError, match="not a torchvision detection model"):
        Detector(Config(model="torchvision:resnet50_nope", weights="random", device="cpu"))


def test_the_command_line_runs_one_and_names_its_classes(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "o.jsonl"
    r = subprocess.run([sys.executable, "-m", "vidpipe.cli", "detect", CLIP[0], "-o", str(out), "--device", "cpu",
                        "--model", "torchvision:ssdlite320_mobilenet_v3_large", "--weights", "random"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["frame"] for x in lines] == [0, 1, 2] and all(x["detections"] for x in lines)
    from torchvision.models import get_model_weights

    names = get_model_weights("ssdlite320_mobilenet_v3_large").DEFAULT.meta["categories"]
    assert all(d["class_name"] == names[d["class_id"]] for x in lines for d in x["detections"])
