"""``vidpipe bench``: ceilings and end-to-end throughput measured in one run on one device.

Suites (``--suite``):

* ``pipeline`` (default), per input: (a) decode-only frames/s with the same decoders the pipeline
  uses, (b) model-only images/s at the configured batch, precision and compile setting,
  (c) end-to-end frames/s of ``vidpipe detect`` writing JSON Lines, and (c) / min(a, b); (e) the host
  side alone: the run's writer (formatting processes, tracking) fed the measured detections per frame
  as fast as it takes them, a ceiling of its own; with the
  measured candidates (score > 0.05) and detections per frame beside them; then (d) the whole-process
  wall time of the same configuration as one ``vidpipe detect`` command in a fresh process (caches
  warm), beside ``import torch, torchvision`` alone. ``--long N`` adds peak host and GPU memory for
  the input and for the input repeated N times.
* ``postprocess``: ``ssd_decode`` on a batch at 0 .. 16,000 candidates per image, beside the
  torch NMS and the article's per-class loop with host reads.
* ``model``: model-only images/s over precisions, memory formats, compile and batch sizes.
* ``scale``: ``vidpipe detect --devices`` on a corpus of copies of each input, one GPU vs all.
* ``peers``: the model's own loop beside vidpipe: Ultralytics' predict (YOLO models), torchvision's
  ``model(images)`` (``torchvision:NAME``).
* ``startup``: the README's command in fresh processes, first (empty caches) and second run: wall
  time, time to the first result, where the time goes; and a folder of copies in one command.
* ``live``: K copies of each input read as 30 fps cameras (``--realtime --loop``, or with
  ``--live-cameras http`` served as live streams by :mod:`vidpipe.cameras`) in one process (or
  spread over ``--procs-per-device`` processes), K from ``--live-streams`` in turn until one
  does not hold (a stream processed below ``LIVE_FPS`` or p99 latency above ``LIVE_P99_MS``):
  per-stream rate, latency, dropped frames, NVDEC and GPU utilisation.

Each figure is the median of ``--repeats`` runs (spread printed). ``--results FILE`` appends the
tables, with device, versions, command and date, to a Markdown file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .config import Config
from .detector import Detector
from .engine import Chunk, FrameProducer, RunReport, run
from .models import ModelFamily, build_family
from .postprocess import class_probs, ssd_decode_loop, ssd_decode_padded
from .profiling import (GilLoad, HostCpu, HostMemory, PeakMemory, gpu_ms, machine_facts, median, peak, spread, sync,
                        time_repeats)
from .runtime import DeviceRuntime
from .sinks import JsonlSink
from .sources import PyAVSource, VideoInfo, probe
from .synth import make_clip, repeat_clip


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _emit(a: argparse.Namespace, title: str, table: str, notes: list[str], device: torch.device) -> None:
    facts = machine_facts(device)
    text = (f"\n## {title}\n\n" + ", ".join(f"{k} {v}" for k, v in facts.items()) + "\n\n"
            f"Command: `vidpipe {shlex.join(sys.argv[1:])}`\n\n{table}\n" + "".join(f"\n{n}" for n in notes) + "\n")
    print(text)
    if a.results:
        with open(a.results, "a") as f:
            f.write(text)


def family_for_video(cfg: Config, video: str) -> ModelFamily:
    """The configured model; random weights are re-aimed at ``cfg.random_candidates`` (or the
    family's default load) on the video's first 8 frames, so the post-processing load is the stated
    one on this very input."""
    family = build_family(cfg)
    if getattr(family, "random", False):
        frames = next(PyAVSource(video, max_frames=8).batches(8)).frames
        family.reaim(frames, cfg.random_candidates if cfg.random_candidates is not None else family.random_load)
    return family


def decode_only(inputs: list[str], cfg: Config, runtime: DeviceRuntime) -> int:
    """Frames decoded by the pipeline's own decoders, frames dropped as they come. ``runtime``:
    the detector's, so repeats reuse its NVDEC sessions as the end-to-end runs do."""
    frames, device = 0, runtime.device
    for item in FrameProducer(inputs, cfg.decoder, device, cfg.batch_for(device), workers=cfg.decoders,
                              threaded=cfg.overlap, max_frames=cfg.max_frames, runtime=runtime,
                              stream_decoder=cfg.stream_decoder):
        if isinstance(item, Chunk):
            frames += len(item.batch)
    sync(device)
    return frames


def candidates_per_frame(det: Detector, video: str) -> float:
    """Mean candidates per frame (what enters the family's NMS) on the video's first frames."""
    frames = next(PyAVSource(video, det.device, max_frames=det.batch_size).batches(det.batch_size)).frames
    with torch.inference_mode():
        outputs = det.model(det.family.preprocess(frames, det.dtype, det.channels_last))
        return float(det.family.candidates(outputs).float().mean())


def model_only(det: Detector, repeats: int, height: int = 1080, width: int = 1920) -> list[float]:
    """Images/s of the model alone on a fixed random batch of the input size that frames of
    ``height x width`` get (no decode, pre- or post-processing)."""
    x = torch.randn(det.batch_size, 3, *det.family.input_size(height, width), device=det.device).to(det.dtype)
    if det.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def step():
        det.network(x)

    if det.device.type == "cuda":
        return [det.batch_size * 1000 / ms for ms in gpu_ms(step, iters=20, repeats=repeats, warmup=5)]
    return [det.batch_size / s for s in time_repeats(step, det.device, repeats=repeats)]


def end_to_end(det: Detector, video: str, out: Path) -> int:
    """Frames of one ``run`` writing JSON Lines to ``out``."""
    report = run(det, [video], lambda i: JsonlSink(out, i.path, i.width, i.height, det.classes))
    if report.failed:
        raise RuntimeError(report.failed[0].error)
    return report.frames


def writer_only(det: Detector, info: VideoInfo, per_frame: float, out: Path, frames: int) -> float:
    """Frames/s of the run's host side alone: ``frames`` frames of ``per_frame`` detections (random boxes
    in the frame, the detector's classes), batch by batch, through the writer the run has (threaded,
    its formatting processes, tracking as configured) into JSON Lines, as fast as it takes them."""
    from .engine.items import BatchResult, VideoEnd, VideoStart
    from .engine.write import Writer
    from .postprocess import Detections

    n, d = det.batch_size, max(1, round(per_frame))
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n, d, 2, generator=g) * torch.tensor([info.width * 0.9, info.height * 0.9])
    boxes = torch.cat([xy, xy + torch.tensor([info.width, info.height]) * 0.1], -1)
    labels = torch.randint(len(det.classes.names), (n, d), generator=g)
    scores = torch.rand(n, d, generator=g).sort(1, descending=True).values
    batch = Detections(boxes, labels, scores, torch.full((n,), d, dtype=torch.int64))
    cfg = det.config
    video = replace(info, path=str(out), num_frames=frames)
    writer = Writer(lambda i: JsonlSink(out, i.path, i.width, i.height, det.classes), cfg.overlap, None, None,
                    formatters=cfg.formatters_for(det.device), track=cfg.track, classes=det.classes)
    t0 = time.perf_counter()
    writer.put(VideoStart(video))
    for start in range(0, frames, n):
        r = BatchResult(video, list(range(start, min(start + n, frames))), [0.0] * min(n, frames - start), batch,
                        None, classes=det.classes)
        writer.issue(r)
        writer.put(r)
    writer.put(VideoEnd(video.path, frames, frames, info=video))
    report = writer.finish(True)
    if report.failed:
        raise RuntimeError(report.failed[0].error)
    return frames / (time.perf_counter() - t0)


