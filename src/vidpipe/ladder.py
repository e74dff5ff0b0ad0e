"""``vidpipe ladder``: the write-up's optimisation steps as configurations of the one pipeline.

Each rung changes one or a few switches of :class:`~vidpipe.config.Config` and runs the same
engine; only rungs 0-1 use the slow per-class loop (``postprocess="loop_*"``). The table gives
frames/s, speed-ups, the measured candidate load, detections per frame and agreement with rung 2.
Slow rungs are timed on the first ``--slow-frames`` frames (noted in the table).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .agreement import agree
from .config import Config
from .detector import Detector
from .engine import run
from .profiling import GilLoad, machine_facts, sync
from .sinks import JsonlSink
from .sources import nvdec_available, probe


@dataclass(frozen=True)
class Rung:
    name: str
    change: str
    config: dict
    needs: str = ""  # "cuda", "nvdec" or "multi-gpu"
    slow: bool = False


RUNGS = [
    Rung("0 baseline", "frame at a time, fp32, CPU decode, per-box loop reading GPU tensors",
         dict(batch_size=1, precision="fp32", channels_last=False, compile="off", decoder="pyav",
              overlap=False, postprocess="loop_device", cuda_graphs=False), slow=True),
    Rung("1 host copy", "the loop on outputs copied to the host once", dict(postprocess="loop_host"), slow=True),
    Rung("2 GPU post-processing", "batched decode + NMS on the GPU (ssd_decode)", dict(postprocess="gpu")),
    Rung("3 batch 4", "batches of 4 frames", dict(batch_size=4)),
    Rung("4 fp16, batch 8", "half precision on tensor cores, batches of 8", dict(precision="fp16", batch_size=8),
         needs="cuda"),
    Rung("5 NVDEC", "hardware decode straight into GPU tensors", dict(decoder="nvdec"), needs="nvdec"),
    Rung("6 overlap", "decode threads, compute stream, async copies, writer thread", dict(overlap=True),
         needs="cuda"),
    Rung("7 beyond", "torch.compile, channels_last, batch 64, parallel decoders, CUDA graphs per batch",
         dict(compile="on", channels_last=True, batch_size=64, decoders=0, cuda_graphs=True), needs="cuda"),
    Rung("8 all GPUs", "one worker process per GPU on the input repeated (frames/s while all are busy)", dict(),
         needs="multi-gpu"),
]


def first_frames(jsonl: Path, keep: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(boxes, labels, scores) of the first ``keep`` frames of a JSON Lines output."""
    out = []
    with open(jsonl) as f:
        for line, _ in zip(f, range(keep)):
            dets = json.loads(line)["detections"]
            out.append((np.array([d["box"] for d in dets], np.float32).reshape(-1, 4),
                        np.array([d["class_id"] for d in dets], np.int64),
                        np.array([d["score"] for d in dets], np.float32)))
    return out


def agreement(a: list, b: list, iou: float = 0.9) -> float:
    """Detections of ``a`` and ``b`` matched (same label, box IoU >= ``iou``), as a share of the
    larger count frame by frame."""
    found = agree(a, b, iou)
    return found.matched / (found.reference + found.extra) if found.reference + found.extra else 1.0


def skip_reason(rung: Rung) -> str | None:
    if rung.needs in ("cuda", "nvdec", "multi-gpu") and not torch.cuda.is_available():
        return "no CUDA GPU"
    if rung.needs == "nvdec" and not nvdec_available():
        return "PyNvVideoCodec/NVDEC unavailable"
    if rung.needs == "multi-gpu" and torch.cuda.device_count() < 2:
        return f"{torch.cuda.device_count()} GPU visible"
    return None


