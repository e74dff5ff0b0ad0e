"""vidpipe.nms.greedy_nms against torchvision.ops.nms on fresh random boxes: the Triton kernel
through Triton's interpreter (CPU, in CI), compiled for Hopper (with the letterbox kernel), and on
a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from vidpipe.nms import greedy_nms

# Fresh random boxes each run (seed printed on failure): clustered so that NMS suppresses a lot,
# with exact duplicates and zero-area boxes (IoU 0/0), and images with no, few and many candidates.
CHECK = r"""
import sys, torch
from torchvision.ops import nms
from vidpipe import nms as N
seed = int(sys.argv[1]); device = sys.argv[2]
greedy_nms = N._greedy_nms_triton if sys.argv[3] == "kernel" else N.greedy_nms
# IoUs of exactly 0.3, 0.6 and 0.7 against the first box: as float32 0.3 and 0.6 round above the
# (float64) threshold, so torchvision suppresses at those thresholds; 0.7 rounds below.
exact = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 6], [0, 0, 10, 7], [0, 0, 10, 3]]])
for thr in (0.3, 0.6, 0.7):
    kept, nkept = greedy_nms(exact.to(device), torch.tensor([4]).to(device), thr, 4)
    want = nms(exact[0], torch.arange(4, 0, -1, dtype=torch.float32), thr)
    assert kept[0, :int(nkept[0])].cpu().tolist() == want.tolist(), (thr, kept, want)
g = torch.Generator().manual_seed(seed)
for n, k, limit, thr in [(4, 1500, 300, 0.7), (3, 700, 40, 0.45), (2, 90, 300, 0.0), (2, 60, 300, 1.0)]:
    centre = torch.rand(n, k // 10 + 1, 1, 2, generator=g) * 600
    xy = (centre + torch.randn(n, k // 10 + 1, 10, 2, generator=g) * 8).reshape(n, -1, 2)[:, :k]
    wh = torch.rand(n, k, 2, generator=g) * 80 + 1
    boxes = torch.cat([xy, xy + wh], -1)
    boxes[:, 3] = boxes[:, 2]
    boxes[:, 5, 2:] = boxes[:, 5, :2]
    counts = torch.randint(0, k + 1, (n,), generator=g)
    counts[0] = k
    kept, nkept = greedy_nms(boxes.to(device), counts.to(device), thr, limit)
    for i in range(n):
        c = int(counts[i])
        want = nms(boxes[i, :c], torch.arange(c, 0, -1, dtype=torch.float32), thr)[:limit]
        got = kept[i].cpu()
        assert int(nkept[i]) == len(want), (seed, n, k, i, int(nkept[i]), len(want))
        assert torch.equal(got[:len(want)], want) and bool((got[len(want):] == -1).all()), (seed, k, i)
print("ok")
"""


def check(device: str, path: str, env: dict | None = None) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    r = subprocess.run([sys.executable, "-c", CHECK, str(seed), device, path], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", f"seed {seed}: {r.stderr[-2000:]}"


def test_kernel_is_torchvision_nms_in_the_interpreter():
    pytest.importorskip("triton")
    check("cpu", "kernel", dict(os.environ, TRITON_INTERPRET="1"))


def test_torch_path_is_torchvision_nms():
    check("cpu", "public")


@pytest.mark.cuda
def test_kernel_is_torchvision_nms_on_gpu():
    check("cuda", "public")


def test_yolo_kernels_compile_for_hopper():
    """The interpreter does not type-check as the compiler does: compile the NMS and letterbox
    kernels for sm_90 as the YOLO family launches them (fp16 input, channels_last), no GPU needed."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vidpipe import letterbox, nms

    kernels = [
        (nms._greedy_nms_kernel, dict(boxes_ptr="*fp32", count_ptr="*i64", kept_ptr="*i64", nkept_ptr="*i64",
                                      K="i32", thr_bits="i64"),
         dict(LIMIT=300, LIMIT_P2=512, TILE=nms.TILE, CHUNK=nms.CHUNK, TIE_UP=False), 8, False),
        (letterbox._letterbox_kernel, dict(src_ptr="*u8", out_ptr="*fp16", **{f"{a}_ptr": "*i64" for a in (
            "xi0", "xi1", "yi0", "yi1")}, **{f"{a}_ptr": "*i32" for a in ("xw0", "xw1", "yw0", "yw1")},
            **{a: "i32" for a in ("new_h", "new_w", "top", "left", "out_h", "out_w", "ss_n", "ss_c", "ss_h", "ss_w",
                                  "so_n", "so_c", "so_h", "so_w")}, INV_255="fp32"),
         dict(PAD=114, BLOCK=1024), 4, True),
    ]
    for fn, args, consts, warps, fusion in kernels:
        src = ASTSource(fn=fn, signature={**args, **{k: "constexpr" for k in consts}}, constexprs=consts)
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, enable_fp_fusion=fusion))


def test_bad_arguments_are_value_errors():
    boxes = torch.zeros(2, 5, 4)
    with pytest.raises(ValueError, match="Tensor\\[N, K, 4\\]"):
        greedy_nms(boxes[0], torch.zeros(2), 0.5, 10)
    with pytest.raises(ValueError, match="iou_threshold"):
        greedy_nms(boxes, torch.zeros(2), 1.5, 10)
    with pytest.raises(ValueError, match="limit"):
        greedy_nms(boxes, torch.zeros(2), 0.5, 0)
