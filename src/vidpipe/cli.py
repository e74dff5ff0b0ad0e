"""Command line: ``vidpipe detect``, ``vidpipe bench``, ``vidpipe ladder``.

Exit codes: 0 success; 1 some inputs failed (each named on one line and in the summary); 2 bad
usage or input; 130 interrupted (completed outputs kept, open ones left as ``*.partial``).

Arguments, inputs, outputs and ``--resume`` are checked before torch, PyAV or the model load:
``--help`` and a bad command answer at once.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from . import __version__
from .errors import VidpipeError
from .inputs import EXTENSIONS, check_input, check_outputs, expand_inputs, is_stream_url, output_paths

log = logging.getLogger("vidpipe")


def _int(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def _fraction(text: str) -> float:
    """An argparse type: a finite number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def _classes(text: str) -> tuple[int, ...]:
    """An argparse type: class ids, comma-separated."""
    try:
        ids = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class ids like 0,2,5, got {text!r}") from None
    if any(i < 0 for i in ids):
        raise argparse.ArgumentTypeError(f"class ids are >= 0, got {text}")
    return ids


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="ssd300", metavar="NAME|PATH",
                   help="ssd300 (default: NVIDIA's SSD300), an Ultralytics YOLO checkpoint (yolo11m.pt, your own "
                        "best.pt) or model yaml (yolo11m.yaml: random weights, for benchmarks)")
    g.add_argument("--trust-weights", action="store_true",
                   help="allow checkpoints that hold Python objects beyond the known model classes (unpickling "
                        "them runs their code: only for files you trust)")
    g.add_argument("--weights", default=None,
                   help="SSD300: checkpoint path (NVIDIA format or state dict); default: NVIDIA's COCO checkpoint, "
                        "downloaded on first use; 'random' = calibrated random weights for benchmarks")
    g.add_argument("--random-candidates", type=_int(0), default=None, metavar="N",
                   help="random weights: candidates per frame to aim for (SSD300: scores > 0.05, default 2000; "
                        "YOLO: anchors above --conf, default 500)")
    g.add_argument("--imgsz", type=_int(32), default=640, metavar="N",
                   help="YOLO: inference size (the letterbox's long side, as Ultralytics' imgsz; default 640)")
    g.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: the GPU when there is one)")
    g.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp16",
                   help="model precision on GPUs (CPUs always run fp32)")
    g.add_argument("--batch-size", type=_int(1), default=None, metavar="N",
                   help="frames per batch (default 64 on a GPU, 4 on a CPU, where a large batch only delays "
                        "the first result)")
    g.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the model (auto: only for runs long enough to pay back the compile time, "
                        "100,000 frames or more)")
    g.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="launch every kernel from Python instead of replaying captured CUDA graphs")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep the model's tensors in NCHW layout (channels_last is faster on tensor cores)")
    g.add_argument("--decoder", choices=["auto", "nvdec", "pyav"], default="auto",
                   help="auto = NVDEC on a GPU with PyNvVideoCodec installed, else FFmpeg (PyAV) on the CPU")
    g.add_argument("--decoders", type=_int(0), default=0, metavar="N",
                   help="parallel decode workers (0 = from resolution and device)")
    g.add_argument("--no-overlap", dest="overlap", action="store_false",
                   help="run every stage serially in one thread (for comparison)")


def config_from_args(a: argparse.Namespace, **extra):
    from .config import Config

    return Config(model=a.model, trust_weights=a.trust_weights, imgsz=a.imgsz,
                  weights=a.weights, random_candidates=a.random_candidates, device=a.device,
                  precision=a.precision, batch_size=a.batch_size, compile=a.compile,
                  channels_last=a.channels_last, cuda_graphs=a.cuda_graphs, decoder=a.decoder, decoders=a.decoders,
                  overlap=a.overlap, **extra)


