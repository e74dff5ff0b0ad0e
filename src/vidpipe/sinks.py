"""Sinks: per-frame detections to files, written incrementally and finished atomically.

In: one call per batch with host (CPU) arrays: ``boxes float32[N, D, 4]`` in pixels of the original
frame (x1, y1, x2, y2), ``labels int64[N, D]``, ``scores float32[N, D]``, ``counts int64[N]``
(valid leading entries per frame), plus frame indices and times; class ids are the model's, named
by the :class:`~vidpipe.coco.Classes` the sink was opened with. Out: a file under its final name
only once complete; until then, and after a crash or interruption, it is
``<name>.<pid>.<random>.partial``; what was written for an input that failed is ``<name>.incomplete``.
A text sink may also offer ``lines(...) -> str`` and ``write_lines(text, frames)``: the engine then
formats each batch as soon as its detections land, and only writes the text once it is in order.

Formats: ``jsonl`` (one object per frame), ``coco`` (a COCO results list; image_id = frame index),
``parquet`` (one row per detection); and :class:`VideoSink`, the frames themselves with their
detections drawn, as an MP4 (``--save-video``), or for a live stream :class:`RollingVideoSink`, a new
MP4 every so many seconds of the stream.
"""

from __future__ import annotations

import json
import os
import secrets
from fractions import Fraction
from functools import lru_cache, partial
from itertools import chain
from pathlib import Path
from typing import Callable, Literal, Protocol

import numpy as np

from .coco import SSD300_CLASSES, Classes
from .inputs import redact
from .outputs import INCOMPLETE

Format = Literal["jsonl", "coco", "parquet"]
PARTIAL = ".partial"  # an output being written, or left by an interrupted run
X264_PRESET = "ultrafast"  # 276 vs 106 frames/s at 1080p on 16 cores for "veryfast" (bench/encode_ceiling.py)


class Sink(Protocol):
    path: Path

    def write(self, indices: list[int], times: list[float], boxes: np.ndarray, labels: np.ndarray,
              scores: np.ndarray, counts: np.ndarray, track_ids: np.ndarray | None = None,
              captured: np.ndarray | None = None, latency: np.ndarray | None = None,
              analytics: list[dict] | None = None, size: tuple[int, int] | None = None) -> None:
        """``size``: these frames' (width, height), given only where it is not the video's (a stream
        that changed resolution)."""

    def close(self, complete: bool) -> None: ...

    def fail(self) -> Path | None: ...


class OutputConflict(OSError):
    """The final output was written by another run after this one started: this run's result is
    left in its own partial file instead of replacing the other's."""


