"""Ultralytics YOLO through vidpipe: the same detections as Ultralytics' own predict on the same
frames and weights (random weights re-aimed to a real candidate load, two seeds), its letterbox on
random frame sizes, the classes filter, and checkpoints that would run code refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from vidpipe.agreement import agree
from vidpipe.config import Config
from vidpipe.sources import PyAVSource
from vidpipe.synth import make_clip

ultralytics = pytest.importorskip("ultralytics")

CLI = [sys.executable, "-m", "vidpipe.cli", "detect"]


def smooth_family(cfg: Config, video):
    """yolo11n with its fresh random weights as Ultralytics initialises them (no BatchNorm
    statistics: activations shrink layer by layer, so the network is smooth, unlike the
    normalised random weights vidpipe benchmarks with, which put many candidates on equal scores),
    re-aimed on the video's first frames. fp32 only: fp16 flushes its activations to zero."""
    from ultralytics.nn import tasks

    from vidpipe.models.yolo import YoloFamily, _from_yaml

    family = YoloFamily(_from_yaml(tasks, "yolo11n.yaml", cfg.seed).fuse(verbose=False), cfg, "yolo11n", random=True)
    family.reaim(next(PyAVSource(str(video), max_frames=8).batches(8)).frames, 300)
    return family


def agreement(video, frames: int, seed: int, device: str, tmp_path):
    """vidpipe vs Ultralytics' predict (batch 1, as its video loop) on the same decoded frames and
    weights, in fp32."""
    from ultralytics import YOLO

    from vidpipe import Detector, detect

    # NCHW fp32 without TF32, one frame per batch, as Ultralytics' video loop runs it: the same
    # convolution kernels (cuDNN picks them by batch size too), so what is compared is the pipeline,
    # not two algorithms' rounding, which a random network amplifies.
    torch.backends.cudnn.allow_tf32 = False
    cfg = Config(model="yolo11n.yaml", device=device, max_frames=frames, seed=seed, decoder="pyav",
                 precision="fp32", channels_last=False, batch_size=1, kernels="triton")
    family = smooth_family(cfg, video)
    family.save(tmp_path / "yolo.pt")
    ours = list(detect(video, Detector(cfg, model=family)))
    peer = YOLO(str(tmp_path / "yolo.pt"))
    images = [f for b in PyAVSource(video, max_frames=frames).batches(16) for f in b.frames.permute(0, 2, 3, 1).numpy()]
    theirs = [r for f in images for r in peer.predict(np.ascontiguousarray(f[..., ::-1]), verbose=False,
                                                       device=device, quantize=32)]
    assert len(ours) == len(theirs) == frames
    return agree([(r.boxes, r.labels, r.scores) for r in ours],
                 [(r.boxes.xyxy.cpu().numpy(), r.boxes.cls.cpu().long().numpy(), r.boxes.conf.cpu().numpy())
                  for r in theirs], iou=0.9, score_tol=0.02)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_nms_and_box_scaling_are_ultralytics_on_random_predictions(device):
    """The post-processing alone against ultralytics.utils.nms.non_max_suppression + scale_boxes,
    on fresh random predictions (boxes, scores and classes drawn anew each run), in the model's
    half precision on a GPU."""
    from ultralytics.utils import ops
    from ultralytics.utils.nms import non_max_suppression

    from vidpipe.models.yolo import YoloFamily

    dtype = torch.float16 if device == "cuda" else torch.float32
    for conf, iou, agnostic, classes in [(0.25, 0.7, False, None), (0.4, 0.5, True, None), (0.1, 0.6, False, (1, 3))]:
        family = YoloFamily.from_config(Config(model="yolo11n.yaml", device="cpu", random_candidates=0,
                                               score_threshold=conf, iou_threshold=iou, agnostic_nms=agnostic,
                                               classes=classes))
        n, nc, anchors, (h, w) = 3, 6, 6300, (288, 384)
        in_h, in_w = family.input_size(h, w)
        xy = torch.rand(n, 2, anchors) * torch.tensor([in_w, in_h]).view(1, 2, 1)
        wh = torch.rand(n, 2, anchors) * 120 + 2
        pred = torch.cat([xy, wh, torch.rand(n, nc, anchors) ** 3], 1).to(device, dtype)
        ours = family.postprocess((pred,), h, w)
        theirs = non_max_suppression(pred, conf, iou, classes=list(classes) if classes else None, agnostic=agnostic,
                                     max_det=300)
        for i, t in enumerate(theirs):
            t[:, :4] = ops.scale_boxes((in_h, in_w), t[:, :4], (h, w))
            k = int(ours.counts[i])
            assert k == len(t) > 0
            assert torch.equal(ours.labels[i, :k].cpu(), t[:, 5].long().cpu())
            assert torch.allclose(ours.scores[i, :k].cpu(), t[:, 4].float().cpu())
            assert torch.allclose(ours.boxes[i, :k].cpu(), t[:, :4].float().cpu(), atol=1e-3)


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
    assert found.reference > 2000
    assert found.share >= 0.97 and found.extra_share <= 0.03, found