def _add_detect_parser(sub) -> None:
    d = sub.add_parser("detect", help="detect objects in every frame of videos",
                       description="Detect objects in every frame. INPUT: files, directories (searched "
                                   "recursively), globs or rtsp/http URLs.")
    d.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, directories, globs or stream URLs")
    d.add_argument("-o", "--output", required=True,
                   help="output file (one input) or directory (several inputs, or a path ending in /): "
                        "in/a/clip.mp4 found under INPUT in/ is written to OUTPUT/a/clip.jsonl")
    d.add_argument("--format", choices=sorted(EXTENSIONS), default="jsonl",
                   help="jsonl: a JSON object per frame; coco: a COCO results list; parquet: a row per detection "
                        "(README: Outputs)")
    d.add_argument("--max-frames", type=_int(1), default=None, metavar="N", help="first N frames of each input")
    d.add_argument("--resume", action="store_true", help="skip inputs whose output is already complete")
    d.add_argument("--allow-failures", action="store_true",
                   help="exit 0 even when some inputs failed (they are still listed)")
    g = d.add_argument_group("scale-out")
    g.add_argument("--devices", default=None, metavar="all|0,1,...",
                   help="one worker process per listed GPU (numbered as nvidia-smi numbers them), inputs handed "
                        "out dynamically; 'cpu' entries run CPU workers")
    g.add_argument("--procs-per-device", type=_int(1), default=1, metavar="N",
                   help="worker processes per device (with --devices)")
    g.add_argument("--split-frames", type=_int(1), default=4096, metavar="N",
                   help="with several workers, share out files of at least 2N frames in parts of >= N frames")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (ADDRESS, or a local one when omitted); -o must be shared storage")
    g = d.add_argument_group("post-processing (every model; defaults are the model's own)")
    g.add_argument("--conf", "--score-threshold", dest="score_threshold", type=_fraction, default=None, metavar="P",
                   help="detections scoring below P are dropped (SSD300 0.3, YOLO 0.25)")
    g.add_argument("--iou", "--iou-threshold", dest="iou_threshold", type=_fraction, default=None, metavar="IOU",
                   help="NMS: a box overlapping a better one of its class by more than IOU is dropped "
                        "(SSD300 0.5, YOLO 0.7)")
    g.add_argument("--max-det", "--max-detections", dest="max_detections", type=_int(1), default=None, metavar="N",
                   help="detections kept per frame, best first (SSD300 20, YOLO 300)")
    g.add_argument("--classes", type=_classes, default=None, metavar="IDS",
                   help="keep only these class ids, e.g. 0,2 (the model's own ids: YOLO COCO 0 = person; SSD300 1)")
    g.add_argument("--agnostic-nms", action="store_true", help="YOLO: NMS across classes, as Ultralytics' agnostic_nms")
    g = d.add_argument_group("post-processing (SSD300's ssd_decode)")
    g.add_argument("--candidate-threshold", type=_fraction, default=0.05, metavar="P",
                   help="class scores at or below P are never candidates (default 0.05)")
    g.add_argument("--per-class-candidates", type=_int(1), default=200, metavar="N",
                   help="best candidates per class that enter NMS (default 200)")
    add_model_args(d)


def _add_bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="measure decode and model ceilings and end-to-end throughput",
                       description="Ceilings and end-to-end throughput measured in one run on one device.")
    b.add_argument("inputs", nargs="*", metavar="VIDEO", help="videos to bench (or --synthetic-1080p)")
    b.add_argument("--suite", choices=["pipeline", "postprocess", "model", "scale", "peers"], default="pipeline",
                   help="pipeline: ceilings and end to end per input; postprocess: ssd_decode vs the per-class loop; "
                        "model: model-only variants; scale: one GPU vs all GPUs; peers: Ultralytics' predict loop "
                        "beside vidpipe (YOLO models)")
    b.add_argument("--synthetic-1080p", type=_int(0), default=0, metavar="FRAMES",
                   help="also bench a generated 1920x1080 H.264 clip of about FRAMES frames (240 encoded, "
                        "then repeated without re-encoding)")
    b.add_argument("--long", type=_int(0), default=0, metavar="N",
                   help="also report peak memory for each input repeated N times")
    b.add_argument("--repeats", type=_int(1), default=5, metavar="N",
                   help="timed runs per figure; tables give the median and the spread (default 5)")
    b.add_argument("--scale-frames", type=_int(1), default=16000, metavar="N",
                   help="--suite scale: frames in each corpus (copies of the input)")
    b.add_argument("--max-frames", type=_int(1), default=None, metavar="N",
                   help="bench only the first N frames of each input")
    b.add_argument("--results", default=None, metavar="FILE", help="append the tables to this Markdown file")
    add_model_args(b)


