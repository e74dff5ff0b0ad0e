"""What a command names as input, and where each input's output goes.

In: the command line's INPUT items (files, directories, globs, stream URLs) and ``-o``.
Out: :class:`Input` items in a stable order, and ``{input path: output Path}``.

Output names are a function of the input alone, so ``--resume`` maps every input to the same
output whatever else is given, added or removed: a video found under a directory (or a glob's
fixed leading directories) keeps its path below that root, mirrored under ``-o`` with the format's
extension (``in/a/clip.mp4`` -> ``out/a/clip.jsonl``); a file named directly keeps its name
(``clip.jsonl``); a URL becomes its host and path (``rtsp://cam1:554/live`` -> ``cam1_554_live.jsonl``).
Two inputs that would share an output are an error before any work (:mod:`vidpipe.outputs` checks
the rest of what a run writes). Light on purpose: no torch, PyAV or NumPy, so errors and ``--help``
come before them.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import VidpipeError

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mts", ".flv", ".wmv",
                    ".mpg", ".mpeg", ".h264", ".264", ".h265", ".265", ".hevc", ".ivf", ".3gp"}
STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
EXTENSIONS: dict[str, str] = {"jsonl": ".jsonl", "coco": ".json", "parquet": ".parquet"}


def is_stream_url(path: str | os.PathLike) -> bool:
    return str(path).lower().startswith(STREAM_PREFIXES)


_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")


def redact(text: str) -> str:
    """``text`` with every URL's user name and password taken out (``rtsp://user:secret@cam/live`` ->
    ``rtsp://cam/live``): what vidpipe prints, logs and writes names a camera without its credentials."""
    return _CREDENTIALS.sub(r"\1", text)


class _Redacted(logging.Filter):
    """A log record's message with every URL's credentials taken out (:func:`redact`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (clean := redact(message)) != message:
            record.msg, record.args = clean, ()
        return True


def log_to_stderr(level: int = logging.WARNING) -> None:
    """vidpipe's log lines on stderr (``vidpipe: ...``), with no camera's credentials in them."""
    logging.basicConfig(level=level, format="vidpipe: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Redacted())


@dataclass(frozen=True)
class Input:
    """``path`` as given or found; ``name``: its output's path below ``-o``, without extension."""

    path: str
    name: str