@pytest.mark.cuda
@pytest.mark.parametrize("seed", [0, 1])
def test_detections_match_ultralytics_predict_on_gpu_at_1080p(seed, tmp_path):
    """The camera-like 1080p clip (shared/media/make_camera_clip.py; bench/h200.sh makes it and
    names it in VIDPIPE_CAMERA_CLIP): the 3x downscaling letterbox."""
    import os

    clip = os.environ.get("VIDPIPE_CAMERA_CLIP")
    if not clip or not os.path.isfile(clip):
        pytest.skip("VIDPIPE_CAMERA_CLIP (the camera-like 1080p clip) not given")
    found = agreement(clip, 100, seed, "cuda", tmp_path)
    assert found.reference > 1000
    assert found.share >= 0.97 and found.extra_share <= 0.03, found


LETTERBOX = r"""
import sys
import textwrap
import numpy as np, torch
from ultralytics.data.augment import LetterBox
from vidpipe import letterbox as lb
from vidpipe.models.yolo import letterbox
g = torch.Generator().manual_seed(int(sys.argv[1]))
sizes = [(288, 384), (1080, 1920), (240, 320)] + [tuple(int(x) for x in torch.randint(40, 1300, (2,), generator=g))
                                                 for _ in range(5)]
for h, w in sizes:
    frame = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g)
    theirs = LetterBox(640, auto=True, stride=32)(image=np.ascontiguousarray(frame[0].permute(1, 2, 0).numpy()))
    new_h, new_w, *pad = letterbox(h, w, 640, 32)
    theirs = torch.from_numpy(theirs).permute(2, 0, 1)[None].float()
    if sys.argv[2] == "kernel":  # a CUDA kernel: "/ 255" as torch computes it on a GPU
        ours = lb._letterbox_triton(frame, new_h, new_w, tuple(pad), torch.float32, torch.channels_last)
        assert torch.equal(ours, theirs * (torch.tensor(1.0) / 255)), (h, w)
    else:
        ours = lb.letterbox(frame, new_h, new_w, tuple(pad), torch.float32)
        assert torch.equal(ours, theirs / 255), (h, w)
print("ok")
"""


@pytest.mark.parametrize("path", ["torch", pytest.param("kernel", marks=pytest.mark.skipif(
    not __import__("importlib").util.find_spec("triton"), reason="no Triton"))])
def test_letterbox_is_ultralytics_bit_for_bit_on_random_frame_sizes(path):
    """cv2.resize's fixed-point INTER_LINEAR, padding and / 255 reproduced exactly (not within a
    level): on fresh random noise frames of random sizes (up- and downscaling), the torch path and
    the CUDA kernel through Triton's interpreter. Each against Ultralytics' LetterBox followed by
    "/ 255" as torch does it where that path runs (CPU: a division; CUDA: times 1/255)."""
    import os

    seed = int.from_bytes(os.urandom(4), "little")
    r = subprocess.run([sys.executable, "-c", LETTERBOX, str(seed), path], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, TRITON_INTERPRET="1"))
    assert r.returncode == 0 and r.stdout.strip() == "ok", f"seed {seed}: {r.stderr[-2000:]}"


@pytest.mark.cuda
def test_letterbox_kernel_is_the_torch_path_on_gpu():
    from vidpipe.letterbox import letterbox as lb
    from vidpipe.models.yolo import letterbox

    g = torch.Generator().manual_seed(int.from_bytes(__import__("os").urandom(4), "little"))
    for h, w in ((288, 384), (1080, 1920), (333, 517)):
        f = torch.randint(0, 256, (3, 3, h, w), dtype=torch.uint8, generator=g).cuda()
        new_h, new_w, *pad = letterbox(h, w, 640, 32)
        for dtype in (torch.float32, torch.float16):
            assert torch.equal(lb(f, new_h, new_w, tuple(pad), dtype, channels_last=True),
                               lb(f, new_h, new_w, tuple(pad), dtype, fused=False))


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
import textwrap
sys.modules["ultralytics"] = None  # as if not installed
from vidpipe.cli import main
sys.exit(main(["detect", {str(video)!r}, "-o", {str(tmp_path / 'o.jsonl')!r}, "--model", "yolo11n.yaml",
               "--device", "cpu"]))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and 'pip install "vidpipe[yolo]"' in r.stderr and "Traceback" not in r.stderr