def _add_ladder_parser(sub) -> None:
    p = sub.add_parser("ladder", help="run the optimisation ladder and print the table",
                       description="The write-up's optimisation steps as configurations of the one pipeline.")
    p.add_argument("video", nargs="?", default=None, help="input (default: shared/media/in.mp4 or a generated clip)")
    p.add_argument("--weights", default="random",
                   help="checkpoint path, or 'random' (default): calibrated random weights")
    p.add_argument("--random-candidates", type=_int(0), default=2000, metavar="N",
                   help="with --weights random: candidates per frame to calibrate for (default 2000)")
    p.add_argument("--slow-frames", type=_int(1), default=32, metavar="N",
                   help="frames timed for the slow rungs 0-1")
    p.add_argument("--max-frames", type=_int(1), default=None, metavar="N", help="frames timed for the other rungs")
    p.add_argument("--compare-frames", type=_int(1), default=32, metavar="N",
                   help="leading frames whose detections are compared with rung 2")
    p.add_argument("--scale-repeat", type=_int(1), default=40, metavar="N",
                   help="rung 8 runs on the input repeated N times, so every GPU gets a real share (a few "
                        "seconds: worker start-up, seconds apart, must not eat the window in which all are busy)")
    p.add_argument("--gil", action="store_true", help="measure GIL load per rung")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="write a PyTorch profiler trace (Chrome/Perfetto JSON) of the last rung's first batches")
    p.add_argument("--out", default=None, metavar="PREFIX", help="write PREFIX.json and PREFIX.md")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vidpipe", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"vidpipe {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is chosen and why")
    sub = p.add_subparsers(dest="command", required=True)
    _add_detect_parser(sub)
    _add_bench_parser(sub)
    _add_ladder_parser(sub)
    return p


class Progress:
    """Frames done, for a person: a bar on a terminal (log lines print above it, not over it),
    otherwise a line every ``every`` seconds with frames, frames/s and the time left, which a CI
    log or ``nohup.out`` shows while the run goes on."""

    def __init__(self, total: int, every: float = 5.0) -> None:
        self.total, self.every, self.done = total, every, 0
        self.t0 = self.last = time.perf_counter()
        self._stack = ExitStack()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=total or None, unit="frame", dynamic_ncols=True, smoothing=0.1)
            self._stack.enter_context(logging_redirect_tqdm())

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            fps = self.done / (now - self.t0)
            left = f", {(self.total - self.done) / fps:.0f} s left" if self.total > self.done and fps else ""
            of = f" of {self.total:,}" if self.total else ""
            print(f"vidpipe: {self.done:,}{of} frames, {fps:,.1f} frames/s{left}", file=sys.stderr, flush=True)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self._stack.close()


def _expected_frames(inputs: list[str], max_frames: int | None) -> int:
    """Frames the headers promise (for the progress ETA); unknown counts add nothing."""
    from .sources import probe

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


