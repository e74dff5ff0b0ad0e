from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vidpipe.synth import make_clip

SHARED_CLIP = Path(os.environ.get("VIDPIPE_SHARED_CLIP",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "media" / "in.mp4"))


def pytest_collection_modifyitems(config, items):
    from vidpipe.sources import nvdec_available

    has_cuda, has_nvdec = torch.cuda.is_available(), nvdec_available()
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "nvdec" in item.keywords and not has_nvdec:
            item.add_marker(pytest.mark.skip(reason="needs PyNvVideoCodec and a GPU"))


@pytest.fixture
def clip(tmp_path) -> Path:
    return make_clip(tmp_path / "clip.mp4")


@pytest.fixture
def shared_clip() -> Path:
    if not SHARED_CLIP.is_file():
        pytest.skip("shared/media/in.mp4 not present")
    return SHARED_CLIP


@pytest.fixture(scope="session")
def random_model():
    from vidpipe.weights import calibrated_random_ssd300
    return calibrated_random_ssd300()
