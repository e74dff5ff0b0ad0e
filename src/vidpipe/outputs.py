"""What a run may write, checked before any work, and the record vidpipe keeps beside each output.

In: each input's planned files (:class:`Planned`: detections, line and zone totals, annotated video),
the inputs themselves, and the settings that shape an output. Out: one-line reasons a file may not be
written (:func:`check_planned`, :func:`unwritable`), and the record ``<output>.vidpipe`` (JSON) that
says which input an output is of (its path, size, modification time and a hash of its first and last
MiB), with which settings, and whether it was finished, with the size of every file it wrote.

The record is what makes an output vidpipe's own: a file at an output's path is replaced only when the
record beside it names the same input (or with ``--overwrite``), and ``--resume`` skips an input only
when its record says the output covers it as this run would (:func:`covers`): the same input, the same
settings, every file finished and unchanged since. Nothing here imports torch or PyAV.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import VidpipeError
from .inputs import is_stream_url, redact

RECORD = ".vidpipe"  # the record beside out/clip.jsonl is out/clip.jsonl.vidpipe
INCOMPLETE = ".incomplete"  # what was written for an input that failed (sinks set it aside)
NAME_MAX = 255  # bytes in a file name, on every file system vidpipe runs on
_LONGEST_SUFFIX = max(len(RECORD), len(INCOMPLETE))
_HASHED = 1 << 20  # bytes hashed at each end of an input


@dataclass(frozen=True)
class Planned:
    """The files one input's run writes: its detections, its totals (``--line``/``--zone``) and its
    annotated video (``--save-video``), each None where not written."""

    detections: Path
    totals: Path | None = None
    video: Path | None = None

    def files(self) -> list[Path]:
        return [p for p in (self.detections, self.totals, self.video) if p is not None]


def totals_path(detections: Path) -> Path:
    """Where an output's line and zone totals go: out/clip.jsonl -> out/clip.totals.json."""
    return detections.with_suffix(".totals.json")


def record_path(detections: Path) -> Path:
    return detections.with_name(detections.name + RECORD)


def input_id(path: str) -> str:
    """An input as a record names it: a file's resolved path, a URL without its credentials."""
    return redact(path) if is_stream_url(path) else os.path.realpath(path)


def fingerprint(path: str) -> dict:
    """A file's size, modification time and a hash of its first and last MiB: a file replaced or
    rewritten since (even to the same size) has another."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_HASHED))
        if st.st_size > 2 * _HASHED:
            f.seek(-_HASHED, os.SEEK_END)
        h.update(f.read(_HASHED))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


def read_record(detections: Path) -> dict | None:
    """The record beside ``detections``, or None (absent, not a regular file, not vidpipe's JSON)."""
    path = record_path(detections)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode) or os.path.getsize(path) > 1 << 20:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("input"), str) else None


def write_record(planned: Planned, source: str, settings: dict, *, complete: bool) -> None:
    """The record of ``planned``'s outputs of ``source`` (atomically: a crash leaves the old one or the
    new one). Written unfinished before the run (the files are then this run's to write), finished after."""
    record = {"input": input_id(source), "settings": settings, "complete": complete,
              "files": {p.name: p.stat().st_size for p in planned.files()} if complete else {}}
    if not is_stream_url(source):
        record["fingerprint"] = fingerprint(source)
    path = record_path(planned.detections)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[:200]}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def ours(planned: Planned, source: str) -> bool:
    """Whether the files at ``planned``'s paths are vidpipe's earlier outputs of ``source``."""
    record = read_record(planned.detections)
    return record is not None and record["input"] == input_id(source)


def covers(planned: Planned, source: str, settings: dict) -> bool:
    """Whether ``planned``'s outputs already hold ``source`` as this run would write it: finished, of
    the same input unchanged since, with the same settings, and every file as it was written."""
    record = read_record(planned.detections)
    if record is None or not record.get("complete") or record["input"] != input_id(source):
        return False
    if record.get("settings") != settings or is_stream_url(source):
        return False
    try:
        if record.get("fingerprint") != fingerprint(source):
            return False
        sizes = {p.name: p.stat().st_size for p in planned.files()}
    except OSError:
        return False
    return sizes == record.get("files")


def _kind(mode: int) -> str:
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else
            "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode) else
            "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def check_planned(plans: dict[str, Planned], overwrite: bool) -> None:
    """Raise :class:`VidpipeError` (one line, naming the file and what to do) unless every planned file
    may be written: none is an input (by resolved path or hard link), none is too long a name, none
    exists as anything but a regular file, and none that exists is another's (a file with no record of
    its input, or the record of another) unless ``overwrite``. A live source's outputs are never
    vidpipe's to replace: a stream has no end that a later run could cover."""
    inputs = {os.path.realpath(p): p for p in plans if not is_stream_url(p)}
    ids = {}
    for p in inputs.values():
        try:
            st = os.stat(p)
        except OSError:
            continue
        ids[st.st_dev, st.st_ino] = p
    claimed: dict[Path, str] = {}
    for source, planned in plans.items():
        mine = not is_stream_url(source) and ours(planned, source)
        for path in [*planned.files(), record_path(planned.detections),
                     planned.detections.with_name(planned.detections.name + INCOMPLETE)]:
            if len(os.fsencode(path.name)) + (_LONGEST_SUFFIX if path in planned.files() else 0) > NAME_MAX:
                raise VidpipeError(f"{path}: the file name is too long for the file system ({NAME_MAX} bytes with "
                                   "vidpipe's suffixes); shorten the input's name or choose another output")
            if claimed.setdefault(path, source) != source:
                raise VidpipeError(f"{claimed[path]} and {source} would both write {path}; give them different "
                                   "outputs")
            real = os.path.realpath(path)
            try:
                st = os.lstat(path)
            except OSError:
                st = None
            clash = inputs.get(real) or (ids.get((st.st_dev, st.st_ino)) if st is not None else None)
            if clash is not None:
                raise VidpipeError(f"{path}: that is the input {clash} itself (it would be overwritten); "
                                   "choose another output path")
            if st is None:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise VidpipeError(f"{path}: {_kind(st.st_mode)}, not a regular file; vidpipe writes only regular "
                                   "files: remove it or choose another output")
            if path in planned.files() and not mine and not overwrite:
                whose = "an earlier run's output of this live source" if is_stream_url(source) else (
                    "not vidpipe's output of " + source)
                raise VidpipeError(f"{path} exists and is {whose}; pass --overwrite to replace it, or choose "
                                   "another output")


def unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be created, or None: the nearest existing folder above it must be a folder
    this process may write in (one line, naming ``path``)."""
    parent = path.parent
    while True:
        try:
            st = os.stat(parent)
            break
        except FileNotFoundError:
            if parent == parent.parent:
                return f"cannot write {path} (no such folder)"
            parent = parent.parent
        except OSError as e:
            return f"cannot write {path} ({e.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return f"cannot write {path} ({parent} is a file, not a folder)"
    if parent != path.parent:  # the run creates the folders below: may it, there?
        ok = os.access(parent, os.W_OK | os.X_OK)
        return None if ok else f"cannot write {path} ({os.strerror(errno.EACCES).lower()} in {parent})"
    try:  # a file made and removed: read-only file systems and /proc answer here, root or not
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".vidpipe-", suffix=".probe"):
            pass
    except OSError as e:
        return f"cannot write {path} ({e.strerror or e})"
    return None
