"""Live sources that change while a run reads them: cameras added and removed without a restart.

In: source names (stream URLs, or files read as cameras with ``--realtime``), through
:meth:`LiveSources.add` / :meth:`~LiveSources.remove` / :meth:`~LiveSources.close` from any thread,
or from a file of one source per line that :meth:`LiveSources.watch` re-reads when it changes.
Out, to the decode pool (:class:`~.decode.FrameProducer` polls :meth:`~LiveSources.wait`): the
sources wanted now, and whether the set is closed. A source added starts on its own decode worker
within ``POLL`` s; one removed stops at its next frame and its output is finished; closing removes
every source and lets the run end. Nothing here touches torch.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

from ..errors import VidpipeError

POLL = 0.25  # seconds between looks at a sources file; also the longest an addition waits
MAX_BYTES = 1 << 20  # a sources file: ~10,000 URLs
log = logging.getLogger(__name__)


class LiveSources:
    """The set of sources a run should be reading, in the order they were added."""

    def __init__(self, sources: list[str] | tuple[str, ...] = ()) -> None:
        self._cond = threading.Condition()
        self._wanted: dict[str, None] = dict.fromkeys(sources)
        self._closed = False
        self._changes = 0

    def add(self, source: str) -> None:
        self._set([*self._wanted, source])

    def remove(self, source: str) -> None:
        self._set([s for s in self._wanted if s != source])

    def replace(self, sources: list[str]) -> None:
        """Exactly ``sources`` from now on: the others are removed, the new ones added."""
        self._set(sources)

    def close(self) -> None:
        """Remove every source; the run finishes their outputs and returns."""
        with self._cond:
            self._wanted, self._closed = {}, True
            self._changes += 1
            self._cond.notify_all()

    def _set(self, sources: list[str]) -> None:
        with self._cond:
            if self._closed:
                return
            wanted = dict.fromkeys(sources)
            if list(wanted) != list(self._wanted):
                self._wanted = wanted
                self._changes += 1
                self._cond.notify_all()

    def snapshot(self) -> tuple[list[str], bool]:
        """The sources wanted now, and whether the set is closed."""
        with self._cond:
            return list(self._wanted), self._closed

    def wait(self, seen: int, timeout: float) -> int:
        """Block until the set changed since change number ``seen`` (or ``timeout`` s); the current one."""
        with self._cond:
            self._cond.wait_for(lambda: self._changes != seen, timeout)
            return self._changes

    @classmethod
    def watch(cls, path: str | os.PathLike) -> LiveSources:
        """The sources listed in ``path`` (one per line; blank lines and ``#`` comments skipped),
        re-read on a daemon thread whenever the file changes, until :meth:`close`. A file that is
        briefly missing (an editor replacing it) keeps the sources as they were."""
        path = Path(path)
        stamp = _stamp(path)  # before the read: a change in between is seen at the first look
        sources = cls(read_sources(path))  # a file that is not a list of sources fails here

        def follow() -> None:
            nonlocal stamp
            while not sources.snapshot()[1]:
                with sources._cond:
                    sources._cond.wait_for(lambda: sources._closed, POLL)
                now = _stamp(path)
                if now is not None and now != stamp:
                    stamp = now
                    try:
                        sources.replace(read_sources(path))
                    except OSError:
                        continue  # replaced between the look and the read: the next look reads it
                    except VidpipeError as e:  # saved half-written, or not text: the sources stay as they were
                        log.warning("%s; the sources stay as they were", e)

        threading.Thread(target=follow, name="vidpipe-sources", daemon=True).start()
        return sources


def read_sources(path: Path) -> list[str]:
    """One source per line of ``path``; blank lines and lines starting with ``#`` are skipped. A file
    that is not a regular file, larger than ``MAX_BYTES``, not UTF-8 or holding a NUL byte (no name of
    a file or URL does) is a :class:`VidpipeError` naming it; a missing one an OSError."""
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise VidpipeError(f"--sources {path}: not a regular file")
    if st.st_size > MAX_BYTES:
        raise VidpipeError(f"--sources {path}: {st.st_size:,} bytes; a list of sources is at most {MAX_BYTES:,}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise VidpipeError(f"--sources {path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if "\0" in text:
        raise VidpipeError(f"--sources {path}: line {text[:text.index(chr(0))].count(chr(10)) + 1} holds a NUL "
                           "byte; one source (a file or URL) per line")
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