def all_gpus(cfg: Config, model, video: str, tmp: Path, keep: int, repeat: int) -> tuple[int, float, list]:
    """Rung 8: one worker process per GPU on the input remuxed ``repeat`` times, shared out in
    keyframe-aligned parts. Returns (frames, frames/s while every GPU is busy -- process start and
    compile excluded, see :class:`~vidpipe.scale.BusyWindow` --, the first ``keep`` frames' detections)."""
    from .scale import BusyWindow, parse_devices, run_processes
    from .synth import repeat_clip
    from .weights import save_checkpoint

    weights = tmp / "ladder-weights.pt"  # the workers load this very model
    save_checkpoint(model, weights)
    devices = parse_devices("all")
    long = str(repeat_clip(video, tmp / "rung8.mp4", repeat)) if repeat > 1 else video
    n = probe(long).num_frames
    window = BusyWindow(len(devices))
    report = run_processes(cfg.replace(weights=str(weights)), {long: tmp / "all.jsonl"}, "jsonl", devices,
                           split_frames=max(64, n // (2 * len(devices))), on_message=window)
    return report.frames, window.fps, first_frames(tmp / "all.jsonl", keep)


def main(a: argparse.Namespace) -> int:
    from .synth import make_clip

    tmp = Path(tempfile.mkdtemp(prefix="vidpipe-ladder-"))
    video = a.video
    if video is None:
        shared = Path(__file__).resolve().parents[3] / "shared" / "media" / "in.mp4"
        video = str(shared if shared.is_file() else make_clip(tmp / "clip.mp4", frames=96, width=384, height=288))
    info = probe(video)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = Config(weights=a.weights, random_candidates=a.random_candidates, device=device)
    from .bench import candidates_per_frame, family_for_video
    model = family_for_video(cfg, video).network  # an SSD300 network: each rung's Config decides the rest
    rows, reference, base_fps, prev_fps, cands = [], None, None, None, 0.0
    active: dict = {}
    for rung in RUNGS:
        reason = skip_reason(rung)
        active.update(rung.config)
        if reason:
            rows.append(dict(rung=rung.name, change=rung.change, skipped=reason))
            continue
        frames_limit = a.slow_frames if rung.slow else a.max_frames
        rc = cfg.replace(**active, max_frames=frames_limit)
        gil = GilLoad() if a.gil else None
        if rung.needs == "multi-gpu":
            with gil or nullcontext():
                frames, fps, store = all_gpus(rc, model, video, tmp, a.compare_frames, a.scale_repeat)
            rows.append(_row(rung, frames, fps, prev_fps, base_fps, cands, store, reference, gil))
            continue
        det = Detector(rc, model=model)
        if det.compiled:  # compile outside the timed run
            run(det, [video], lambda i: JsonlSink(tmp / "warm.jsonl", i.path, i.width, i.height))
        sink = lambda i: JsonlSink(tmp / "out.jsonl", i.path, i.width, i.height)  # noqa: E731
        sync(det.device)
        t0 = time.perf_counter()
        with gil or nullcontext():
            report = run(det, [video], sink)
        sync(det.device)
        seconds = time.perf_counter() - t0
        if a.trace and rung is RUNGS[7]:
            write_trace(Detector(rc.replace(max_frames=4 * rc.batch_size), model=model), video, a.trace, tmp)
        fps = report.frames / seconds
        store = first_frames(tmp / "out.jsonl", a.compare_frames)
        if rung.name.startswith("2"):
            reference = store
        base_fps = base_fps or fps
        cands = candidates_per_frame(det, video)
        rows.append(_row(rung, report.frames, fps, prev_fps, base_fps, cands, store, reference, gil))
        prev_fps = fps
        del det
    facts = machine_facts(torch.device(device))
    md = _markdown(rows, video, info, facts)
    print(md)
    if a.out:
        Path(a.out + ".json").write_text(json.dumps(dict(facts=facts, video=video, rows=rows), indent=1))
        Path(a.out + ".md").write_text(md)
    return 0


def _row(rung: Rung, frames: int, fps: float, prev_fps: float | None, base_fps: float, cands: float,
         store: list, reference: list | None, gil: GilLoad | None) -> dict:
    return dict(rung=rung.name, change=rung.change, frames=frames, fps=fps,
                vs_prev=fps / prev_fps if prev_fps else 1.0, vs_0=fps / base_fps, candidates=cands,
                detections=float(np.mean([len(l) for _, l, _ in store])) if store else 0.0,
                agreement=agreement(store, reference) if reference is not None else None,
                gil=gil.wait_share if gil else None)


def write_trace(det: Detector, video: str, path: str, tmp: Path) -> None:
    """A PyTorch profiler trace (Chrome/Perfetto JSON) of the first four batches; NVTX ranges
    name the stages."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if det.device.type == "cuda" else [])
    run(det, [video], lambda i: JsonlSink(tmp / "warm.jsonl", i.path, i.width, i.height))
    with profile(activities=activities) as prof:
        run(det, [video], lambda i: JsonlSink(tmp / "trace.jsonl", i.path, i.width, i.height))
    prof.export_chrome_trace(path)


def _markdown(rows: list[dict], video: str, info, facts: dict) -> str:
    head = ("| rung | what changed | frames timed | frames/s | vs previous | vs rung 0 | candidates/frame "
            "| detections/frame | agreement with rung 2 | GIL wait |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['rung']} | {r['change']} | skipped: {r['skipped']} | | | | | | | |")
            continue
        agree = "–" if r["agreement"] is None else f"{r['agreement']:.1%}"
        gil = "–" if r["gil"] is None else f"{r['gil']:.0%}"
        lines.append(f"| {r['rung']} | {r['change']} | {r['frames']} | {r['fps']:,.1f} | {r['vs_prev']:.2f}x | "
                     f"{r['vs_0']:,.1f}x | {r['candidates']:,.0f} | {r['detections']:.1f} | {agree} | {gil} |")
    title = (f"Ladder on {Path(video).name} ({info.width}x{info.height}, {info.num_frames} frames), "
             + ", ".join(f"{k} {v}" for k, v in facts.items()))
    return title + "\n\n" + "\n".join(lines) + "\n"