def _quit_now(signum, frame):
    # Before any output is open there is nothing to keep: leave at once. (A KeyboardInterrupt
    # raised inside the import machinery can be swallowed as "Exception ignored", and the run
    # would go on.)
    print("vidpipe: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


def _interruptible() -> None:
    """From here on outputs are open: Ctrl-C and SIGTERM unwind, so complete outputs are kept."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)


def cmd_detect(a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    found = expand_inputs(a.inputs)
    targets = output_paths(found, a.output, a.format)
    check_outputs(targets)
    inputs = [i.path for i in found]
    early: dict[str, str] = {}  # inputs that fail before any work, and why
    for path in inputs:
        if (reason := check_input(path)) is not None:
            early[path] = reason
            print(f"vidpipe: error: {reason}", file=sys.stderr)
    todo = [i for i in inputs if i not in early]
    if a.resume:
        done = [i for i in todo if targets[i].is_file()]
        if done:
            log.warning("--resume: %d of %d inputs already complete", len(done), len(inputs))
        todo = [i for i in todo if i not in done]
    if not todo:
        failed = f"; {len(early)} failed: " + ", ".join(early) if early else ""
        print(f"vidpipe: nothing left to do ({len(inputs) - len(early)} of {len(inputs)} inputs complete){failed}",
              file=sys.stderr)
        return 1 if early and not a.allow_failures else 0
    cfg = config_from_args(a, max_frames=a.max_frames, candidate_threshold=a.candidate_threshold,
                           iou_threshold=a.iou_threshold, max_detections=a.max_detections, classes=a.classes,
                           agnostic_nms=a.agnostic_nms, per_class_candidates=a.per_class_candidates,
                           score_threshold=a.score_threshold)
    planned = _expected_frames(todo, a.max_frames)
    cfg = cfg.for_run(None if any(is_stream_url(i) for i in todo) else planned)
    progress = Progress(planned)

    def on_video(end) -> None:
        if end.error:
            progress.write(f"vidpipe: error: {end.error}")

    try:
        report = _detect(a, cfg, {i: targets[i] for i in todo}, progress.update, on_video)
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    failed = list(early) + [v.path for v in report.failed]
    print(f"vidpipe: {report.frames} frames from {len(inputs) - len(failed)} of {len(inputs)} inputs in "
          f"{seconds:.2f} s: {report.frames / max(seconds, 1e-9):.1f} frames/s end to end"
          + (f"; {len(failed)} failed: " + ", ".join(failed) if failed else ""), file=sys.stderr)
    return 1 if failed and not a.allow_failures else 0


def _detect(a: argparse.Namespace, cfg, todo: dict[str, Path], on_frames, on_video):
    """Run ``todo`` locally, on worker processes or on Ray; the run's :class:`~vidpipe.engine.RunReport`."""
    if a.ray is not None:
        from .scale import run_ray
        _interruptible()
        return run_ray(cfg, todo, a.format, a.ray or None, on_video=on_video)
    if a.devices or a.procs_per_device > 1:
        from .scale import parse_devices, run_processes
        devices = parse_devices(a.devices or cfg.device)
        _interruptible()
        return run_processes(cfg, todo, a.format, devices, a.procs_per_device, on_frames=on_frames,
                             on_video=on_video, split_frames=a.split_frames)
    from .detector import Detector
    from .engine import run
    from .sinks import open_sink

    detector = Detector(cfg)
    if detector.device.type == "cpu":
        log.warning("no GPU in use: detecting on the CPU (FFmpeg decode, fp32, batch %d); expect a few frames/s",
                    detector.batch_size)
    log.info("device %s, %s, batch %d, compile %s", detector.device, detector.dtype,
             detector.batch_size, detector.compiled)
    _interruptible()
    return run(detector, list(todo), lambda info: open_sink(a.format, todo[info.path], info.path, info.width,
                                                            info.height, detector.classes),
               on_frames=on_frames, on_video=on_video)


def main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _quit_now)
    try:
        parser = build_parser()
        a = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="vidpipe: %(message)s")
        # The process's own setting, inherited by worker processes: Inductor's caches persist here,
        # so a second run skips most of the compile time.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                              os.path.join(os.path.expanduser("~"), ".cache", "vidpipe", "inductor"))
        if a.command == "detect":
            return cmd_detect(a)
        _interruptible()
        module = __import__(f"vidpipe.{a.command}", fromlist=["main"])
        return module.main(a)
    except VidpipeError as e:
        print(f"vidpipe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidpipe: interrupted; completed outputs kept, unfinished ones left as *.partial",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
