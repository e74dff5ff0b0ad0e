"""``vidpipe check``, and a torch and torchvision that do not work together named with the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_check_says_what_is_installed():
    r = subprocess.run([sys.executable, "-m", "vidpipe.cli", "check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith("ok  torch + torchvision") and any("PyAV" in x for x in lines)


def test_a_mismatched_torchvision_is_one_line_naming_the_pair_to_install(monkeypatch):
    import torch
    import torchvision

    from vidpipe.errors import VidpipeError
    from vidpipe.installed import matching_torchvision, torch_pair

    def missing(*args, **kwargs):  # what a torchvision built for another torch answers
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(torchvision.ops, "nms", missing)
    version = torch.__version__.split("+")[0]
    with pytest.raises(VidpipeError, match=rf"pip install torch=={version} torchvision=={matching_torchvision(version)}"):
        torch_pair()
    assert matching_torchvision("2.14.1") == "0.29.1" and matching_torchvision("2.11.0") == "0.26.0"
