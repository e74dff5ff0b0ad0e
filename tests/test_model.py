from __future__ import annotations

import pickle

import pytest
import torch

from vidpipe.boxes import NUM_BOXES, default_boxes
from vidpipe.errors import VidpipeError
from vidpipe.model import SSD300
from vidpipe.preprocess import preprocess
from vidpipe.weights import calibrate_candidates, calibrated_random_ssd300, load_model, save_checkpoint

# Names and shapes from NVIDIA's published SSD300 v1.1 checkpoint layout.
NVIDIA_KEYS = {
    "feature_extractor.feature_extractor.0.weight": (64, 3, 7, 7),
    "feature_extractor.feature_extractor.6.0.conv1.weight": (256, 512, 1, 1),
    "feature_extractor.feature_extractor.6.0.downsample.0.weight": (1024, 512, 1, 1),
    "feature_extractor.feature_extractor.6.5.bn3.running_var": (1024,),
    "additional_blocks.0.0.weight": (256, 1024, 1, 1),
    "additional_blocks.0.3.weight": (512, 256, 3, 3),
    "additional_blocks.4.3.weight": (256, 128, 3, 3),
    "loc.0.weight": (16, 1024, 3, 3),
    "loc.5.bias": (16,),
    "conf.0.weight": (324, 1024, 3, 3),
    "conf.1.weight": (486, 512, 3, 3),
    "conf.5.bias": (324,),
}


def test_parameter_names_and_shapes():
    state = SSD300().state_dict()
    for key, shape in NVIDIA_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("feature_extractor.feature_extractor.7") for k in state)
    block = SSD300().feature_extractor.feature_extractor[6][0]
    assert block.conv1.stride == block.conv2.stride == block.downsample[0].stride == (1, 1)


def test_output_shapes_and_dtype(random_model):
    with torch.no_grad():
        locs, scores = random_model(torch.randn(2, 3, 300, 300))
    assert locs.shape == (2, 4, NUM_BOXES) and scores.shape == (2, 81, NUM_BOXES)


def test_default_boxes_match_nvidia_layout():
    d = default_boxes()
    assert d.shape == (8732, 4) and d.min() >= 0 and d.max() <= 1
    # first box: 38x38 map, cell (0, 0), size 21/300
    torch.testing.assert_close(d[0], torch.tensor([0.5 / 37.5, 0.5 / 37.5, 0.07, 0.07]))
    # second cell moves along x (column) first
    torch.testing.assert_close(d[1, :2], torch.tensor([1.5 / 37.5, 0.5 / 37.5]))
    # the last box is the 1x1 map's last aspect box, clamped to 1
    assert d[-1, 0] == 0.5 and d[-1, 1] == 0.5
    assert int((d[:, 2] == 1).sum()) >= 1


def test_checkpoint_round_trip_nvidia_format(tmp_path, random_model):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(random_model, path)
    loaded = load_model(path)
    for k, v in random_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_module_prefix_and_plain_state_dict(tmp_path, random_model):
    state = {f"module.{k}": v for k, v in random_model.state_dict().items()}
    torch.save({"model": state, "epoch": 65, "label_map": {1: 1}}, tmp_path / "ddp.pt")
    torch.save(random_model.state_dict(), tmp_path / "plain.pt")
    for name in ("ddp.pt", "plain.pt"):
        assert torch.equal(load_model(tmp_path / name).loc[0].weight, random_model.loc[0].weight)


def test_wrong_keys_and_shapes_are_named(tmp_path, random_model):
    state = dict(random_model.state_dict())
    state.pop("loc.0.weight")
    state["extra.weight"] = torch.zeros(1)
    state["conf.0.bias"] = torch.zeros(5)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(VidpipeError) as e:
        load_model(tmp_path / "bad.pt")
    msg = str(e.value)
    assert "loc.0.weight" in msg and "extra.weight" in msg and "conf.0.bias" in msg and "\n" not in msg


class _Evil:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['VIDPIPE_PWNED'], 'w').write('ran')",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("VIDPIPE_PWNED", str(marker))
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(VidpipeError, match="refusing"):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()


def test_missing_weights_file():
    with pytest.raises(VidpipeError, match="not found"):
        load_model("/nonexistent/weights.pt")


