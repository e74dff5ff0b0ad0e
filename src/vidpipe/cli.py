"""Command line: ``vidpipe detect``, ``vidpipe bench``, ``vidpipe ladder``.

Exit codes: 0 success; 1 some inputs failed (see the summary); 2 bad usage or input;
130 interrupted (completed outputs kept, open ones left as ``.partial``).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .config import Config
from .errors import VidpipeError
from .sinks import EXTENSIONS, open_sink
from .sources import is_stream_url, probe

log = logging.getLogger("vidpipe")
VIDEO_EXTENSIONS = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mts", ".flv", ".wmv",
                    ".mpg", ".mpeg", ".h264", ".264", ".h265", ".265", ".hevc", ".ivf", ".3gp"}


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--weights", default=None,
                   help="checkpoint path (NVIDIA format or state dict); default: NVIDIA's COCO checkpoint, "
                        "downloaded on first use; 'random' = calibrated random weights for benchmarks")
    g.add_argument("--random-candidates", type=int, default=2000, metavar="N",
                   help="with --weights random: candidates (score > 0.05) per frame to calibrate for")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp16",
                   help="model precision on GPUs (CPUs always run fp32)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the model (auto = on for CUDA)")
    g.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="launch every kernel from Python instead of replaying captured CUDA graphs")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    g.add_argument("--decoder", choices=["auto", "nvdec", "pyav"], default="auto")
    g.add_argument("--decoders", type=int, default=0, metavar="N",
                   help="parallel decode workers (0 = from resolution and device)")
    g.add_argument("--no-overlap", dest="overlap", action="store_false",
                   help="run every stage serially in one thread (for comparison)")


def config_from_args(a: argparse.Namespace, **extra) -> Config:
    return Config(weights=a.weights, random_candidates=a.random_candidates, device=a.device,
                  precision=a.precision, batch_size=a.batch_size, compile=a.compile,
                  channels_last=a.channels_last, cuda_graphs=a.cuda_graphs, decoder=a.decoder, decoders=a.decoders,
                  overlap=a.overlap, **extra)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vidpipe", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"vidpipe {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is chosen and why")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("detect", help="detect objects in every frame of videos",
                       description="Detect objects in every frame. INPUT: files, directories (searched "
                                   "recursively), globs or rtsp/http URLs.")
    d.add_argument("inputs", nargs="+", metavar="INPUT")
    d.add_argument("-o", "--output", required=True,
                   help="output file (one input) or directory (several inputs, or a path ending in /)")
    d.add_argument("--format", choices=sorted(EXTENSIONS), default="jsonl")
    d.add_argument("--max-frames", type=int, default=None, metavar="N", help="first N frames of each input")
    d.add_argument("--resume", action="store_true", help="skip inputs whose output is already complete")
    d.add_argument("--allow-failures", action="store_true",
                   help="exit 0 even when some inputs failed (they are still listed)")
    g = d.add_argument_group("scale-out")
    g.add_argument("--devices", default=None, metavar="all|0,1,...",
                   help="one worker process per listed GPU, inputs handed out dynamically")
    g.add_argument("--procs-per-device", type=int, default=1, metavar="N",
                   help="worker processes per device (with --devices)")
    g.add_argument("--split-frames", type=int, default=4096, metavar="N",
                   help="with several workers, share out files of at least 2N frames in parts of >= N frames")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (ADDRESS, or a local one when omitted); -o must be shared storage")
    g = d.add_argument_group("post-processing")
    g.add_argument("--candidate-threshold", type=float, default=0.05)
    g.add_argument("--iou-threshold", type=float, default=0.5)
    g.add_argument("--max-detections", type=int, default=20)
    g.add_argument("--per-class-candidates", type=int, default=200)
    g.add_argument("--score-threshold", type=float, default=0.3)
    add_model_args(d)

    from .bench import add_bench_parser
    from .ladder import add_ladder_parser
    add_bench_parser(sub)
    add_ladder_parser(sub)
    return p


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files, directories (recursively, by video extension), globs and URLs -> ordered paths."""
    out: list[str] = []
    for item in inputs:
        if is_stream_url(item):
            out.append(item)
        elif os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).rglob("*")
                           if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:
                kinds = ", ".join(sorted(VIDEO_EXTENSIONS)[:5])
                raise VidpipeError(f"{item}: directory contains no videos ({kinds}, ...)")
            out += found
        elif any(ch in item for ch in "*?[") and not os.path.exists(item):
            found = sorted(glob.glob(item, recursive=True))
            if not found:
                raise VidpipeError(f"{item}: pattern matches no files")
            out += found
        else:
            out.append(item)  # missing files are reported per input, not here
    return list(dict.fromkeys(out))