def _version(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _partial_name(name: str, limit: int = 255) -> str:
    """``<name>.<pid>.<random>.partial``, the name cut short where it would pass ``limit`` bytes (a file
    system's longest name): an output whose own name fits always gets its partial file."""
    tail = f".{os.getpid()}.{secrets.token_hex(4)}{PARTIAL}"
    while len(os.fsencode(name + tail)) > limit:
        name = name[:-1]
    return name + tail


class _AtomicFile:
    """Writes to a partial file of this process's own (``<path>.<pid>.<random>.partial``) and puts
    it under ``path`` only when closed as complete, and only if ``path`` is still what it was when
    this run began (absent, or the same finished file): two runs writing one output never destroy
    each other's result; the later one fails with :class:`OutputConflict` and keeps its partial."""

    def __init__(self, path: str | os.PathLike, *, binary: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.before = _version(self.path)
        self.partial = self.path.with_name(_partial_name(self.path.name))
        self.file = open(self.partial, "xb" if binary else "x", encoding=None if binary else "utf-8")
        self.frames = 0

    def close(self, complete: bool) -> None:
        """Finish: complete -> the final name; else the partial file stays (an interrupted run)."""
        if self.file.closed:
            return
        self.file.close()
        if complete:
            self._publish()

    def _publish(self) -> None:
        conflict = OutputConflict(f"{self.path} was written by another run while this one ran; "
                                  f"this run's result is kept in {self.partial}")
        if _version(self.path) != self.before:
            raise conflict
        if self.before is None:
            try:  # atomic, and fails if another run has just created the output
                os.link(self.partial, self.path)
            except FileExistsError:
                raise conflict from None
            except OSError:  # a file system without hard links
                os.replace(self.partial, self.path)
                return
            os.unlink(self.partial)
        else:
            os.replace(self.partial, self.path)

    def fail(self) -> Path | None:
        """Close as failed: what was written is set aside as ``<path>.incomplete`` (never the final
        name, so ``--resume`` retries the input); returns that path, or None if nothing was written."""
        if not self.file.closed:
            try:
                self.file.close()
            except OSError:  # what its buffer held cannot be written either (a full disk): set aside as it is
                pass
        if not self.partial.exists():
            return None
        if self.frames == 0:
            self.partial.unlink()
            return None
        aside = self.path.with_name(self.path.name + INCOMPLETE)
        os.replace(self.partial, aside)
        return aside


class JsonlSink(_AtomicFile):
    """``{"video", "frame", "time", "width", "height", "detections": [{"box", "score",
    "class_id", "class_name"}]}`` per line, frames in order; each detection also has ``"track_id"``
    when the run tracks, a live source's frames ``"captured_at"`` (wall clock, s) and
    ``"latency_ms"`` (capture to write), and with lines or zones each frame their ``"lines"`` and
    ``"zones"`` counts (:mod:`vidpipe.analytics`)."""

    def __init__(self, path: str | os.PathLike, video: str, width: int, height: int,
                 classes: Classes = SSD300_CLASSES) -> None:
        super().__init__(path)
        self.names_json = [json.dumps(n) for n in classes.names]
        self.name = json.dumps(video).replace("%", "%%")  # the line is a "%" template
        self.head = self._head(width, height)

    def _head(self, width: int, height: int) -> str:
        return (f'{{"video": {self.name}, "frame": %d, "time": %.6f, "width": {width}, "height": {height}, '
                '"detections": [')

    def write(self, indices, times, boxes, labels, scores, counts, track_ids=None, captured=None,
              latency=None, analytics=None, size=None) -> None:
        formatter = self.formatter() if size is None else self.formatter(size)
        self.write_lines(formatter(indices, times, boxes, labels, scores, counts, track_ids, captured, latency,
                                   analytics), len(indices))
        if captured is not None:
            # A live frame's line is in the file when its latency_ms says it was written, not up to a
            # buffer's worth of frames later (8 KiB: 1-2 s of a camera with few detections).
            self.file.flush()

    def formatter(self, size: tuple[int, int] | None = None) -> partial:
        """``f(indices, times, boxes, labels, scores, counts[, track_ids]) -> str``: the text of those frames,
        without writing it; picklable, so it may run in another process (the engine formats
        results as soon as they land and writes them once they are in order). ``size``: the frames'
        (width, height) where it is not the video's."""
        return partial(jsonl_lines, self.head if size is None else self._head(*size), self.names_json)

    def write_lines(self, text: str, frames: int) -> None:
        self.file.write(text)
        self.frames += frames


def jsonl_formatter(video: str, width: int, height: int, classes: Classes = SSD300_CLASSES) -> partial:
    """``f(indices, times, boxes, labels, scores, counts, ...) -> str``: frames' text as a JSON Lines
    output of ``video`` holds it, whatever the run's output format (``--mqtt-detections``)."""
    sink = JsonlSink.__new__(JsonlSink)  # its text, without a file
    sink.names_json = [json.dumps(n) for n in classes.names]
    sink.name = json.dumps(redact(video)).replace("%", "%%")
    sink.head = sink._head(width, height)
    return sink.formatter()


def jsonl_lines(head: str, names_json: list[str], indices, times, boxes, labels, scores, counts,
                track_ids=None, captured=None, latency=None, analytics=None) -> str:
    """JSON Lines text of a batch's frames: ``head`` is the line's "%" template up to its detections,
    ``names_json`` each class name as JSON; ``track_ids`` (None: not tracked) like ``labels``;
    ``captured`` and ``latency`` (seconds) per frame for a live source; ``analytics`` a dict of keys
    per frame."""
    # One C-level format call for the whole batch (Python formatting of each value would be slower).
    counts = counts.tolist()
    valid = np.arange(boxes.shape[1]) < np.asarray(counts)[:, None]
    b, s, lab = boxes[valid], scores[valid], labels[valid].tolist()
    columns = [*b.T.tolist(), s.tolist(), lab, [names_json[x] for x in lab]]
    if track_ids is not None:
        columns.append(track_ids[valid].tolist())
    dets = zip(*columns)
    values: list = []
    clock = zip(captured.tolist(), (latency * 1000).tolist()) if captured is not None else None
    keys = iter([json.dumps(a)[1:-1] + ", " if a else "" for a in analytics]) if analytics is not None else None
    for frame, t, c in zip(indices, times, counts):
        values += (frame, t) if clock is None else (frame, t, *next(clock))
        if keys is not None:
            values.append(next(keys))
        values += chain.from_iterable(next(dets) for _ in range(c))
    if captured is not None:
        head = head.replace('"time": %.6f, ', '"time": %.6f, "captured_at": %.6f, "latency_ms": %.1f, ', 1)
    if analytics is not None:
        head = head.replace('"detections": [', '%s"detections": [', 1)
    tracked = track_ids is not None
    return "".join(head + _dets_template(c, tracked) for c in counts) % tuple(values)


def loaded() -> bool:
    """True. A formatting process runs it as it starts, so that this module and NumPy are imported
    before the first batch's text is wanted (the first task imports them otherwise)."""
    return True


def texts(formatter: Callable[..., str], sizes: list[int], indices, times, *arrays) -> list[str]:
    """``formatter`` on consecutive runs of ``sizes`` frames of batch-first arrays (None stays None):
    the text of each run, as if each had been formatted alone."""
    out, start = [], 0
    for n in sizes:
        stop = start + n
        out.append(formatter(indices[start:stop], times[start:stop], *(a if a is None else a[start:stop]
                                                                         for a in arrays)))
        start = stop
    return out


@lru_cache(maxsize=None)
def _dets_template(c: int, tracked: bool = False) -> str:
    det = '{"box": [%.2f, %.2f, %.2f, %.2f], "score": %.5f, "class_id": %d, "class_name": %s' + (
        ', "track_id": %d}' if tracked else "}")
    return ", ".join([det] * c) + "]}\n"


class CocoSink(_AtomicFile):
    """A COCO detection results list, streamed: ``[{"image_id", "category_id", "bbox" (x, y, w, h),
    "score"}, ...]`` with COCO's own category ids (and ``"track_id"`` when the run tracks)."""

    def __init__(self, path: str | os.PathLike, video: str, width: int, height: int,
                 classes: Classes = SSD300_CLASSES) -> None:
        super().__init__(path)
        self.classes = classes
        self.file.write("[")
        self.first = True

    def write(self, indices, times, boxes, labels, scores, counts, track_ids=None, captured=None,
              latency=None, analytics=None, size=None) -> None:  # a live clock, counts, frame size: not in COCO
        items = []
        for i, (frame, c) in enumerate(zip(indices, counts.tolist())):
            ids = track_ids[i, :c].tolist() if track_ids is not None else [None] * c
            for b, lab, s, t in zip(boxes[i, :c].tolist(), labels[i, :c].tolist(), scores[i, :c].tolist(), ids):
                items.append(f'{{"image_id": {frame}, "category_id": {self.classes.coco_id(lab)}, '
                             f'"bbox": [{b[0]:.2f}, {b[1]:.2f}, {b[2] - b[0]:.2f}, {b[3] - b[1]:.2f}], '
                             f'"score": {s:.5f}' + (f', "track_id": {t}}}' if t is not None else "}"))
        if items:
            self.file.write(("" if self.first else ",\n") + ",\n".join(items))
            self.first = False
        self.frames += len(indices)

    def close(self, complete: bool) -> None:
        if not self.file.closed and complete:
            self.file.write("]\n")
        super().close(complete)

    def fail(self) -> Path | None:
        if not self.file.closed:
            self.file.write("]\n")  # what was written stays valid JSON
        return super().fail()


class ParquetSink(_AtomicFile):
    """One row per detection: video, frame, time, width, height, class_id, class_name, score,
    x1, y1, x2, y2 (and track_id when ``tracked``); a row group per ``rows_per_group`` detections."""

    def __init__(self, path: str | os.PathLike, video: str, width: int, height: int,
                 classes: Classes = SSD300_CLASSES, tracked: bool = False, rows_per_group: int = 65536) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(path, binary=True)
        self.pa = pa
        self.names = classes.names
        # Parquet strings are UTF-8: a file name with undecodable bytes keeps them as \xNN escapes.
        video = video.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        self.video, self.width, self.height = video, width, height
        self.schema = pa.schema([
            ("video", pa.string()), ("frame", pa.int64()), ("time", pa.float64()),
            ("width", pa.int32()), ("height", pa.int32()), ("class_id", pa.int16()),
            ("class_name", pa.string()), ("score", pa.float32()), ("x1", pa.float32()),
            ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32()),
        ] + ([("track_id", pa.int64())] if tracked else []))
        self.writer = pq.ParquetWriter(self.file, self.schema)
        self.rows_per_group = rows_per_group
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_rows = 0

    def write(self, indices, times, boxes, labels, scores, counts, track_ids=None, captured=None,
              latency=None, analytics=None, size=None) -> None:  # a live source's clock, a frame's counts: not columns
        counts = np.asarray(counts)
        width, height = size or (self.width, self.height)
        mask = np.arange(boxes.shape[1])[None, :] < counts[:, None]
        n = int(mask.sum())
        self.frames += len(indices)
        if n == 0:
            return
        b = boxes[mask]
        lab = labels[mask]
        self.pending.append({
            "frame": np.repeat(np.asarray(indices, dtype=np.int64), counts),
            "time": np.repeat(np.asarray(times, dtype=np.float64), counts),
            "class_id": lab.astype(np.int16), "score": scores[mask].astype(np.float32),
            "x1": b[:, 0], "y1": b[:, 1], "x2": b[:, 2], "y2": b[:, 3],
            "width": np.full(n, width, np.int32), "height": np.full(n, height, np.int32),
            **({"track_id": track_ids[mask].astype(np.int64)} if track_ids is not None else {}),
        })
        self.pending_rows += n
        if self.pending_rows >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        cols = {k: np.concatenate([p[k] for p in self.pending]) for k in self.pending[0]}
        n = len(cols["frame"])
        pa = self.pa
        table = pa.table({
            "video": pa.array([self.video] * n, pa.string()), "frame": cols["frame"], "time": cols["time"],
            "width": cols["width"], "height": cols["height"],
            "class_id": cols["class_id"],
            "class_name": pa.array([self.names[i] for i in cols["class_id"].tolist()], pa.string()),
            "score": cols["score"], "x1": cols["x1"].astype(np.float32), "y1": cols["y1"].astype(np.float32),
            "x2": cols["x2"].astype(np.float32), "y2": cols["y2"].astype(np.float32),
            **({"track_id": cols["track_id"]} if "track_id" in cols else {}),
        }, schema=self.schema)
        self.writer.write_table(table)
        self.pending, self.pending_rows = [], 0

    def close(self, complete: bool) -> None:
        if not self.file.closed:
            if complete:
                self._flush()
            self.writer.close()
        super().close(complete)

    def fail(self) -> Path | None:
        if not self.file.closed:
            self._flush()
            self.writer.close()
        return super().fail()


class VideoSink(_AtomicFile):
    """An annotated MP4 of one input (``--save-video``): each batch's frames get their detections
    drawn on their device (:mod:`vidpipe.draw`), are converted to yuv420p there and copied to the
    host once, then encoded by libx264 (PyAV) on the CPU's threads: H100 and H200 have no NVENC.
    Frame ``i`` is shown at ``i / fps`` (a live source's dropped frames leave their gap). Odd frame
    sizes lose their last row or column (4:2:0 needs even sizes); frames of another size than the
    video's (a source that changed resolution) are scaled to it, after drawing. ``lines`` and
    ``zones`` (``--line`` / ``--zone`` specs) are drawn on every frame, labelled with the counts
    :meth:`write` gets."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float,
                 classes: Classes = SSD300_CLASSES, lines: tuple[str, ...] = (), zones: tuple[str, ...] = (),
                 start: int = 0) -> None:
        """``start``: the frame index shown at time 0 (a rolling file's first frame)."""
        import av

        from .analytics import parse_line, parse_zone

        self.lines, self.zones = [parse_line(x) for x in lines], [parse_zone(x) for x in zones]
        super().__init__(path, binary=True)
        self.regions = None  # drawn lines and zones, made on the frames' device for the frames' size
        self.size = (height, width)  # the frames', as declared
        self.start = start
        self.names = tuple(classes.names)
        self.container = av.open(self.file, "w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(30)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = width - width % 2, height - height % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"preset": X264_PRESET, "crf": "23"}
        self.stream.codec_context.thread_count = 0  # libx264's own threads, as many as it sees fit

    def write(self, frames, ready, indices, boxes, labels, scores, counts, track_ids=None, counted=None) -> None:
        """``frames`` uint8 [n, 3, H, W] on their device (usable once ``ready``, a CUDA event or
        None, has completed); the detections as the other sinks get them (host arrays), and
        ``counted``, the analytics' counts of each frame when there are lines or zones."""
        import av
        import torch

        from .draw import Regions, annotate, to_yuv420

        if ready is not None:
            torch.cuda.current_stream(frames.device).wait_event(ready)
        if (self.lines or self.zones) and (self.regions is None or self.regions.outline.shape != frames.shape[2:]):
            self.regions = Regions.make(*frames.shape[2:], self.lines, self.zones, frames.device)
        on = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(frames.device)  # noqa: E731
        drawn = annotate(frames, on(boxes), on(labels), on(scores), on(counts),
                         None if track_ids is None else on(track_ids), self.names, self.regions,
                         None if self.regions is None else self.regions.labels(counted, len(indices)))
        h, w = self.stream.height, self.stream.width
        if drawn.shape[2:] != self.size:  # an MP4's video stream has one size
            drawn = torch.nn.functional.interpolate(drawn.float(), size=(h, w), mode="bilinear", antialias=True)
            drawn = drawn.round().clamp(0, 255).to(torch.uint8)
        planes = to_yuv420(drawn[..., :h, :w]).cpu().numpy()
        for frame, plane in zip(indices, planes):
            picture = av.VideoFrame.from_ndarray(plane, format="yuv420p")
            picture.pts = frame - self.start
            self.container.mux(self.stream.encode(picture))
        self.frames += len(indices)

    def close(self, complete: bool) -> None:
        if not self.file.closed:
            self.container.mux(self.stream.encode(None))
            self.container.close()
        super().close(complete)

    def fail(self) -> Path | None:
        if not self.file.closed:
            try:
                self.container.close()
            except Exception:  # noqa: BLE001 - the partial file is set aside as it is
                pass
        return super().fail()


PREVIEW_WIDTH = 960  # pixels: a live view's frame, at most (a 1080p frame is ~100 kB of JPEG at this width)


def preview_jpeg(frames, ready, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, counts: np.ndarray,
                 track_ids: np.ndarray | None, names: tuple[str, ...]) -> bytes:
    """One frame (``uint8 [1, 3, H, W]`` on its device, ready once ``ready`` has completed) with its
    detections drawn as annotated video draws them, at most PREVIEW_WIDTH wide, as JPEG bytes (encoded
    where the frame is: on a GPU, nvJPEG through torchvision)."""
    import torch
    import torchvision

    from .draw import annotate

    if ready is not None:
        torch.cuda.current_stream(frames.device).wait_event(ready)
    on = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(frames.device)  # noqa: E731
    drawn = annotate(frames, on(boxes), on(labels), on(scores), on(counts), None if track_ids is None else on(track_ids),
                     names)
    h, w = drawn.shape[2:]
    if w > PREVIEW_WIDTH:
        drawn = torch.nn.functional.interpolate(drawn.float(), size=(round(h * PREVIEW_WIDTH / w), PREVIEW_WIDTH),
                                                mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)
    return torchvision.io.encode_jpeg(drawn[0], quality=80).cpu().numpy().tobytes()


class RollingVideoSink:
    """A live stream's annotated video as consecutive MP4s of ``seconds`` of the stream each:
    ``folder/<stem>-<first frame, 7 digits>.mp4``, cut at frame indices that are multiples of
    ``round(seconds * fps)`` (the stream's own numbering: a file is never longer, and a dropped
    frame leaves its gap). Each file is a :class:`VideoSink`, finished (complete, playable) when the
    stream's first frame of the next one comes, the last one when the stream ends; one that failed
    is kept as ``.incomplete`` as a VideoSink's is. ``files``: the finished ones, in order."""

    def __init__(self, folder: str | os.PathLike, stem: str, width: int, height: int, fps: float,
                 classes: Classes = SSD300_CLASSES, lines: tuple[str, ...] = (), zones: tuple[str, ...] = (),
                 seconds: float = 300.0) -> None:
        self.folder, self.stem = Path(folder), stem
        self.open = partial(VideoSink, width=width, height=height, fps=fps, classes=classes, lines=lines, zones=zones)
        self.per = max(1, round(seconds * (fps if fps and fps > 0 else 30.0)))  # frames per file
        self.current: VideoSink | None = None
        self.files: list[Path] = []
        self.frames = 0

    @property
    def path(self) -> Path:
        return self.current.path if self.current is not None else self.folder / f"{self.stem}-*.mp4"

    def write(self, frames, ready, indices, boxes, labels, scores, counts, track_ids=None, counted=None) -> None:
        """As :meth:`VideoSink.write`; a batch that spans a cut goes to both files."""
        part = [i // self.per for i in indices]  # indices ascend: each file's frames are one run
        at = 0
        while at < len(indices):
            end = at + 1
            while end < len(part) and part[end] == part[at]:
                end += 1
            first = part[at] * self.per
            if self.current is None or self.current.start != first:
                self._finish()
                self.current = self.open(self.folder / f"{self.stem}-{first:07d}.mp4", start=first)
            rows = slice(at, end)
            self.current.write(frames[rows], ready, indices[rows], boxes[rows], labels[rows], scores[rows],
                               counts[rows], None if track_ids is None else track_ids[rows],
                               None if counted is None else counted[rows])
            at = end
        self.frames += len(indices)

    def _finish(self) -> None:
        if self.current is not None:
            self.current.close(complete=True)
            self.files.append(self.current.path)
            self.current = None

    def close(self, complete: bool) -> None:
        if self.current is not None and not complete:
            self.current.close(complete=False)
            self.current = None
        self._finish()

    def fail(self) -> Path | None:
        current, self.current = self.current, None
        return current.fail() if current is not None else None


class NullSink:
    """Discards results (benchmarks of the compute path alone)."""

    def __init__(self, path: str | os.PathLike = os.devnull, *args, **kwargs) -> None:
        self.path = Path(path)
        self.frames = 0

    def write(self, indices, *args, **kwargs) -> None:
        self.frames += len(indices)

    def close(self, complete: bool) -> None:
        pass

    def fail(self) -> Path | None:
        return None


SINKS = {"jsonl": JsonlSink, "coco": CocoSink, "parquet": ParquetSink}


def concat_outputs(fmt: Format, parts: list[Path], target: Path) -> None:
    """Join the complete outputs of consecutive parts of one video into ``target``, atomically
    (the parts of a file split across worker processes)."""
    out = _AtomicFile(target, binary=True)
    try:
        if fmt == "jsonl":
            for part in parts:
                out.file.write(part.read_bytes())
        elif fmt == "coco":
            bodies = [part.read_text().strip()[1:-1].strip() for part in parts]
            out.file.write(("[" + ",\n".join(b for b in bodies if b) + "]\n").encode())
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            tables = [pq.read_table(part) for part in parts]
            with pq.ParquetWriter(out.file, tables[0].schema) as writer:
                for table in tables:
                    writer.write_table(table)
        else:
            raise ValueError(f"format must be one of {sorted(SINKS)}, got {fmt!r}")
    except BaseException:
        out.close(complete=False)
        raise
    out.close(complete=True)


def open_sink(fmt: Format, path: str | os.PathLike, video: str, width: int, height: int,
              classes: Classes = SSD300_CLASSES, tracked: bool = False) -> Sink:
    """A sink of format ``fmt`` for one video (named in it without any URL credentials); ``classes``
    names the class ids it will be given; ``tracked``: its detections carry track ids (a Parquet file's
    schema says so up front)."""
    if fmt not in SINKS:
        raise ValueError(f"format must be one of {sorted(SINKS)}, got {fmt!r}")
    video = redact(video)
    if fmt == "parquet":
        return ParquetSink(path, video, width, height, classes, tracked)
    return SINKS[fmt](path, video, width, height, classes)
