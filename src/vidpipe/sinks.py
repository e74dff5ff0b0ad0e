"""Sinks: per-frame detections to files, written incrementally and finished atomically.

In: one call per batch with host (CPU) arrays: ``boxes float32[N, D, 4]`` in pixels of the original
frame (x1, y1, x2, y2), ``labels int64[N, D]`` (1..80), ``scores float32[N, D]``, ``counts int64[N]``
(valid leading entries per frame), plus frame indices and times. Out: a file under its final name
only once complete; until then, and after a crash or interruption, it is ``<name>.partial``.

Formats: ``jsonl`` (one object per frame), ``coco`` (a COCO results list; image_id = frame index),
``parquet`` (one row per detection).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from .coco import CLASS_NAMES, COCO_CATEGORY_IDS

Format = Literal["jsonl", "coco", "parquet"]
EXTENSIONS: dict[str, str] = {"jsonl": ".jsonl", "coco": ".json", "parquet": ".parquet"}
PARTIAL = ".partial"


class Sink(Protocol):
    path: Path

    def write(self, indices: list[int], times: list[float], boxes: np.ndarray, labels: np.ndarray,
              scores: np.ndarray, counts: np.ndarray) -> None: ...

    def close(self, complete: bool) -> None: ...


class _AtomicFile:
    """Writes to ``<path>.partial`` and renames onto ``path`` only when closed as complete."""

    def __init__(self, path: str | os.PathLike, *, binary: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + PARTIAL)
        self.file = open(self.partial, "wb" if binary else "w", encoding=None if binary else "utf-8")
        self.frames = 0

    def close(self, complete: bool) -> None:
        if self.file.closed:
            return
        self.file.close()
        if complete:
            os.replace(self.partial, self.path)


class JsonlSink(_AtomicFile):
    """``{"video", "frame", "time", "width", "height", "detections": [{"box", "score",
    "class_id", "class_name"}]}`` per line, frames in order; boxes with 2 decimals, scores with 5."""

    def __init__(self, path: str | os.PathLike, video: str, width: int, height: int) -> None:
        super().__init__(path, binary=True)
        name = json.dumps(video).replace("%", "%%")  # the header is a "%" template
        self.head = (f'{{"video": {name}, "frame": %d, "time": %.6f, "width": {width}, "height": {height}, '
                     '"detections": [').encode()

    def write(self, indices, times, boxes, labels, scores, counts) -> None:
        # The detections' text is built by NumPy as one byte matrix (a row per detection, zero
        # bytes as padding, dropped at the end), not number by number: the writer thread then
        # holds the GIL for ~0.1 ms per batch instead of ~1 ms of float formatting.
        counts = np.asarray(counts)
        valid = np.arange(boxes.shape[1]) < counts[:, None]
        lab, n = labels[valid], int(counts.sum())
        text, ends = b"", []
        if n:
            box = np.concatenate([_fixed(boxes[valid], 2), _text(b", ", n * 4).reshape(n, 4, 2)], axis=2)
            rows = np.concatenate([
                _text(b'{"box": [', n), box.reshape(n, -1)[:, :-2], _text(b'], "score": ', n),
                _fixed(scores[valid], 5), _text(b', "class_id": ', n), _fixed(lab, 0),
                _text(b', "class_name": ', n), _NAMES_TEXT[lab], _text(b"}, ", n)], axis=1)
            used = rows != 0
            text = rows[used].tobytes()
            ends = np.cumsum(np.count_nonzero(used, axis=1)).tolist()
        out, d = [], 0
        for frame, t, c in zip(indices, times, counts.tolist()):
            out.append(self.head % (frame, t))
            if c:
                out.append(text[ends[d - 1] if d else 0:ends[d + c - 1] - 2])  # without the last ", "
            out.append(b"]}\n")
            d += c
        self.file.write(b"".join(out))
        self.frames += len(indices)


def _text(s: bytes, n: int) -> np.ndarray:
    """``s`` as ``n`` rows of a uint8 matrix."""
    return np.broadcast_to(np.frombuffer(s, np.uint8), (n, len(s)))


def _fixed(x: np.ndarray, decimals: int) -> np.ndarray:
    """``"%.{decimals}f" % v`` of each value as right-aligned uint8 text along a new last axis,
    zero-padded on the left. float32 times 10**decimals (<= 5) is exact in float64, so rint
    rounds like "%f" (half to even)."""
    q = np.abs(np.rint(x.astype(np.float64) * 10.0 ** decimals)).astype(np.int64)
    digits = max(decimals + 1, len(str(int(q.max())))) if q.size else decimals + 1
    width = digits + 1 + (decimals > 0)
    out = np.zeros((*q.shape, width), np.uint8)
    lead = np.zeros(q.shape, np.int64)  # column of each value's first digit
    col, rest = width - 1, q
    for k in range(digits):
        if k == decimals and decimals:
            out[..., col] = ord(".")
            col -= 1
        rest, digit = np.divmod(rest, 10)
        shown = (q >= 10 ** k) | (k <= decimals)  # no leading zeros before the units digit
        out[..., col] = np.where(shown, digit + ord("0"), 0)
        lead[shown] = col
        col -= 1
    neg = np.signbit(x) if x.dtype.kind == "f" else x < 0
    out[(*np.nonzero(neg), lead[neg] - 1)] = ord("-")
    return out


def _names_text() -> np.ndarray:
    names = [json.dumps(n).encode() for n in CLASS_NAMES]
    out = np.zeros((len(names), max(map(len, names))), np.uint8)
    for i, n in enumerate(names):
        out[i, :len(n)] = np.frombuffer(n, np.uint8)
    return out


_NAMES_TEXT = _names_text()  # row i: the JSON string of class i's name, zero-padded


class CocoSink(_AtomicFile):
    """A COCO detection results list, streamed: ``[{"image_id", "category_id", "bbox" (x, y, w, h),
    "score"}, ...]`` with COCO's own category ids."""

    def __init__(self, path: str | os.PathLike, video: str, width: int, height: int) -> None:
        super().__init__(path)
        self.file.write("[")
        self.first = True

    def write(self, indices, times, boxes, labels, scores, counts) -> None:
        items = []
        for i, (frame, c) in enumerate(zip(indices, counts.tolist())):
            for b, lab, s in zip(boxes[i, :c].tolist(), labels[i, :c].tolist(), scores[i, :c].tolist()):
                items.append(f'{{"image_id": {frame}, "category_id": {COCO_CATEGORY_IDS[lab]}, '
                             f'"bbox": [{b[0]:.2f}, {b[1]:.2f}, {b[2] - b[0]:.2f}, {b[3] - b[1]:.2f}], '
                             f'"score": {s:.5f}}}')
        if items:
            self.file.write(("" if self.first else ",\n") + ",\n".join(items))
            self.first = False
        self.frames += len(indices)

    def close(self, complete: bool) -> None:
        if not self.file.closed and complete:
            self.file.write("]\n")
        super().close(complete)