def test_offline_default_weights_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import vidpipe.weights as w
    monkeypatch.setattr(w, "NVIDIA_URL", "http://127.0.0.1:9/nothing.pt")
    with pytest.raises(VidpipeError, match="--weights random") as e:
        load_model(None)
    # It says where the file comes from and where to put it by hand.
    assert "http://127.0.0.1:9/nothing.pt" in str(e.value) and str(tmp_path / "hub" / "checkpoints") in str(e.value)


def test_random_weights_are_calibrated_once_per_machine(monkeypatch, tmp_path):
    import vidpipe.weights as w

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    calibrate = w.calibrated_random_ssd300
    monkeypatch.setattr(w, "calibrated_random_ssd300", lambda *a, **k: calls.append(a) or calibrate(*a, **k))
    first = load_model("random", random_candidates=300, seed=3)
    second = load_model("random", random_candidates=300, seed=3)
    other = load_model("random", random_candidates=300, seed=4)
    assert len(calls) == 2  # seed 3 once, seed 4 once
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.conf[0].weight, other.conf[0].weight)


def _frames(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.rand(4, 3, 15, 20, generator=g) * 255
    return torch.nn.functional.interpolate(smooth, size=(120, 160), mode="bilinear").to(torch.uint8)


def _candidates(model, frames) -> torch.Tensor:
    with torch.no_grad():
        _, scores = model(preprocess(frames))
    return scores.softmax(1)[:, 1:] > 0.05


@pytest.mark.parametrize("target", [300, 2000])
def test_random_weights_are_calibrated(target):
    model = calibrated_random_ssd300(candidates=target, classes=20, seed=1)
    assert _candidates(model, _frames(0)).sum() > 0  # synthetic aim: some load on unseen frames
    measured = calibrate_candidates(model, preprocess(_frames(0)), target)  # re-aimed on these frames
    cand = _candidates(model, _frames(0))
    assert abs(measured - target) <= 0.05 * target + 1
    assert abs(cand.sum().item() / 4 - target) <= 0.05 * target + 1
    assert int((cand.sum((0, 2)) > 0).sum()) <= 20


def test_preprocess_shapes_and_normalisation():
    frames = torch.full((2, 3, 37, 53), 255, dtype=torch.uint8)
    x = preprocess(frames, normalize="symmetric", channels_last=True, dtype=torch.float16)
    assert x.shape == (2, 3, 300, 300) and x.dtype == torch.float16
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.all(x == 1)
    y = preprocess(frames)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(y[0, :, 0, 0], (1 - mean) / std)
    with pytest.raises(ValueError):
        preprocess(frames.float())


FUSED_PREPROCESS = r"""
import sys, torch
from vidpipe import preprocess as pp
g = torch.Generator().manual_seed(int(sys.argv[1]))
for _ in range(3):
    n, h, w = 1 + int(torch.randint(2, (1,), generator=g)), int(torch.randint(8, 700, (1,), generator=g)), \
        int(torch.randint(8, 700, (1,), generator=g))
    nhwc = bool(torch.randint(2, (1,), generator=g))
    f = torch.randint(0, 256, (n, h, w, 3) if nhwc else (n, 3, h, w), dtype=torch.uint8, generator=g)
    f = f.permute(0, 3, 1, 2) if nhwc else f
    for norm in ("imagenet", "symmetric"):
        ref = pp.preprocess(f, normalize=norm, channels_last=True, fused=False)
        got = pp._preprocess_triton(f, torch.float32, norm, True)
        assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)  # below fp16 input resolution
print("ok")
"""


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_preprocess_kernel_matches_torch_in_triton_interpreter(seed):
    """The CUDA resize-and-normalise kernel, run by Triton's CPU interpreter on random sizes (up-
    and downscaling, NCHW and NHWC-strided frames), computes what F.interpolate + normalise do."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", FUSED_PREPROCESS, str(seed)], env=dict(os.environ, TRITON_INTERPRET="1"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.cuda
def test_fused_preprocess_matches_torch_on_gpu():
    g = torch.Generator().manual_seed(7)
    for h, w in ((288, 384), (1080, 1920), (150, 200)):
        f = torch.randint(0, 256, (4, 3, h, w), dtype=torch.uint8, generator=g).cuda()
        for dtype in (torch.float32, torch.float16):
            ref = preprocess(f, dtype=dtype, channels_last=True, fused=False)
            got = preprocess(f, dtype=dtype, channels_last=True)
            torch.testing.assert_close(got, ref, rtol=1e-3, atol=2e-3)
