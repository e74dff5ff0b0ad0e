"""Weights for :class:`~vidpipe.model.SSD300`: NVIDIA checkpoints, plain state dicts, and a seeded
random model whose class head is calibrated to a realistic candidate load.

Loading never unpickles code (``torch.load(weights_only=True)``) and checks keys and shapes strictly.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import VidpipeError
from .inputs import check_model_file
from .model import NUM_LABELS, SSD300

log = logging.getLogger(__name__)

NVIDIA_CHECKPOINT = "nvidia_ssdpyt_amp_200703.pt"
NVIDIA_URL = (
    "https://api.ngc.nvidia.com/v2/models/nvidia/ssd_pyt_ckpt_amp/versions/20.06.0/files/"
    + NVIDIA_CHECKPOINT
)
# NVIDIA's training script stores its argparse namespace beside the weights; nothing else is allowed.
_SAFE_GLOBALS = [argparse.Namespace]
MAX_CHECKPOINT_BYTES = 1 << 30  # NVIDIA's SSD300 checkpoint is ~160 MB: a larger file is not one


def default_checkpoint_path() -> Path:
    """Where torch.hub keeps NVIDIA's COCO checkpoint (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / NVIDIA_CHECKPOINT


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise VidpipeError(f"{path}: weights file not found")
    check_model_file(path, "--weights", MAX_CHECKPOINT_BYTES)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError by cause
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VidpipeError(f"{path}: refusing or unable to load weights safely: {reason}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VidpipeError(f"{path}: not an SSD300 state dict or NVIDIA checkpoint")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_strict(model: SSD300, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Copy ``state`` into ``model`` (``assign``: take its tensors instead); any missing, unexpected
    or mis-shaped key is a VidpipeError."""
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own.keys() & state.keys()
              if own[k].shape != state[k].shape]
    shapes += [f"{k} holds {state[k].dtype}, not floats" for k in own.keys() & state.keys()
               if own[k].is_floating_point() and not state[k].is_floating_point()]
    problems = []
    if missing:
        problems.append(f"missing keys {_abbrev(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_abbrev(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes {_abbrev(sorted(shapes))}")
    if problems:
        raise VidpipeError(f"{source}: not an SSD300 checkpoint: " + "; ".join(problems))
    model.load_state_dict(state, strict=True, assign=assign)


def _filled(state: dict[str, torch.Tensor], source: str) -> SSD300:
    """SSD300 holding ``state`` (float32). Built on the meta device and given the loaded tensors:
    initialising 25M parameters only to overwrite them took ~0.5 s of every start (2-core CPU)."""
    with torch.device("meta"):
        model = SSD300()
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_state_dict_strict(model, state, source, assign=True)
    return model


def _abbrev(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def save_checkpoint(model: SSD300, path: str | os.PathLike) -> None:
    """Write ``model`` in NVIDIA's checkpoint layout (``{'model': state_dict}``)."""
    torch.save({"model": model.state_dict()}, path)


def _download_default() -> Path:
    path = default_checkpoint_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading NVIDIA's SSD300 COCO checkpoint to %s", path)
    try:
        torch.hub.download_url_to_file(NVIDIA_URL, str(path), progress=True)
    except Exception as e:
        raise VidpipeError(
            f"the default SSD300 weights are not in {path} and could not be downloaded from {NVIDIA_URL} "
            f"({type(e).__name__}); download that file by hand into {path.parent}/, or pass --weights PATH to a "
            "checkpoint, or --weights random for benchmarks"
        ) from None
    return path


def load_model(weights: str | os.PathLike | None = None, *, random_candidates: int = 2000,
               random_classes: int = 20, seed: int = 0) -> SSD300:
    """Build SSD300 in eval mode on the CPU from ``weights``.

    ``weights``: a checkpoint path, ``None``/``"default"`` for NVIDIA's COCO checkpoint (downloaded on
    first use), or ``"random"`` for :func:`calibrated_random_ssd300` (detections mean nothing).
    """
    if weights == "random":
        log.warning("--weights random: detections are meaningless; for benchmarks only")
        return _cached_random(random_candidates, random_classes, seed)
    path = _download_default() if weights in (None, "default") else Path(weights)
    state = _state_dict_from_file(path)
    model = _filled(state, str(path))
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        log.warning("%s: %d parameter tensors hold non-finite values (NaN or inf): %s; detections will be empty "
                    "or fail as non-finite", path, len(bad), _abbrev(bad))
    return model.eval()


def cache_dir() -> Path:
    """vidpipe's cache: ``$XDG_CACHE_HOME/vidpipe`` (``~/.cache/vidpipe``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vidpipe"


def _cached_random(candidates: int, classes: int, seed: int) -> SSD300:
    """:func:`calibrated_random_ssd300`, calibrated once per (seed, load, classes, torch version)
    and kept in the cache: calibrating costs ~12 s on a 2-core CPU, every run."""
    path = cache_dir() / "random" / f"ssd300-seed{seed}-c{candidates}-k{classes}-torch{torch.__version__}.pt"
    if path.is_file():
        try:
            return _filled(_state_dict_from_file(path), str(path)).eval()
        except VidpipeError:  # damaged cache entry: calibrate again and replace it
            log.info("%s: unreadable, calibrating again", path)
    model = calibrated_random_ssd300(candidates, classes, seed=seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_checkpoint(model, tmp)
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: run on, uncached
        log.info("could not cache random weights in %s (%s)", path, e.strerror)
    return model


def _calibration_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth random scenes normalised like ImageNet inputs: ``Tensor[n, 3, 300, 300]`` float32."""
    coarse = torch.rand(n, 3, 10, 10, generator=generator)
    fine = torch.rand(n, 3, 75, 75, generator=generator)
    img = F.interpolate(coarse, size=300, mode="bicubic") * 0.8 + F.interpolate(fine, size=300) * 0.2
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (img.clamp(0, 1) - mean) / std


def _head_inputs(model: SSD300, images: torch.Tensor) -> list[torch.Tensor]:
    x = model.feature_extractor(images)
    feeds = [x]
    for block in model.additional_blocks:
        x = block(x)
        feeds.append(x)
    return feeds


def _active_labels(model: SSD300) -> torch.Tensor:
    conf = model.conf[0]
    nd = conf.out_channels // NUM_LABELS
    label_bias = conf.bias.detach().view(NUM_LABELS, nd)[:, 0]
    active = label_bias > _OFF_BIAS / 2
    active[0] = False
    return active


_OFF_BIAS = -30.0  # a label with this bias never reaches any threshold


@torch.no_grad()
def calibrate_candidates(model: SSD300, images: torch.Tensor, candidates: int,
                         candidate_threshold: float = 0.05) -> float:
    """Shift the class-head bias of a :func:`calibrated_random_ssd300` model's active labels so that
    ``images`` (preprocessed, ``Tensor[N, 3, 300, 300]`` on the model's device and dtype) yield
    ``candidates`` scores above ``candidate_threshold`` per image. Returns the measured value."""
    active = _active_labels(model)
    feeds = _head_inputs(model, images)
    logits = torch.cat([head(f).reshape(f.shape[0], NUM_LABELS, -1)
                        for f, head in zip(feeds, model.conf)], 2).float()
    mask = active.to(logits.device).view(1, -1, 1)

    def per_image(delta: float) -> float:
        probs = torch.softmax(logits + delta * mask, dim=1)
        return (probs[:, 1:] > candidate_threshold).sum().item() / logits.shape[0]

    lo, hi = -40.0, 40.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if per_image(mid) < candidates else (lo, mid)
    for conf in model.conf:
        nd = conf.out_channels // NUM_LABELS
        on = active.to(conf.bias.device)[torch.arange(conf.out_channels, device=conf.bias.device) // nd]
        conf.bias[on] += hi
    return per_image(hi)


@torch.no_grad()
def calibrated_random_ssd300(candidates: int = 2000, classes: int = 20, *, seed: int = 0,
                             candidate_threshold: float = 0.05, logit_std: float = 1.5) -> SSD300:
    """A seeded random SSD300 whose class head yields about ``candidates`` scores above
    ``candidate_threshold`` per image, spread over ``classes`` labels.

    Plain random initialisation gives near-uniform softmax scores and almost no candidates, which
    would make post-processing free and every benchmark flattering. Here the ``classes`` active
    labels get logits of standard deviation ``logit_std`` around a bias found by bisection on
    synthetic scenes; the other labels are switched off; box offsets are scaled to unit spread.
    The load on real video differs from the synthetic one: benchmarks re-aim it on their input's
    first frames with :func:`calibrate_candidates` and report the measured figure.
    """
    if not 1 <= classes <= NUM_LABELS - 1:
        raise VidpipeError(f"random classes must be in 1..{NUM_LABELS - 1}, got {classes}")
    if candidates < 0:
        raise VidpipeError(f"random candidates must be >= 0, got {candidates}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SSD300().eval()
    active = torch.zeros(NUM_LABELS, dtype=torch.bool)
    active[1 + torch.randperm(NUM_LABELS - 1, generator=gen)[:classes]] = True
    images = _calibration_images(4, gen)
    for f, loc, conf in zip(_head_inputs(model, images), model.loc, model.conf):
        loc.weight.div_(F.conv2d(f, loc.weight, padding=1).std() + 1e-12)
        loc.bias.zero_()
        nd = conf.out_channels // NUM_LABELS
        label_of_channel = torch.arange(conf.out_channels) // nd
        on = active[label_of_channel]
        conf.weight[on] *= logit_std / (F.conv2d(f, conf.weight, padding=1)[:, on].std() + 1e-12)
        conf.weight[~on] = 0
        conf.bias.zero_()
        conf.bias[(label_of_channel > 0) & ~on] = _OFF_BIAS
    calibrate_candidates(model, images, candidates, candidate_threshold)
    return model