def detections_per_frame(jsonl: Path) -> float:
    """Mean detections per line of a JSON Lines output."""
    with open(jsonl) as f:
        lines = f.readlines()
    return sum(line.count('"box"') for line in lines) / max(len(lines), 1)


def bench_inputs(a: argparse.Namespace, tmp: Path) -> list[str]:
    inputs = list(a.inputs)
    if a.synthetic_1080p:
        clip = make_clip(tmp / "synthetic-1080p-240.mp4", frames=min(240, a.synthetic_1080p), width=1920,
                         height=1080, gop=30, seed=1)
        if a.synthetic_1080p > 240:
            clip = repeat_clip(clip, tmp / "synthetic-1080p.mp4", -(-a.synthetic_1080p // 240))
        inputs.append(str(clip))
    if not inputs:
        raise SystemExit("vidpipe bench: give a VIDEO or --synthetic-1080p FRAMES")
    return inputs


@dataclass
class Figures:
    """One input's ceilings and end-to-end rate on one detector (frames/s, one per repeat)."""

    frames: int
    decode: list[float]
    model: list[float]
    e2e: list[float]
    writer: list[float]  # the host side alone at the same detections per frame (writer_only)
    output: Path  # a JSON Lines output of the end-to-end run
    detections: float  # per frame
    candidates: float  # per frame
    gil: float  # GIL wait share of an end-to-end run

    @property
    def ratio(self) -> float:
        return median(self.e2e) / min(median(self.decode), median(self.model))


def measure(det: Detector, video: str, repeats: int, cfg: Config, outs: Iterator[Path]) -> Figures:
    """(a) decode-only, (b) model-only and (c) end-to-end rates of ``video`` on ``det``, median-ready."""
    info = probe(video)
    b = model_only(det, repeats, info.height, info.width)
    counts: list[int] = []  # the first call is the warm-up
    dec_times = time_repeats(lambda: counts.append(decode_only([video], cfg, det.runtime)), det.device,
                             repeats=repeats)
    dec = [n / t for n, t in zip(counts[1:], dec_times)]
    e2e_frames: list[int] = []
    paths = [next(outs) for _ in range(repeats + 1)]  # the warm-up's first
    e2e_times = time_repeats(lambda: e2e_frames.append(end_to_end(det, video, paths[len(e2e_frames)])),
                             det.device, repeats=repeats)
    e2e = [n / t for n, t in zip(e2e_frames[1:], e2e_times)]
    with GilLoad() as gil:
        end_to_end(det, video, next(outs))
    per_frame = detections_per_frame(paths[0])
    writer = [writer_only(det, info, per_frame, next(outs), counts[-1]) for _ in range(repeats)]
    return Figures(counts[-1], dec, b, e2e, writer, paths[0], per_frame, candidates_per_frame(det, video),
                   gil.wait_share)


def bench_pipeline(a: argparse.Namespace, cfg: Config) -> None:
    from .cli import config_from_args

    tmp = Path(tempfile.mkdtemp(prefix="vidpipe-bench-"))
    inputs = bench_inputs(a, tmp)
    rows, notes = [], []
    # (d): the options as given (bench's own detector compiles and takes the Triton kernels: steady state).
    options = config_from_args(a).argv()
    imports = _import_seconds()
    # Each run writes a new file, as a run on a new video would (replacing the last run's output
    # costs the file system up to a few ms).
    outs = (tmp / f"out-{i}.jsonl" for i in itertools.count())
    for video in inputs:
        info = probe(video)
        det = Detector(cfg, model=family_for_video(cfg, video))
        f = measure(det, video, a.repeats, cfg, outs)
        dec, b, e2e, w = f.decode, f.model, f.e2e, f.writer
        out = next(outs)
        wall = _one_command(["detect", video, "-o", str(out), *options], dict(os.environ),
                            tmp / "timeline.json")["exit"]
        with open(out) as lines:
            written = sum(1 for _ in lines)
        rows.append([Path(video).name, f"{info.width}x{info.height}", str(f.frames),
                     f"{median(dec):,.0f} (±{spread(dec):.0%})", f"{median(b):,.0f} (±{spread(b):.0%})",
                     f"{median(e2e):,.0f} (±{spread(e2e):.0%})", f"{f.ratio:.2f}", f"{median(w):,.0f} (±{spread(w):.0%})",
                     f"{f.candidates:,.0f}", f"{f.detections:.1f}", f"{f.gil:.0%}",
                     f"{wall:.2f} ({wall - imports:.2f})"])
        notes.append(f"(d) {Path(video).name}: the command wrote {written:,} frames in {wall:.2f} s: "
                     f"{written / wall:,.1f} frames/s over its wall.")
        if a.long:
            long_path = tmp / f"long-{Path(video).stem}.mp4"
            repeat_clip(video, long_path, a.long)
            mems = []
            for path in (video, str(long_path)):
                with PeakMemory(det.device) as mem:
                    n = end_to_end(det, path, next(outs))
                mems.append((n, mem.host_peak, mem.gpu_peak))
            (n1, h1, g1), (n2, h2, g2) = mems
            gpu = (f", GPU peak {g1 / 2**20:,.0f} MiB", f", GPU {g2 / 2**20:,.0f} MiB ({g2 / max(g1, 1) - 1:+.1%})"
                   ) if det.device.type == "cuda" else ("", "")
            notes.append(f"Memory, {Path(video).name}: {n1} frames: host peak {h1 / 2**20:,.0f} MiB{gpu[0]}; "
                         f"x{a.long} ({n2} frames): host {h2 / 2**20:,.0f} MiB ({h2 / h1 - 1:+.1%}){gpu[1]}.")
    header = ["input", "size", "frames", "(a) decode-only fps", "(b) model-only img/s", "(c) end-to-end fps",
              "(c)/min(a,b)", "(e) writer-only fps", "candidates/frame", "detections/frame", "GIL wait (e2e)",
              "(d) one command: wall s (- import)"]
    dtype = str(det.dtype).removeprefix("torch.")
    cfg_note = (f"Config: device {det.device}, {dtype}, batch {det.batch_size}, decoder {cfg.decoder}, "
                f"decoders {cfg.decoders or 'auto'}, compile {det.compiled}, CUDA graphs {det.cuda_graphs}, "
                f"channels_last {det.channels_last}, "
                f"overlap {cfg.overlap}, model {det.family.name}, weights {cfg.weights or 'default'}; "
                f"median of {a.repeats} (± spread). (e): random boxes, as many per frame as (c) wrote, through the "
                f"run's writer ({cfg.formatters_for(det.device)} formatting processes) into JSON Lines, no GPU.")
    command = (f"(d): `vidpipe {shlex.join(['detect', 'VIDEO', '-o', 'OUT', *options])}` in a fresh process after "
               f"the timed runs (caches warm; compile and kernels as given, default auto), whole-process wall "
               f"time; `python -c \"import torch, torchvision\"` alone: {imports:.2f} s on this machine.")
    _emit(a, "vidpipe bench: pipeline", _table(header, rows), [cfg_note, command, *notes], det.device)


def bench_scale(a: argparse.Namespace, cfg: Config) -> None:
    """``vidpipe detect --devices`` on a corpus of copies of each input (about ``--scale-frames``
    frames), with one GPU and with every GPU; one worker process per GPU."""
    from .profiling import GpuUtilization
    from .scale import BusyWindow, parse_devices, run_processes

    tmp = Path(tempfile.mkdtemp(prefix="vidpipe-bench-"))
    devices = parse_devices("all")
    rows = []
    for video in bench_inputs(a, tmp):
        info = probe(video)
        # The workers load this very model.
        worker_cfg = cfg.replace(**family_for_video(cfg, video).save(tmp / f"weights-{Path(video).stem}.pt"))
        corpus = tmp / f"corpus-{Path(video).stem}"
        corpus.mkdir()
        targets = {}
        for i in range(max(2 * len(devices), -(-a.scale_frames // max(info.num_frames, 1)))):
            (corpus / f"{i}.mp4").symlink_to(Path(video).resolve())
            targets[str(corpus / f"{i}.mp4")] = corpus / f"{i}.jsonl"
        base = None
        for devs in [devices[:1]] + ([devices] if len(devices) > 1 else []):
            fps, walls = [], []
            for _ in range(a.repeats):
                window = BusyWindow(len(devs))
                t0 = time.perf_counter()
                with GpuUtilization() as util:
                    report = run_processes(worker_cfg, targets, "jsonl", devs,
                                           on_message=window)
                walls.append(time.perf_counter() - t0)
                if report.failed:
                    raise RuntimeError(report.failed[0].error)
                fps.append(window.fps)
            base = base or median(fps)
            rows.append([Path(video).name, f"{info.width}x{info.height}", str(len(devs)), f"{report.frames:,}",
                         f"{median(walls):.1f}", f"{report.frames / median(walls):,.0f}",
                         f"{median(fps):,.0f} (±{spread(fps):.0%})", f"{median(fps) / base:.2f}x",
                         util.describe(window.t0 or 0.0, window.t1 or float("inf"))])
    header = ["input", "size", "GPUs", "frames", "wall s (with start-up)", "frames/s over the wall time",
              "frames/s, all GPUs busy", "speed-up",
              "GPU utilisation while all are busy, last repeat (NVML, every 0.2 s)"]
    _emit(a, "vidpipe bench: one GPU vs all GPUs (worker processes)", _table(header, rows),
          ["Each run: `vidpipe detect --devices ...` on the corpus, JSON Lines written, one worker process per "
           f"GPU, median of {a.repeats}. 'All GPUs busy' counts frames from the moment every worker has "
           "delivered frames (process start, model build and compile excluded) to the moment the first runs "
           "out of work; the speed-up is taken on it."], torch.device("cuda" if torch.cuda.is_available() else "cpu"))


PEER_BATCHES = (1, 32)  # the peers' loops: one frame at a time, and the batch the issue's peer table measured
AGREE_FRAMES = 200  # frames whose detections are compared with the peer's


def _import_seconds() -> float:
    """:func:`_bare_import`'s median of three, since the first on a fresh machine reads its files cold
    (12.6 s against the 9.0 s the commands' own imports took on 4ce1990, which made the startup
    suite's "wall - import" negative)."""
    return median([_bare_import() for _ in range(3)])


def _bare_import() -> float:
    """``python -c "import torch, torchvision"``'s wall time, in a fresh process."""
    return _wall(["-c", "import torch, torchvision"])


def _wall(argv: list[str]) -> float:
    """Whole-process wall seconds of a fresh ``python`` process running ``argv``."""
    return _run_python(argv)[0]


def _run_python(argv: list[str]) -> tuple[float, str]:
    """A fresh ``python`` process running ``argv``: its wall seconds and its standard output."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{argv[:2]}: exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0, r.stdout


# Ultralytics' predict loop as a user writes it: argv = weights, video, batch, frames (0: all).
_ULTRALYTICS_LOOP = """import itertools, sys
from ultralytics import YOLO
loop = YOLO(sys.argv[1]).predict(source=sys.argv[2], stream=True, quantize=16, batch=int(sys.argv[3]), verbose=False)
for _ in itertools.islice(loop, int(sys.argv[4]) or None):
    pass
"""

# torchvision's own loop as a user writes it: PyAV frames (threaded decode) to the GPU, model(list of
# images) in fp16, each result read back. argv = model name, state dict, video, batch, frames (0: all),
# device, then the first frames' results are saved to argv[7] (argv[8] of them). Prints frames and
# seconds of the loop (the model already on the device; its first batch included).
_TORCHVISION_LOOP = """import sys, time, av, torch
from torchvision.models import get_model
name, weights, video, batch, limit, device, keep_path, keep = sys.argv[1:9]
batch, limit, keep = int(batch), int(limit), int(keep)
model = get_model(name, weights=None, weights_backbone=None)
model.load_state_dict(torch.load(weights, weights_only=True))
model = model.eval().to(device)
dtype = torch.float16 if device.startswith("cuda") else torch.float32
model = model.to(dtype)
kept, frames, images = [], 0, []
def flush():
    global frames
    with torch.inference_mode():
        out = model([i.to(dtype) / 255 for i in images])
    for o in out:
        o = {k: v.cpu() for k, v in o.items()}
        if len(kept) < keep:
            kept.append((o["boxes"].float().numpy(), o["labels"].numpy(), o["scores"].float().numpy()))
    frames += len(images)
    images.clear()
t0 = time.perf_counter()
with av.open(video) as c:
    stream = c.streams.video[0]
    stream.thread_type = "AUTO"
    for f in c.decode(stream):
        images.append(torch.from_numpy(f.to_ndarray(format="rgb24")).to(device).permute(2, 0, 1))
        if len(images) == batch or (limit and frames + len(images) >= limit):
            flush()
        if limit and frames >= limit:
            break
if images:
    flush()
print(frames, time.perf_counter() - t0)
if keep:
    torch.save(kept, keep_path)
"""


class _UltralyticsPeer:
    """Ultralytics' predict loop on the family's weights (a YOLO family)."""

    name = "Ultralytics predict"

    def __init__(self, family: ModelFamily, tmp: Path, video: str) -> None:
        self.weights = tmp / f"{family.name}-{Path(video).stem}.pt"
        if "model" not in family.save(self.weights):
            raise SystemExit("vidpipe bench --suite peers: compares YOLO models with Ultralytics and torchvision "
                             "models with torchvision; give --model *.pt, *.yaml or torchvision:NAME")

    def loop(self, video: str, batch: int, device: torch.device, frames: int | None, keep: int
             ) -> tuple[int, float, list]:
        """Frames, frames/s (model set-up included) and the first ``keep`` frames' detections."""
        from ultralytics import YOLO

        # fp16 on a GPU, as vidpipe (quantize=16 is Ultralytics 8.4's name for half=True).
        where, precision = ((device.index or 0), 16) if device.type == "cuda" else ("cpu", 32)
        peer = YOLO(str(self.weights))
        t0 = time.perf_counter()
        n, reference = 0, []
        for r in peer.predict(source=video, stream=True, quantize=precision, batch=batch, verbose=False,
                              device=where):
            if len(reference) < keep:
                reference.append((r.boxes.xyxy.cpu().numpy(), r.boxes.cls.cpu().long().numpy(),
                                  r.boxes.conf.cpu().numpy()))
            n += 1
            if frames and n == frames:
                break
        return n, n / (time.perf_counter() - t0), reference

    def wall(self, video: str, batch: int, frames: int | None) -> float:
        """Whole-process wall time of the loop as a script."""
        return _wall(["-c", _ULTRALYTICS_LOOP, str(self.weights), video, str(batch), str(frames or 0)])

    def vidpipe_model(self) -> list[str]:
        return ["--model", str(self.weights)]


class _TorchvisionPeer:
    """torchvision's own loop (``model(list of images)``) on the family's weights, in a fresh
    process (its frames/s and its whole-process wall time from the same run)."""

    name = "torchvision model(images)"

    def __init__(self, family: ModelFamily, tmp: Path, video: str) -> None:
        self.model = family.name
        self.weights = tmp / f"{family.name}-{Path(video).stem}.pt"
        torch.save(family.network.model.state_dict(), self.weights)  # no tensors in the transform
        self.tmp, self.walls = tmp, {}  # whole-process wall time per batch

    def loop(self, video: str, batch: int, device: torch.device, frames: int | None, keep: int
             ) -> tuple[int, float, list]:
        kept = self.tmp / "kept.pt"
        wall, out = _run_python(["-c", _TORCHVISION_LOOP, self.model, str(self.weights), video, str(batch),
                                 str(frames or 0), str(device), str(kept), str(keep)])
        n, seconds = out.split()[-2:]
        self.walls[batch] = wall
        return int(n), int(n) / float(seconds), torch.load(kept, weights_only=False) if keep else []

    def wall(self, video: str, batch: int, frames: int | None) -> float:
        """Whole-process wall time of :meth:`loop`'s run at ``batch`` (a fresh process already)."""
        return self.walls[batch]

    def vidpipe_model(self) -> list[str]:
        return ["--model", f"torchvision:{self.model}", "--weights", str(self.weights)]


def bench_peers(a: argparse.Namespace, cfg: Config) -> None:
    """The model's own ecosystem's loop beside vidpipe, same weights, video and device: Ultralytics'
    predict for YOLO models, torchvision's ``model(images)`` for ``torchvision:NAME``. Frames/s,
    whole-process wall time, agreement and candidate load."""
    torchvision_model = cfg.model.startswith("torchvision:")
    if not torchvision_model:
        try:
            import ultralytics  # noqa: F401
        except ImportError:
            raise SystemExit('vidpipe bench --suite peers: needs Ultralytics (pip install "vidpipe[yolo]")') from None
    from .agreement import agree
    from .ladder import first_frames

    tmp = Path(tempfile.mkdtemp(prefix="vidpipe-peers-"))
    outs = (tmp / f"out-{i}.jsonl" for i in itertools.count())
    rows, notes = [], []
    imports = _import_seconds()
    for video in bench_inputs(a, tmp):
        info = probe(video)
        family = family_for_video(cfg, video)
        peer = (_TorchvisionPeer if torchvision_model else _UltralyticsPeer)(family, tmp, video)
        det = Detector(cfg, model=family)
        f = measure(det, video, a.repeats, cfg, outs)
        label = f"{Path(video).name} {info.width}x{info.height}, {family.name}"
        peer_fps, reference = {}, []
        for batch in PEER_BATCHES:
            keep = AGREE_FRAMES if batch == max(PEER_BATCHES) else 0
            n, peer_fps[batch], kept = peer.loop(video, batch, det.device, cfg.max_frames, keep)
            reference = kept or reference
            rows.append([label, f"{peer.name}, batch {batch}", f"{n:,}", f"{peer_fps[batch]:,.0f}", "", "", ""])
        ours = first_frames(f.output, len(reference))
        found = agree(ours, reference[:len(ours)], iou=0.9, score_tol=0.02)
        limit = ["--max-frames", str(cfg.max_frames)] if cfg.max_frames else []
        walls = {"vidpipe": _wall(["-m", "vidpipe.cli", "detect", video, "-o", str(next(outs)), *peer.vidpipe_model(),
                                   "--device", str(det.device), *limit]),
                 "peer": peer.wall(video, max(PEER_BATCHES), cfg.max_frames)}
        best = max(peer_fps.values())
        rows.append([label, "vidpipe", f"{f.frames:,}", f"{median(f.e2e):,.0f} (±{spread(f.e2e):.0%})",
                     f"{median(f.e2e) / best:.1f}x", f"{f.ratio:.2f} (decode {median(f.decode):,.0f}, model "
                     f"{median(f.model):,.0f})", str(found)])
        notes.append(f"{label}: {f.candidates:,.0f} candidates/frame (scores above the model's threshold), "
                     f"{f.detections:.1f} detections/frame; whole-process wall time of one command: vidpipe detect "
                     f"{walls['vidpipe']:.1f} s, {peer.name} (batch {max(PEER_BATCHES)}) {walls['peer']:.1f} s, "
                     f"beside `python -c \"import torch, torchvision\"` {imports:.1f} s on this machine.")
    name = "torchvision's own model(images) loop" if torchvision_model else "Ultralytics' own predict loop"
    header = ["input, model", "loop", "frames", "frames/s", "vs the peer's best", "(c)/min(decode, model)",
              f"agreement with the peer (first {AGREE_FRAMES} frames: same class, IoU >= 0.9, |score diff| <= 0.02)"]
    peer_note = ("torchvision: PyAV frames (threaded decode) to the GPU, `model(list of B images)` in fp16, each "
                 "result read back, in a fresh process (loop timed from the first frame, model on the device; the "
                 "wall time is that process's)" if torchvision_model else
                 "Ultralytics: one `predict(source=video, stream=True, quantize=16, batch=B)` loop each (quantize=16: "
                 "fp16, 8.4's name for half=True), its model set-up included")
    _emit(a, f"vidpipe bench: vidpipe vs {name}", _table(header, rows),
          [f"vidpipe: median of {a.repeats} warm end-to-end runs writing JSON Lines, compile {det.compiled}, batch "
           f"{det.batch_size}, {str(det.dtype).removeprefix('torch.')}, CUDA graphs {det.cuda_graphs}; {peer_note}. "
           "Agreement: vidpipe's output (its own decode) vs the peer's (its own decode) on the same video, batch "
           f"{max(PEER_BATCHES)}.", *notes], det.device)


def synthetic_outputs(n: int, per_image: int, device: torch.device, seed: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Model outputs with exactly ``per_image`` candidates (score > 0.05) per image, spread evenly
    over the 80 classes (16,000 = every class full at 200)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    locs = torch.randn(n, 4, 8732, generator=g) * 0.5
    scores = torch.full((n, 81, 8732), -30.0)
    scores[:, 0] = 0.0
    for c in range(80):
        k = per_image // 80 + (1 if c < per_image % 80 else 0)
        for i in range(n):
            idx = torch.randperm(8732, generator=g)[:k]
            scores[i, c + 1, idx] = 2.0 + torch.rand(k, generator=g)
    return locs.to(device), scores.to(device)


def bench_postprocess(a: argparse.Namespace, cfg: Config) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = cfg.batch_for(device)
    rows = []
    for per_image in (0, 100, 1000, 5000, 16000):
        locs, scores = synthetic_outputs(n, per_image, device)
        cand = float((class_probs(scores)[:, 1:] > 0.05).sum()) / n
        fast = lambda: ssd_decode_padded(locs, scores)  # noqa: E731
        if device.type == "cuda":
            t_fast = gpu_ms(fast, repeats=a.repeats)
            t_torch = gpu_ms(lambda: ssd_decode_padded(locs, scores, nms="torch"), iters=5, repeats=a.repeats)
        else:
            t_fast = [s * 1e3 for s in time_repeats(fast, device, repeats=a.repeats)]
            t_torch = t_fast
        # The per-class loop is slow: time it on a few images and scale to the batch.
        m = n if per_image <= 100 else max(1, min(n, 400 // max(per_image // 100, 1)))
        t_loop = time_repeats(lambda: ssd_decode_loop(locs[:m], scores[:m], host_copy=True), device,
                              repeats=1, warmup=0)[0] * 1e3 * n / m
        rows.append([f"{per_image:,}", f"{cand:,.0f}", f"{median(t_fast):.3f} (±{spread(t_fast):.0%})",
                     f"{median(t_torch):.3f}", f"{t_loop:,.1f}" + ("" if m == n else f" (measured on {m})"),
                     f"{t_loop / median(t_fast):,.0f}x"])
    header = ["candidates/image (target)", "measured", f"ssd_decode ms / batch {n}", "torch-NMS variant ms",
              "per-class loop with host reads ms", "speed-up"]
    _emit(a, f"vidpipe bench: post-processing, batch {n}", _table(header, rows),
          ["Median of repeats; CUDA-event timing for the GPU paths, wall time for the loop."], device)


def bench_model(a: argparse.Namespace, cfg: Config) -> None:
    from .weights import calibrated_random_ssd300

    device = torch.device("cuda" if torch.cuda.is_available() else cfg.device if cfg.device != "auto" else "cpu")
    model = calibrated_random_ssd300()
    variants = [("eager fp32", "fp32", False, "off"), ("eager fp16 NCHW", "fp16", False, "off"),
                ("eager fp16 channels_last", "fp16", True, "off"),
                ("compiled fp16 channels_last", "fp16", True, "on")]
    sizes = (1, 8, 32, 128)
    rows = []
    for name, prec, cl, comp in variants:
        row = [name]
        for bs in sizes:
            if comp == "on" and bs < 32:  # compile time is not worth it for tiny batches
                row.append("–")
                continue
            c = cfg.replace(device=str(device), precision=prec, channels_last=cl, compile=comp, batch_size=bs)
            det = Detector(c, model=model)
            row.append(f"{median(model_only(det, a.repeats)):,.0f}")
        rows.append(row)
    _emit(a, "vidpipe bench: model only (images/s, 300x300, random weights)",
          _table(["variant"] + [f"bs {s}" for s in sizes], rows), [], device)


# The one-command suite: the phases vidpipe.timeline records, in order, and what each span is.
_PHASES = [("cli", "python + vidpipe.cli"), ("imports", "imports (torch, pipeline)"),
           ("built", "network built (its imports, weights on the CPU)"), ("cuda", "CUDA init"),
           ("model", "weights to the GPU"),
           ("captured", "decoder start + graph capture"), ("done", "decode + detect + write"), ("exit", "exit")]
# Phases after "model", in the notes: those that overlap (decode threads beside the capture), then the
# end. The process's end after its weights is the figure that "wall - import" hides: a fresh process's
# imports moved by 1-3 s on the H200 machine, more than a start-up change is worth.
_AFTER_MODEL = [("opened", "first decoder opened"), ("decoded", "first frames decoded"),
                ("warmed", "graph warm-up run"), ("captured", "graphs captured"), ("issued", "first batch issued"),
                ("written", "first result written"), ("done", "done"), ("exit", "process ended")]
FOLDER_CLIPS = 20  # copies of the input in the folder run: a folder of footage, as users have it


def _one_command(argv: list[str], env: dict[str, str], timeline: Path) -> dict[str, float]:
    """Run ``vidpipe`` in a fresh process: seconds from launch to each phase, ``exit`` included."""
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "vidpipe.cli", *argv], capture_output=True, text=True,
                       env={**env, "VIDPIPE_TIMELINE": str(timeline)})
    end = time.time()
    if r.returncode != 0:
        raise RuntimeError(f"vidpipe {shlex.join(argv)}: exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}")
    stamps = json.loads(timeline.read_text())
    return {**{k: v - t0 for k, v in stamps.items()}, "exit": end - t0}


def _background_compile(triton_cache: Path, limit_s: float = 600.0) -> float | None:
    """Seconds until the background compile a run started (vidpipe.kernels) wrote its marker, or
    None if no run started one."""
    t0 = time.time()
    folder = triton_cache / "vidpipe"
    while time.time() - t0 < limit_s:
        if any(folder.glob("*.ready")):
            return time.time() - t0
        if not any(folder.glob("*.compiling")):
            for log in folder.glob("*.log"):  # started, and ended without its marker
                raise RuntimeError(f"the background compile failed: {log.read_text().strip().splitlines()[-1:]}")
            return None
        time.sleep(0.2)
    raise RuntimeError(f"the background compile in {folder} did not finish in {limit_s:.0f} s")


def bench_startup(a: argparse.Namespace, cfg: Config) -> None:
    """The README's command as a user runs it, each in a fresh process: whole-process wall time on
    empty caches (random weights, Triton kernels, Inductor) and again with them warm (median of
    ``--repeats`` processes), time to the
    first result written, and where the time goes; then a folder of FOLDER_CLIPS copies of each
    input in one command, its frames over the wall beside its rate while busy."""
    tmp = Path(tempfile.mkdtemp(prefix="vidpipe-startup-"))
    imports = _import_seconds()
    weights = ["--weights", cfg.weights or "random"] if cfg.model == "ssd300" else []
    device = [] if cfg.device == "auto" else ["--device", cfg.device]
    yaml = Path(cfg.model).suffix.lower() in (".yaml", ".yml")
    rows, notes = [], []
    for i, video in enumerate(bench_inputs(a, tmp)):
        frames = probe(video).num_frames
        model = [] if cfg.model == "ssd300" else ["--model", cfg.model]
        if yaml:  # what a user passes is a checkpoint file: this model's, re-aimed on the video, saved as one
            model = ["--model", family_for_video(cfg, video).save(tmp / f"{Path(cfg.model).stem}-{i}.pt")["model"]]
        model += device
        caches = tmp / f"caches-{i}"  # empty for the first run, warm for the second
        env = {**os.environ, "XDG_CACHE_HOME": str(caches), "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
               "TRITON_CACHE_DIR": str(caches / "triton")}
        argv = ["detect", video, "-o", str(tmp / f"out-{i}.jsonl"), *weights, *model]
        for which, runs in (("first (empty caches)", 1), ("second", a.repeats)):
            # A fresh process's imports move by 2-3 s from one to the next on the H200 machine: the second
            # run is repeated, each phase's time is the median over the runs, and each run's wall is
            # taken beside a bare import timed just before it (the machine's state of that moment).
            bare, times = zip(*[(_bare_import(), _one_command(argv, env, tmp / "timeline.json"))
                                for _ in range(runs)])
            t = {k: median([x[k] for x in times]) for k in times[0] if all(k in x for x in times)}
            beyond = median([x["exit"] - b for b, x in zip(bare, times)])
            if runs > 1:
                notes.append(f"{Path(video).name}, {which} run: median of {runs} fresh processes, wall "
                             f"{min(x['exit'] for x in times):.2f}-{max(x['exit'] for x in times):.2f} s; "
                             f"the bare imports beside them {min(bare):.2f}-{max(bare):.2f} s.")
            if which != "second":
                compiled = _background_compile(caches / "triton")
                if compiled is not None:
                    notes.append(f"{Path(video).name}: the first run left the Triton kernels to a background "
                                 f"process (--kernels auto); they were compiled {compiled:.1f} s after it exited, "
                                 "before the second run started.")
            spans, last = [], 0.0
            for phase, _ in _PHASES:
                spans.append(f"{t.get(phase, last) - last:.2f}")
                last = t.get(phase, last)
            rows.append([Path(video).name, str(frames), which, f"{t['exit']:.2f}", f"{beyond:.2f}",
                         f"{t['written']:.2f}", *spans])
            overlapping = [f"{name} +{t[phase] - t['model']:.2f}" for phase, name in _AFTER_MODEL if phase in t]
            notes.append(f"{Path(video).name}, {which} run, s after the weights were on the GPU: "
                         + ", ".join(overlapping) + ".")
        folder = tmp / f"folder-{i}"
        folder.mkdir()
        for k in range(FOLDER_CLIPS):
            os.link(video, folder / f"clip{k:02d}{Path(video).suffix}")
        bare = _bare_import()
        t = _one_command(["detect", str(folder), "-o", str(tmp / f"out-folder-{i}"), *weights, *model], env,
                         tmp / "timeline.json")
        total = frames * FOLDER_CLIPS
        busy = total / (t["done"] - t["decoded"])
        notes.append(f"{FOLDER_CLIPS} copies of {Path(video).name} in one command ({total:,} frames, caches warm): "
                     f"{t['exit']:.1f} s wall, {total / t['exit']:,.0f} frames/s over the wall, {busy:,.0f} while "
                     f"busy (first frames decoded to done): {total / t['exit'] / busy:.2f} of the busy rate; over the "
                     f"wall minus the torch import ({bare:.2f} s just before), {total / (t['exit'] - bare):,.0f} "
                     f"({total / (t['exit'] - bare) / busy:.2f}).")
    header = ["input", "frames", "run", "wall s", "wall - import s", "first result s", *(p for _, p in _PHASES)]
    _emit(a, "vidpipe bench: one command (fresh processes)", _table(header, rows),
          [f"Command: `vidpipe {' '.join(['detect', 'VIDEO', '-o', 'OUT', *weights, *model])}` (defaults otherwise: "
           f"--compile auto{'; MODEL: ' + cfg.model + ' with random weights, saved as a checkpoint' if yaml else ''}). "
           f"`python -c \"import torch, torchvision\"` alone: {imports:.2f} s on this machine "
           "(median of three before the runs); 'wall - import': each run's wall minus such an import timed "
           "just before it (median over the runs: a fresh process's import moves by seconds on a machine "
           "without a bytecode cache). Spans: seconds between the phases vidpipe.timeline records (decoder "
           "start and the first graph capture overlap, and are shown together).", *notes],
          torch.device("cuda" if torch.cuda.is_available() else "cpu"))


LIVE_FPS = 29.5  # a 30 fps camera is kept up with
LIVE_P99_MS = 200.0  # capture to written, 99th percentile
LIVE_WARM_S = 2.0  # each stream's first seconds (decoder start) are left out of the figures
LIVE_FILE_RUNS = 4  # the input as a file: a first run (its graphs), then the median of three
LIVE_MEMORY_S = 60.0  # memory peaks are compared after this long and at the end (flat memory: 1 min vs 10 min)


@dataclass
class LiveFigures:
    rates: list[float]  # per stream, frames written per second of its steady window (after LIVE_WARM_S)
    latencies: list[float]  # ms, of every frame in those windows
    dropped: int  # frames missing from those windows (gaps in frame numbers: --live-policy latest)
    window: tuple[float, float]  # time.time() span in which every stream was in its window


def _live_figures(outputs: list[Path], fps: float) -> LiveFigures:
    """The figures of one live run, read from its JSON Lines outputs."""
    f = LiveFigures([], [], 0, (0.0, 0.0))
    starts, ends = [], []
    for out in outputs:
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        if not lines:
            f.rates.append(0.0)
            continue
        start, end = lines[0]["captured_at"] + LIVE_WARM_S, lines[-1]["captured_at"]
        window = [x for x in lines if x["captured_at"] >= start]
        f.rates.append(len(window) / max(end - start + 1 / fps, 1e-9))
        f.latencies += [x["latency_ms"] for x in window]
        if window:
            f.dropped += window[-1]["frame"] - window[0]["frame"] + 1 - len(window)
        starts.append(start)
        ends.append(end)
    f.window = (max(starts, default=0.0), min(ends, default=0.0))
    return f


def _cameras(video: str, k: int, tmp: Path, server) -> list[str]:
    """K stand-in cameras showing ``video``, each under a name of its own (one output each): the
    ``server``'s URLs (a :class:`~vidpipe.cameras.CameraServer`), else links to the file."""
    if server is not None:
        return [server.url(i) for i in range(k)]
    cams = [tmp / f"cam-{k}-{i}{Path(video).suffix}" for i in range(k)]
    for cam in cams:
        cam.unlink(missing_ok=True)
        cam.symlink_to(Path(video).resolve())
    return [str(c) for c in cams]


def _live_processes(cfg: Config, cams: list[str], procs: int, tmp: Path,
                    monitor=None) -> tuple[list[Path], RunReport]:
    """The cameras ``cams`` spread over ``procs`` worker processes on the device (``vidpipe detect
    --procs-per-device``), until each has run ``cfg.max_frames`` frames."""
    from .livescale import run_live_processes, until_ended
    from .scale import parse_devices

    targets = {c: tmp / f"cam-{len(cams)}-{i}.jsonl" for i, c in enumerate(cams)}
    sources, on_video = until_ended(list(targets))
    report = run_live_processes(cfg, sources, "jsonl", targets.__getitem__, parse_devices(cfg.device), procs,
                                on_video=on_video, monitor=monitor)
    return list(targets.values()), report


def bench_live(a: argparse.Namespace, cfg: Config) -> None:
    """K copies of each input as live cameras in one process (or spread over ``--procs-per-device``
    processes), for ``--live-seconds`` each, K taken from ``--live-streams`` in turn until one does not
    hold."""
    from .cameras import CameraServer

    tmp = Path(tempfile.mkdtemp(prefix="vidpipe-live-"))
    rows, notes, device = [], [], None
    for video in bench_inputs(a, tmp):
        with CameraServer(video) if a.live_cameras == "http" else nullcontext() as server:
            device = _live_counts(a, cfg, video, tmp, server, rows, notes) or device
    header = ["input", "cameras", "size", "streams", "processes", "published", "frames/s offered",
              "frames/s taken (of the file path's)", "per-stream frames/s (min / median)",
              "latency p50 / p99 ms", "dropped: steady / whole run", "NVDEC util (median)", "GPU util (median)",
              "host cores busy", "memory peak, host / GPU: first minute → whole run", "camera server late p99 ms",
              "holds"]
    _emit(a, "vidpipe bench: live streams (K cameras on one GPU)", _table(header, rows),
          [f"Each stream: the input as a camera for {a.live_seconds:g} s (cameras: file, the input read at its "
           "frame rate and looped, --realtime --loop; http, served by another process over loopback HTTP as "
           "live MPEG-TS at its frame rate, looped, which vidpipe reads as a camera's stream: decoded by FFmpeg "
           f"on NVDEC, --stream-decoder {cfg.stream_decoder}), --live-policy {cfg.live_policy}, JSON Lines per "
           "stream; figures "
           f"over each stream's frames after its first {LIVE_WARM_S:g} s. Holds: every stream processed at >= "
           f"{LIVE_FPS} frames/s and p99 latency (capture to line written; a stream's capture: its timestamp on "
           f"the clock of its soonest decoded frame) <= {LIVE_P99_MS:.0f} ms. Frames/s taken: the streams' "
           "steady rates summed, and their share of the input's rate as a file on the same detector (below). "
           f"Utilisation (NVML) and host cores busy "
           f"(/proc/stat, of {os.cpu_count()}, the camera server's included): samples every 0.2 s while every "
           f"stream was past its first seconds. "
           f"Dropped (--live-policy latest): frames missing in the streams' steady windows, and over the whole run; "
           "in bursts: of those over the whole run, the frames replaced within half a frame period of coming (the "
           "decoder handed several over at once), not because the engine fell behind. "
           f"Memory (runs of {LIVE_MEMORY_S + 30:.0f} s and more): the peak until every stream had run "
           f"{LIVE_MEMORY_S:.0f} s steady, then over the whole run; host: resident memory of the bench and every "
           f"process it started, GPU: used as NVML reports it (every process). "
           f"Processes: engines on the GPU, each batching its own share of the streams (--procs-per-device); "
           f"each captures its graphs (the batch and tiers of it, for short batches) before its streams start. "
           "Camera server late: how long after its time the server sent a packet, 99th percentile over the run "
           "(http cameras; a late server, not vidpipe, would hold the streams back)."] + notes,
          device or torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _live_counts(a: argparse.Namespace, cfg: Config, video: str, tmp: Path, server,
                 rows: list[list[str]], notes: list[str]) -> torch.device | None:
    """``bench_live`` for one input (``server``: its camera server, None for ``--live-cameras file``):
    a row for each K until one does not hold; in ``notes`` the input's file-path rate and, with
    ``--live-profile``, where the threads of each one-process count were; the device used."""
    from .profiling import GpuUtilization, ThreadStacks

    from .cli import _Service
    from .livescale import processes_for

    info, device = probe(video), None
    live = cfg.replace(realtime=True, loop=True)
    family = family_for_video(cfg, video)
    det = Detector(live.replace(max_frames=round(info.fps)), model=family)
    device = det.device
    end_to_end(det, video, tmp / "warm-up.jsonl")  # graphs captured before any timed stream
    # The same input as a file, end to end on this detector: what the live rows are a share of.
    det.config, walls = cfg, []
    for _ in range(LIVE_FILE_RUNS):
        t0 = time.perf_counter()
        frames = end_to_end(det, video, tmp / "file.jsonl")
        walls.append(time.perf_counter() - t0)
    file_rate = frames / median(walls[1:])
    notes.append(f"{Path(video).name} as a file (`vidpipe detect`, one process, graphs warm): {file_rate:,.0f} "
                 f"frames/s end to end, median of {LIVE_FILE_RUNS - 1} runs after a first.")
    print(notes[-1], flush=True)
    det.config = live.replace(max_frames=round(a.live_seconds * info.fps))
    if hasattr(family, "save"):  # worker processes load these weights: re-aimed on this video, the same load
        live = live.replace(**family.save(tmp / f"weights-{Path(video).stem}.pt"))
    warm: set[int] = set()
    for k in a.live_streams:
        procs = processes_for(k, cfg.device) if a.procs_per_device == "auto" else a.procs_per_device
        if procs > 1 and procs not in warm:
            # A warm-up as the one-process path has: workers on a machine's empty Triton cache compile their
            # kernels in their streams' first seconds, which a timed run would count as dropped frames.
            _live_processes(live.replace(max_frames=round(2 * info.fps)), _cameras(video, procs, tmp, server),
                            procs, tmp)
            warm.add(procs)
        cams = _cameras(video, k, tmp, server)
        if server is not None:
            server.stats(reset=True)
        # --mqtt, --metrics, --serve: what publishing costs the cameras
        with _Service(a) as service, GpuUtilization() as util, HostCpu() as cpu, HostMemory() as host:
            if procs > 1:  # each worker captures its graphs in its streams' first seconds
                paths, report = _live_processes(live.replace(max_frames=round(a.live_seconds * info.fps)),
                                                cams, procs, tmp, service.monitor)
            else:
                outs = iter([tmp / f"{Path(video).stem}-{k}-{i}.jsonl" for i in range(k)])
                paths = []

                def sink(v):
                    paths.append(next(outs))
                    return JsonlSink(paths[-1], v.path, v.width, v.height, det.classes)

                with ThreadStacks() if a.live_profile else nullcontext() as stacks:
                    report = run(det, cams, sink, monitor=service.monitor)
                if stacks is not None:
                    notes.append(f"Threads, {k} streams in one process (--live-profile; the whole run, "
                                 "sampled every 5 ms): " + " | ".join(stacks.describe()))
                    print(notes[-1], flush=True)
        if report.failed:
            raise RuntimeError(report.failed[0].error)
        fig = _live_figures(paths, info.fps)
        rates = fig.rates
        p50, p99 = (float(np.percentile(fig.latencies, q)) if fig.latencies else float("nan") for q in (50, 99))
        dropped = sum(v.dropped for v in report.videos)
        bursts = sum(v.dropped_in_bursts for v in report.videos)
        holds = min(rates) >= LIVE_FPS and p99 <= LIVE_P99_MS
        late = f"{server.stats()['late_p99_ms']:.1f}" if server is not None else "n/a"
        t0, t1 = (t - (time.time() - time.perf_counter()) for t in fig.window)
        nvdec = [v for xs in util.decoder.values() for t, v in xs if t0 <= t <= t1]  # all streams steady
        busy = [v for xs in util.gpu.values() for t, v in xs if t0 <= t <= t1]
        cores = cpu.busy(t0, t1)
        memory = "n/a"
        if t1 - t0 >= LIVE_MEMORY_S + 30:  # peaks once every stream has run a minute, and at the end
            gpu_memory = [x for xs in util.memory.values() for x in xs]
            memory = " / ".join(f"{a / 2**20:,.0f} → {b / 2**20:,.0f} MiB ({b / a - 1:+.1%})"
                                for a, b in ((peak(xs, 0, t0 + LIVE_MEMORY_S), peak(xs)) for xs in
                                             (host.samples, gpu_memory)) if a and b)
        published = ", ".join(n for n, on in (("mqtt", a.mqtt), ("metrics", a.metrics), ("view", a.serve)) if on)
        rows.append([Path(video).name, a.live_cameras, f"{info.width}x{info.height}", str(k), str(procs),
                     published or "none",
                     f"{k * info.fps:,.0f}", f"{sum(rates):,.0f} ({sum(rates) / file_rate:.2f})",
                     f"{min(rates):.1f} / {median(rates):.1f}", f"{p50:.0f} / {p99:.0f}",
                     f"{fig.dropped / max(fig.dropped + len(fig.latencies), 1):.1%} / "
                     f"{dropped / max(dropped + report.frames, 1):.1%}"
                     + (f" ({bursts / dropped:.0%} in bursts)" if dropped else ""),
                     f"{median(nvdec):.0f}%" if nvdec else "n/a", f"{median(busy):.0f}%" if busy else "n/a",
                     f"{cores:.1f}" if cores is not None else "n/a", memory, late, "yes" if holds else "**no**"])
        print(" | ".join(rows[-1]), flush=True)
        if not holds:
            break
    return device


def main(a: argparse.Namespace) -> int:
    from .cli import config_from_args

    # Steady state is what the suites measure: there "auto" compiles (the wall time of one command
    # is the one-command suite's business); live cameras run as a live run does, uncompiled unless asked.
    cfg = config_from_args(a).for_run(None if a.suite == "live" else 10**9)
    if cfg.kernels == "auto":  # the steady state; what compiling costs a user is the startup suite's
        cfg = cfg.replace(kernels="triton")
    suites = {"pipeline": bench_pipeline, "postprocess": bench_postprocess, "model": bench_model, "scale": bench_scale,
              "peers": bench_peers, "startup": bench_startup, "live": bench_live}
    suites[a.suite](a, cfg)
    return 0
