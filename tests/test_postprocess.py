"""ssd_decode against the obviously-correct reference on fresh seeded random batches."""

from __future__ import annotations

import pytest
import torch

from vidpipe.boxes import NUM_BOXES, default_boxes
from vidpipe.postprocess import ssd_decode, ssd_decode_loop, ssd_decode_padded

from reference import reference_decode

C = 81


def random_batch(n: int, seed: int, *, classes: int = 10, spread: float = 2.0, bias: float = 4.0,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits where ``classes`` random labels compete with the background; ``bias`` sets density."""
    g = torch.Generator().manual_seed(seed)
    locs = torch.randn(n, 4, NUM_BOXES, generator=g)
    scores = torch.full((n, C, NUM_BOXES), -20.0)
    scores[:, 0] = bias
    labels = 1 + torch.randperm(C - 1, generator=g)[:classes]
    scores[:, labels] = torch.randn(n, classes, NUM_BOXES, generator=g) * spread
    return locs.to(dtype), scores.to(dtype)


def assert_same(fast, ref, exact: bool = True):
    """Same detections in the same order; not ``exact``: values within float32 rounding, and
    detections whose scores differ only by rounding may come in either order."""
    assert len(fast) == len(ref)
    for (fb, fl, fs), (rb, rl, rs) in zip(fast, ref):
        assert fl.dtype == torch.int64 and fb.shape[1:] == (4,)
        fb, fl, fs = fb.cpu(), fl.cpu(), fs.cpu()
        if not exact:
            fb, fl, fs = follow_near_ties(fb, fl, fs, rb, rl)
        assert torch.equal(fl, rl), (fl, rl)
        tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fb.cpu(), rb, **tol)
        torch.testing.assert_close(fs.cpu(), rs, **tol)
        assert torch.all(fs[1:] <= fs[:-1])


def follow_near_ties(fb, fl, fs, rb, rl, tol: float = 1e-6):
    """Reorder detections of ``fast`` within runs of scores equal up to ``tol`` to follow the
    reference: a softmax computed in another order may tie, or swap, scores a few ulps apart."""
    order = list(range(len(fl)))
    for i in range(min(len(fl), len(rl))):
        for j in range(i, len(fl)):
            a, b = order[i], order[j]
            if abs(float(fs[b] - fs[a])) > tol:
                break
            if fl[b] == rl[i] and torch.allclose(fb[b], rb[i], rtol=1e-5, atol=1e-6):
                order[i], order[j] = b, a
                break
    idx = torch.tensor(order, dtype=torch.long)
    return fb[idx], fl[idx], fs[idx]


PARAMS = [
    dict(),
    dict(iou_threshold=0.3, max_detections=50, score_threshold=0.1),
    dict(candidate_threshold=0.2, iou_threshold=0.7, per_class_candidates=50, score_threshold=0.0),
    dict(iou_threshold=1.0, max_detections=5, score_threshold=0.5),
    dict(iou_threshold=0.0, max_detections=100, per_class_candidates=7, score_threshold=0.05),
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("params", PARAMS)
def test_matches_reference_cpu(seed, params):
    locs, scores = random_batch(3, seed * 31 + len(params), bias=3.0 + seed)
    assert_same(ssd_decode(locs, scores, **params), reference_decode(locs, scores, **params))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    locs, scores = random_batch(2, 7, dtype=dtype)
    assert_same(ssd_decode(locs, scores), reference_decode(locs, scores))


def test_no_candidates():
    locs, scores = random_batch(2, 1)
    scores[:, 0] = 50.0  # background wins everywhere
    out = ssd_decode(locs, scores)
    assert [len(l) for _, l, _ in out] == [0, 0]
    assert out[0][0].shape == (0, 4)


def test_equal_scores_break_ties_by_index():
    locs, scores = random_batch(2, 2, classes=3)
    scores[:] = scores[:, :, :1]  # every default box has the same logits: all scores tie
    params = dict(score_threshold=0.0, max_detections=60)
    assert_same(ssd_decode(locs, scores, **params), reference_decode(locs, scores, **params))


def test_identical_boxes_suppress_each_other():
    locs, scores = random_batch(1, 3, classes=1)
    d = default_boxes()
    a, others = 100, torch.arange(200, 260)
    # Offsets that decode every box in `others` onto box `a`.
    locs[0, 0, others] = (d[a, 0] - d[others, 0]) / (0.1 * d[others, 2])
    locs[0, 1, others] = (d[a, 1] - d[others, 1]) / (0.1 * d[others, 3])
    locs[0, 2, others] = torch.log(d[a, 2] / d[others, 2]) / 0.2
    locs[0, 3, others] = torch.log(d[a, 3] / d[others, 3]) / 0.2
    label = int(scores[0, 1:].amax(1).argmax()) + 1
    scores[0, label, others] = 10.0
    params = dict(score_threshold=0.0)
    fast = ssd_decode(locs, scores, **params)
    assert_same(fast, reference_decode(locs, scores, **params))
    assert int((fast[0][1] == label).sum()) <= 20


def test_one_class_fills_all_slots():
    locs, scores = random_batch(2, 4, classes=2)
    scores[:, 5] = 8.0 + torch.rand(2, NUM_BOXES)  # class 5 beats background on every box
    params = dict(score_threshold=0.0, max_detections=300, iou_threshold=0.9)
    fast = ssd_decode(locs, scores, **params)
    assert_same(fast, reference_decode(locs, scores, **params))
    assert max(int((l == 5).sum()) for _, l, _ in fast) > 0


def test_batch_of_one_and_256():
    locs, scores = random_batch(256, 5, classes=3, bias=6.0)
    ref = reference_decode(locs[:1], scores[:1])
    assert_same(ssd_decode(locs[:1], scores[:1]), ref)
    big = ssd_decode(locs, scores)
    assert len(big) == 256
    for i in (0, 99, 255):
        assert_same([big[i]], reference_decode(locs[i:i + 1], scores[i:i + 1]))


def test_padded_layout_and_counts():
    locs, scores = random_batch(4, 6)
    det = ssd_decode_padded(locs, scores, max_detections=20)
    assert det.boxes.shape == (4, 20, 4) and det.labels.shape == (4, 20) and det.counts.shape == (4,)
    for i, c in enumerate(det.counts.tolist()):
        assert torch.all(det.labels[i, c:] == 0) and torch.all(det.labels[i, :c] > 0)


@pytest.mark.parametrize("host_copy", [False, True])
def test_slow_loop_matches_reference(host_copy):
    locs, scores = random_batch(2, 8, bias=6.0)
    assert_same(ssd_decode_loop(locs, scores, host_copy=host_copy), reference_decode(locs, scores))


def test_bad_arguments():
    locs, scores = random_batch(1, 0)
    with pytest.raises(ValueError, match="locs"):
        ssd_decode(locs[:, :3], scores)
    with pytest.raises(ValueError, match="iou_threshold"):
        ssd_decode(locs, scores, iou_threshold=1.5)


@pytest.mark.cuda
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_triton_matches_reference(seed, params, dtype):
    locs, scores = random_batch(4, 1000 + seed, bias=2.0 + seed, dtype=dtype)
    fast = ssd_decode(locs.cuda(), scores.cuda(), **params)
    assert_same(fast, reference_decode(locs, scores, **params), exact=False)
    torch_nms = ssd_decode_padded(locs.cuda(), scores.cuda(), nms="torch", **params).split()
    assert_same(fast, [tuple(t.cpu() for t in r) for r in torch_nms], exact=False)


@pytest.mark.cuda
def test_cuda_full_class_and_large_batch():
    locs, scores = random_batch(256, 11, classes=20, bias=1.0)
    # A full class; unsaturated, so no float ties in the reference.
    scores[:, 7] = 2.0 + 2.0 * torch.rand(256, NUM_BOXES, generator=torch.Generator().manual_seed(12))
    fast = ssd_decode(locs.cuda(), scores.cuda(), score_threshold=0.0, max_detections=200)
    for i in (0, 128, 255):
        assert_same([fast[i]], reference_decode(locs[i:i + 1], scores[i:i + 1], score_threshold=0.0,
                                                max_detections=200), exact=False)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_box_kernel_matches_decode_boxes_exactly(dtype):
    from vidpipe import postprocess as pp

    locs = (torch.randn(5, 4, NUM_BOXES, generator=torch.Generator().manual_seed(3)) * 3).to(dtype).cuda()
    assert torch.equal(pp._boxes_triton(locs), pp.decode_boxes(locs, default_boxes("cuda")))


def test_candidate_kernel_logic_in_triton_interpreter():
    """The CUDA candidate-selection and cross-class kernels, run by Triton's CPU interpreter, pick
    exactly what topk over (score, index) keys picks: all-fit rows, rows past the key buffer
    (binary-search path), ties, several images (the NMS kernel's libdevice calls need a GPU)."""
    pytest.importorskip("triton")
    script = r"""
import sys, torch, triton
sys.path.insert(0, sys.argv[1])
from vidpipe import postprocess as pp
from test_postprocess import random_batch
for seed, k, bias, ties, n in [(0, 200, 6.0, False, 1), (1, 5, -1.0, False, 1), (2, 30, 1.0, True, 1),
                               (3, 23, 8.5, False, 2)]:
    _, scores = random_batch(n, seed, classes=4, bias=bias)
    if ties:
        scores[:] = scores[:, :, :1]
    a = scores.shape[2]
    boxes = torch.arange(n * a * 4, dtype=torch.float32).reshape(n, a, 4)  # a box names its image and index
    cboxes, cscores, counts = pp._candidates_triton(scores, boxes, k, 0.05)
    probs = torch.softmax(scores.float().transpose(1, 2), dim=-1).transpose(1, 2)[:, 1:]
    ref = pp._topk_keys(probs, k, probs > 0.05)
    labels, kb = probs.shape[1], cscores.shape[1]
    valid = ref >= 0
    assert torch.equal(counts.view(n, labels).clamp(max=k), valid.sum(-1).int()), seed
    ref_boxes = boxes.gather(1, ref.clamp(min=0).view(n, -1, 1).expand(-1, -1, 4)).view(n, labels, k, 4)
    cand_boxes = torch.where(valid[..., None], cboxes.view(n, labels, kb, 4)[:, :, :k], 0.0)
    cand_scores = torch.where(valid, cscores.view(n, labels, kb)[:, :, :k], 0.0)
    assert torch.equal(cand_boxes, torch.where(valid[..., None], ref_boxes, 0.0)), seed
    torch.testing.assert_close(cand_scores, torch.where(valid, probs.gather(2, ref.clamp(min=0)), 0.0))
    kept = valid & (torch.rand(valid.shape, generator=torch.Generator().manual_seed(seed)) < 0.7)
    flat = torch.arange(labels * k).view(1, labels, k)
    keys = torch.where(kept, pp.pack_keys(cand_scores, flat, labels * k), -1)
    for d, thr in [(5, 0.0), (20, 0.1)] + [(500, 0.0)] * (k < 10):  # 500: more slots than keys
        dr = min(d, k)
        row = keys.sort(-1, descending=True).values[..., :dr].reshape(n, labels * dr)  # as the NMS kernel leaves them
        out = pp.Detections(torch.empty(n, d, 4), torch.empty(n, d, dtype=torch.int64), torch.empty(n, d),
                            torch.empty(n, dtype=torch.int64))
        pp._best_kernel[(n,)](row, cboxes, *out.astuple(), thr, ROW=labels * dr, LABELS=labels, K=k, KB=kb, D=d,
                              RB=triton.next_power_of_2(max(labels * dr, d)))
        want = pp._best_torch(cand_boxes, cand_scores, kept, d, thr)
        for got, exp in zip(out.astuple(), want.astuple()):
            assert torch.equal(got[:, :exp.shape[1]] if got.dim() > 1 else got, exp), (seed, d)
print("ok")
"""
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_triton_kernels_compile_for_hopper():
    """The interpreter does not type-check like the compiler (e.g. a variable whose shape differs
    between branches): compile every post-processing kernel for sm_90, no GPU needed, with the
    block sizes and warps the pipeline launches at batch 64 and the default settings."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vidpipe import postprocess as pp

    kernels = [
        (pp._boxes_kernel, dict(locs_ptr="*fp16", dbox_ptr="*fp32", out_ptr="*fp32", A="i32", scale_xy="fp32",
                                scale_wh="fp32"), dict(BLOCK=512), 4),
        (pp._select_kernel, dict(logits_ptr="*fp16", lse_ptr="*fp32", count_ptr="*i32", key_ptr="*i64", A="i32",
                                 thr_bits="i32"), dict(C=81, CB=128, LB=8, CAP=1024, BLOCK=64), 4),
        (pp._candidates_kernel, dict(logits_ptr="*fp16", lse_ptr="*fp32", count_ptr="*i32", key_ptr="*i64",
                                     boxes_ptr="*fp32", cbox_ptr="*fp32", score_ptr="*fp32", A="i32", thr_bits="i32"),
         dict(C=81, K=200, KB=256, CAP=1024, BLOCK=2048), 8),
        (pp._nms_kernel, dict(boxes_ptr="*fp32", score_ptr="*fp32", count_ptr="*i32", key_ptr="*i64", thr="fp32"),
         dict(LABELS=80, K=200, KB=256, DR=20), 8),
        (pp._best_kernel, dict(key_ptr="*i64", cbox_ptr="*fp32", boxes_ptr="*fp32", labels_ptr="*i64",
                               scores_ptr="*fp32", counts_ptr="*i64", score_thr="fp32"),
         dict(ROW=1600, LABELS=80, K=200, KB=256, D=20, RB=2048), 16),
    ]
    for fn, args, consts, warps in kernels:
        src = ASTSource(fn=fn, signature={**args, **{k: "constexpr" for k in consts}}, constexprs=consts)
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