class ParquetSink(_AtomicFile):
    """One row per detection: video, frame, time, width, height, class_id, class_name, score,
    x1, y1, x2, y2; a row group per ``rows_per_group`` detections."""

    def __init__(self, path: str | os.PathLike, video: str, width: int, height: int,
                 rows_per_group: int = 65536) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(path, binary=True)
        self.pa = pa
        self.video, self.width, self.height = video, width, height
        self.schema = pa.schema([
            ("video", pa.string()), ("frame", pa.int64()), ("time", pa.float64()),
            ("width", pa.int32()), ("height", pa.int32()), ("class_id", pa.int16()),
            ("class_name", pa.string()), ("score", pa.float32()), ("x1", pa.float32()),
            ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32()),
        ])
        self.writer = pq.ParquetWriter(self.file, self.schema)
        self.rows_per_group = rows_per_group
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_rows = 0

    def write(self, indices, times, boxes, labels, scores, counts) -> None:
        counts = np.asarray(counts)
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
            "width": pa.array(np.full(n, self.width, np.int32)),
            "height": pa.array(np.full(n, self.height, np.int32)),
            "class_id": cols["class_id"],
            "class_name": pa.array([CLASS_NAMES[i] for i in cols["class_id"].tolist()], pa.string()),
            "score": cols["score"], "x1": cols["x1"].astype(np.float32), "y1": cols["y1"].astype(np.float32),
            "x2": cols["x2"].astype(np.float32), "y2": cols["y2"].astype(np.float32),
        }, schema=self.schema)
        self.writer.write_table(table)
        self.pending, self.pending_rows = [], 0

    def close(self, complete: bool) -> None:
        if not self.file.closed:
            if complete:
                self._flush()
            self.writer.close()
        super().close(complete)


class NullSink:
    """Discards results (benchmarks of the compute path alone)."""

    def __init__(self, path: str | os.PathLike = os.devnull, *args, **kwargs) -> None:
        self.path = Path(path)
        self.frames = 0

    def write(self, indices, *args) -> None:
        self.frames += len(indices)

    def close(self, complete: bool) -> None:
        pass


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


def open_sink(fmt: Format, path: str | os.PathLike, video: str, width: int, height: int) -> Sink:
    if fmt not in SINKS:
        raise ValueError(f"format must be one of {sorted(SINKS)}, got {fmt!r}")
    return SINKS[fmt](path, video, width, height)