def output_paths(inputs: list[str], output: str, fmt: str) -> dict[str, Path]:
    """One output per input: ``output`` itself for a single input unless it is a directory."""
    out = Path(output)
    if len(inputs) == 1 and not output.endswith(os.sep) and not out.is_dir():
        return {inputs[0]: out}
    used: set[str] = set()
    paths: dict[str, Path] = {}
    for item in inputs:
        stem = Path(item.rstrip("/")).stem or "stream"
        name, k = stem, 1
        while name in used:
            k += 1
            name = f"{stem}-{k}"
        used.add(name)
        paths[item] = out / (name + EXTENSIONS[fmt])
    return paths


def _expected_frames(inputs: list[str], max_frames: int | None) -> int:
    """Frames the headers promise (for the progress bar's ETA); unknown counts add nothing."""
    total = 0
    for item in inputs:
        try:
            n = probe(item).num_frames if not is_stream_url(item) else 0
        except VidpipeError:
            continue
        total += min(n, max_frames) if max_frames else n
    return total


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_detect(a: argparse.Namespace) -> int:
    from .detector import Detector
    from .engine import run

    inputs = expand_inputs(a.inputs)
    cfg = config_from_args(a, max_frames=a.max_frames, candidate_threshold=a.candidate_threshold,
                           iou_threshold=a.iou_threshold, max_detections=a.max_detections,
                           per_class_candidates=a.per_class_candidates, score_threshold=a.score_threshold)
    targets = output_paths(inputs, a.output, a.format)
    if a.resume:
        done = [i for i in inputs if targets[i].is_file()]
        if done:
            log.info("--resume: %d of %d inputs already complete", len(done), len(inputs))
        inputs = [i for i in inputs if i not in done]
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=_expected_frames(inputs, a.max_frames) or None, unit="frame", dynamic_ncols=True,
                   smoothing=0.1)

    def on_video(end) -> None:
        if end.error:
            msg = f"vidpipe: error: {end.error}"
            (bar.write(msg, file=sys.stderr) if bar else print(msg, file=sys.stderr))

    t0 = time.perf_counter()
    todo = {i: targets[i] for i in inputs}
    if a.ray is not None:
        from .scale import run_ray
        report = run_ray(cfg, todo, a.format, a.ray or None, on_video=on_video)
    elif a.devices or a.procs_per_device > 1:
        from .scale import parse_devices, run_processes
        devices = parse_devices(a.devices or cfg.device)
        report = run_processes(cfg, todo, a.format, devices, a.procs_per_device,
                               on_frames=bar.update if bar else None, on_video=on_video,
                               split_frames=a.split_frames)
    else:
        detector = Detector(cfg)
        log.info("device %s, %s, batch %d, compile %s", detector.device, detector.dtype,
                 detector.batch_size, detector.compiled)
        report = run(detector, inputs, lambda info: open_sink(a.format, todo[info.path], info.path,
                                                              info.width, info.height),
                     on_frames=bar.update if bar else None, on_video=on_video)
    seconds = time.perf_counter() - t0
    if bar:
        bar.close()
    failed = report.failed
    print(f"vidpipe: {report.frames} frames from {len(report.videos) - len(failed)} of {len(report.videos)} "
          f"inputs in {seconds:.2f} s: {report.frames / max(seconds, 1e-9):.1f} frames/s end to end"
          + (f"; {len(failed)} failed: " + ", ".join(v.path for v in failed) if failed else ""),
          file=sys.stderr)
    return 1 if failed and not a.allow_failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="vidpipe: %(message)s")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return {"detect": cmd_detect, "bench": _lazy("bench"), "ladder": _lazy("ladder")}[a.command](a)
    except VidpipeError as e:
        print(f"vidpipe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidpipe: interrupted; completed outputs kept, unfinished ones left as *.partial",
              file=sys.stderr)
        return 130


def _lazy(name: str):
    def call(a: argparse.Namespace) -> int:
        module = __import__(f"vidpipe.{name}", fromlist=["main"])
        return module.main(a)
    return call


if __name__ == "__main__":
    sys.exit(main())