def _url_name(url: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", redact(url).split("://", 1)[1]).strip("_.") or "stream"


def _below(path: Path, root: Path) -> str:
    """``path``'s name below ``root``, without extension, with no ``..`` in it: a glob such as
    ``base/*/../x.mp4`` names its matches through parent folders, and an output named so would land
    outside ``-o``. Those are named as their folder-free path below the glob's resolved root, else by
    their file name alone (the names checked for clashes afterwards)."""
    name = path.relative_to(root).with_suffix("").as_posix()
    if ".." not in name.split("/"):
        return name
    try:
        return Path(os.path.normpath(path)).relative_to(os.path.normpath(root)).with_suffix("").as_posix()
    except ValueError:
        return path.stem


def _videos_below(root: Path) -> list[Path]:
    """Every video file under ``root`` (by extension), sorted; a folder that cannot be read is an error
    naming it, not a silent gap in the run."""
    found = []

    def unreadable(e: OSError) -> None:
        raise VidpipeError(f"{e.filename}: cannot read this folder ({e.strerror}); its videos would be left out. "
                           "Fix its permissions, or name the files to run") from None

    for folder, _, files in os.walk(root, onerror=unreadable):
        found += [Path(folder, f) for f in files if Path(f).suffix.lower() in VIDEO_EXTENSIONS
                  and os.path.isfile(os.path.join(folder, f))]
    return sorted(found)


def _glob_root(pattern: str) -> Path:
    """The leading directories of ``pattern`` that hold no wildcard."""
    fixed = []
    for part in Path(pattern).parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def expand_inputs(items: list[str]) -> list[Input]:
    """Files, directories (searched recursively by video extension), globs and URLs, in the
    order given (a directory's and a glob's videos sorted). A file reached twice, under any
    spelling, is taken once. Missing files are kept: :func:`check_input` reports them per input."""
    out: list[Input] = []
    for item in items:
        if is_stream_url(item):
            out.append(Input(item, _url_name(item)))
        elif os.path.isdir(item):
            root = Path(item)
            found = _videos_below(root)
            if not found:
                kinds = ", ".join(sorted(VIDEO_EXTENSIONS)[:5])
                raise VidpipeError(f"{item}: directory contains no videos ({kinds}, ...)")
            out += [Input(str(p), _below(p, root)) for p in found]
        elif glob.has_magic(item) and not os.path.exists(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise VidpipeError(f"{item}: pattern matches no files")
            root = _glob_root(item)
            out += [Input(str(p), _below(p, root)) for p in found]
        else:
            out.append(Input(item, Path(item).stem or "video"))
    seen: set[str] = set()
    unique = []
    for i in out:
        key = i.path if is_stream_url(i.path) else os.path.realpath(i.path)
        if key not in seen:
            seen.add(key)
            unique.append(i)
    return unique


def source_name(source: str) -> str:
    """A source as events, metrics and the live view name it: its output's name (no credentials), in
    one level (an MQTT topic level, a URL path segment)."""
    return expand_inputs([source])[0].name.replace("/", "_")


def output_paths(inputs: list[Input], output: str, fmt: str) -> dict[str, Path]:
    """One output per input: ``output`` itself for a single input unless it is a directory (or
    ends in ``/``); else ``output/<name><ext>`` (see the module docstring)."""
    out = Path(output)
    as_dir = output.endswith(("/", os.sep)) or out.is_dir()
    if len(inputs) == 1 and not as_dir:
        return {inputs[0].path: out}
    if not as_dir and (out.exists() or out.suffix.lower() in {*EXTENSIONS.values(), *VIDEO_EXTENSIONS}):
        raise VidpipeError(f"-o {output}: {len(inputs)} inputs need a directory for their outputs, one file each; "
                           f"pass a directory (e.g. -o {out.with_suffix('')}/)")
    paths: dict[str, Path] = {}
    owner: dict[Path, str] = {}
    for i in inputs:
        target = out / (i.name + EXTENSIONS[fmt])
        if target in owner:
            raise VidpipeError(f"{owner[target]} and {i.path} would both write {target}; give their common "
                               "parent directory as the input (outputs then mirror the tree below it) or rename one")
        owner[target] = i.path
        paths[i.path] = target
    return paths


def check_input(path: str) -> str | None:
    """A one-line reason why ``path`` cannot be a video file, or None (URLs are checked when opened)."""
    if is_stream_url(path):
        return None
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{path}: symbolic link loop"
        if e.errno == errno.ENOENT:
            return f"{path}: no such file" + (" (a broken symbolic link)" if os.path.islink(path) else "")
        return f"{path}: cannot read ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return f"{path}: is a directory"
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a character device"
                if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        return f"{path}: {kind}, not a video file"
    if st.st_size == 0:
        return f"{path}: empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return f"{path}: permission denied"
    return None


def check_model_file(path: str | os.PathLike, flag: str, limit: int) -> Path:
    """``path`` as a model file vidpipe may read: a regular file (a symbolic link is followed: its target
    must be one) of at most ``limit`` bytes, else :class:`VidpipeError` naming ``flag`` (a FIFO would
    block the read, a device such as /dev/zero never end it)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise VidpipeError(f"{flag} {path}: {e.strerror.lower() if e.strerror else e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) \
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
        raise VidpipeError(f"{flag} {path}: {kind}, not a model file")
    if st.st_size > limit:
        raise VidpipeError(f"{flag} {path}: {st.st_size:,} bytes, more than a model file of this kind holds "
                           f"({limit:,} at most)")
    return Path(path)