def test_compiled_yolo_is_one_graph_per_frame_size_without_graph_breaks(monkeypatch):
    """Ultralytics' head makes its anchors on first sight of an input shape, reading its strides on
    the host: traced, that broke YOLO into 23 graphs. The detector runs each new shape once eagerly
    first, so the trace holds the whole network, also when frame sizes alternate. Traced by Dynamo
    with its eager backend: what Inductor would compile, without the minutes of compiling it."""
    import functools

    from torch._dynamo.utils import counters

    from vidpipe import Detector

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    det = Detector(Config(model="yolo11n.yaml", device="cpu", compile="on", batch_size=1))
    rng = np.random.default_rng()
    a, b = [(int(rng.integers(64, 200)), int(rng.integers(64, 200))) for _ in range(2)]
    while det.family.input_size(*b) == det.family.input_size(*a):
        b = (b[0] + 32, b[1])
    for h, w in (a, b, a):
        det.infer(torch.from_numpy(rng.integers(0, 256, (1, 3, h, w), dtype=np.uint8)))
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2


@pytest.mark.cuda
def test_compiled_graphs_are_the_eager_network_when_frame_sizes_alternate(monkeypatch):
    """torch.compile with CUDA graphs against the eager network, one YOLO shared by both detectors
    (fresh random weights, re-aimed on fresh random scenes on the CPU at the batch shape the GPU
    then runs), two frame sizes in turn: the eager detector's calls move the head between sizes
    after the compiled detector's graphs were captured, which then replay. fp32 without TF32, so
    only Inductor's rounding differs."""
    from ultralytics.nn import tasks

    from vidpipe import Detector
    from vidpipe.models.yolo import YoloFamily, _from_yaml
    from vidpipe.synth import smooth_frames

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    seed = int(np.random.default_rng().integers(1 << 20))
    cfg = Config(model="yolo11n.yaml", device="cuda", precision="fp32", channels_last=False, batch_size=4,
                 kernels="triton", seed=seed)
    family = YoloFamily(_from_yaml(tasks, "yolo11n.yaml", seed).fuse(verbose=False), cfg, "yolo11n", random=True)
    small, large = (288, 384), (1080, 1920)
    scenes = {size: smooth_frames(4, seed + i, *size, detail=0.2) for i, size in enumerate((small, large))}
    family.reaim(scenes[large], 300)
    compiled = Detector(cfg.replace(compile="on", cuda_graphs=True), model=family)
    eager = Detector(cfg.replace(compile="off", cuda_graphs=False), model=family)
    found = {}
    for det, size in [(compiled, small), (compiled, large), (eager, small), (eager, large), (compiled, small),
                      (compiled, large)]:
        found[det is compiled, size] = [(b.cpu().numpy(), lab.cpu().numpy(), s.cpu().numpy())
                                        for b, lab, s in det.infer(scenes[size].cuda()).split()]
    agreement = agree(found[True, small] + found[True, large], found[False, small] + found[False, large],
                      iou=0.9, score_tol=0.02)
    assert agreement.reference > 100
    assert agreement.share >= 0.97 and agreement.extra_share <= 0.03, (seed, agreement)


def test_ultralytics_is_imported_without_looking_up_whether_it_is_online():
    """Ultralytics' import resolves two DNS names to tell whether it is online, which waits for the
    resolver's time-out on a machine that cannot reach one; vidpipe imports it offline, and leaves the
    environment of the processes it starts as the user's."""
    pytest.importorskip("ultralytics")
    script = textwrap.dedent("""
        import os, socket
        looked_up = []
        real = socket.getaddrinfo
        socket.getaddrinfo = lambda host, *a, **k: looked_up.append(host) or real(host, *a, **k)
        from vidpipe.models.yolo import _ultralytics
        _ultralytics()
        print(looked_up, "YOLO_OFFLINE" in os.environ)
    """)
    env = {k: v for k, v in os.environ.items() if k != "YOLO_OFFLINE"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "[] False", r.stdout
