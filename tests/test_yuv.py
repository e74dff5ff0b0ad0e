"""NV12 to RGB (what FFmpeg's NVDEC decoding hands over): the torch reference against FFmpeg's own
conversion of the same frames, and the Triton kernel against the reference on random sizes and strides."""

from __future__ import annotations

import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from vidpipe.yuv import matrix, nv12_to_rgb, nv12_to_rgb_torch


def planes(frame: av.VideoFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """An NV12 frame's luma [H, W] and chroma [H/2, W/2, 2] as strided views of its buffers."""
    h, w = frame.height, frame.width
    y, uv = frame.planes
    luma = torch.from_numpy(np.frombuffer(y, np.uint8).reshape(h, y.line_size).copy())[:, :w]
    chroma = torch.from_numpy(np.frombuffer(uv, np.uint8).reshape(h // 2, uv.line_size).copy())[:, :w]
    return luma, chroma.unflatten(1, (w // 2, 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("space", ["unspecified", "bt709"])
def test_the_reference_is_ffmpegs_conversion(seed, space):
    """Random YUV (smooth, as video is: noise would only measure chroma siting) converted by FFmpeg
    (swscale, the frame's matrix) and by the reference: FFmpeg's fixed-point arithmetic lands about one
    level lower; within 1.5 on average, three at most."""
    g = torch.Generator().manual_seed(seed)
    h, w = 2 * int(torch.randint(8, 90, (1,), generator=g)), 2 * int(torch.randint(8, 90, (1,), generator=g))
    low = torch.randint(16, 236, (3, h // 8 + 1, w // 8 + 1), generator=g).float()[None]
    up = torch.nn.functional.interpolate(low, scale_factor=8, mode="bilinear")[0, :, :h, :w].round().to(torch.uint8)
    frame = av.VideoFrame(w, h, "yuv420p")
    frame.colorspace = 1 if space == "bt709" else 2  # FFmpeg's AVCOL_SPC_BT709, AVCOL_SPC_UNSPECIFIED
    for i, plane in enumerate((up[0], up[1, ::2, ::2], up[2, ::2, ::2])):
        rows = np.frombuffer(frame.planes[i], np.uint8).reshape(plane.shape[0], frame.planes[i].line_size)
        rows[:, :plane.shape[1]] = plane.numpy()
    ref = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
    y, uv = planes(frame.reformat(format="nv12"))
    got = nv12_to_rgb(y, uv, matrix(bt709=space == "bt709"))
    diff = (got.float() - ref.float()).abs()
    assert got.shape == (3, h, w) and diff.mean() < 1.5 and diff.max() <= 3, (diff.mean(), diff.max())


def test_a_bt709_frame_is_not_converted_as_bt601():
    """The matrix matters: the same YUV read as BT.601 differs from BT.709 by several levels."""
    y, uv = torch.full((4, 4), 120, dtype=torch.uint8), torch.tensor([60, 200], dtype=torch.uint8).expand(2, 2, 2)
    a, b = nv12_to_rgb_torch(y, uv, matrix(False)), nv12_to_rgb_torch(y, uv, matrix(True))
    assert (a.float() - b.float()).abs().max() > 10


def test_what_is_not_nv12_is_refused():
    with pytest.raises(ValueError, match="not an NV12 frame"):
        nv12_to_rgb(torch.zeros(4, 4, dtype=torch.uint8), torch.zeros(2, 2, dtype=torch.uint8), matrix())
    with pytest.raises(ValueError, match="not an NV12 frame"):  # 10-bit (P010) planes
        nv12_to_rgb(torch.zeros(4, 4, dtype=torch.int16), torch.zeros(2, 2, 2, dtype=torch.int16), matrix())


KERNEL = r"""
import sys, torch
from vidpipe import yuv
g = torch.Generator().manual_seed(int(sys.argv[1]))
for _ in range(4):
    h, w = (int(torch.randint(2, 300, (1,), generator=g)) for _ in range(2))
    pad_y, pad_uv = (int(torch.randint(0, 64, (1,), generator=g)) for _ in range(2))
    ch, cw = (h + 1) // 2, (w + 1) // 2
    y = torch.randint(0, 256, (h, w + pad_y), dtype=torch.uint8, generator=g)[:, :w]
    uv = torch.randint(0, 256, (ch, 2 * cw + pad_uv), dtype=torch.uint8, generator=g)[:, :2 * cw].unflatten(1, (cw, 2))
    for bt709 in (False, True):
        for full in (False, True):
            m = yuv.matrix(bt709, full)
            got, ref = yuv._nv12_to_rgb_triton(y, uv, m, block=64), yuv.nv12_to_rgb_torch(y, uv, m)
            # half-way values round up in the kernel, to even in torch: one level at most
            assert (got.int() - ref.int()).abs().max() <= 1 and (got != ref).float().mean() < 1e-3
print("ok")
"""


@pytest.mark.parametrize("seed", [0, 1])
def test_the_kernel_matches_the_reference_in_triton_interpreter(seed):
    pytest.importorskip("triton")
    r = subprocess.run([sys.executable, "-c", KERNEL, str(seed)], env=dict(os.environ, TRITON_INTERPRET="1"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.cuda
def test_the_kernel_matches_the_reference_on_gpu():
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 256, (1088, 2048), dtype=torch.uint8, generator=g)[:1080, :1920].cuda()
    uv = torch.randint(0, 256, (544, 2048), dtype=torch.uint8, generator=g)[:540, :1920].unflatten(1, (960, 2)).cuda()
    m = matrix(True)
    got, ref = nv12_to_rgb(y, uv, m), nv12_to_rgb_torch(y, uv, m)
    assert (got.int() - ref.int()).abs().max() <= 1
