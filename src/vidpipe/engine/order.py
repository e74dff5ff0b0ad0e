"""Ordering: results of units decoded in parallel, put back in each input's frame order.

In: results (:class:`~.items.BatchResult`, a unit's own in frame order) and ends
(:class:`~.items.UnitEnd`) of units in any order. Out, from :meth:`Orderer.ready`:
:class:`~.items.VideoStart`, the results and :class:`~.items.VideoEnd` of each input, in that
input's order; different inputs interleave (each has its own sink). The segments of one file make
one video. What is held is results (small), never frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..sources import VideoInfo
from .items import BatchResult, Unit, UnitEnd, VideoEnd, VideoStart


@dataclass
class _Held:
    """What the orderer holds of one unit: results not yet emitted, frames received, its end."""

    unit: Unit
    results: list[BatchResult] = field(default_factory=list)
    received: int = 0
    end: UnitEnd | None = None


@dataclass
class _File:
    """One input's progress: the seq of its next unit (known once its first unit has shown up),
    its VideoEnd so far, and whether the rest is dropped (its decoding broke off)."""

    next: int | None = None
    end: VideoEnd | None = None
    dropping: bool = False


class Orderer:
    """Restores each input's order: results and ends of units arrive in any order (a unit's own
    results in frame order); a unit's are emitted once every earlier unit *of its input* has been,
    and ``release`` is called per emitted unit. Inputs do not wait for each other (a live stream
    never ends; the inputs after it must not wait for it). Segments of one file (consecutive units
    sharing one ``info``) make one VideoStart ... VideoEnd."""

    def __init__(self, release: Callable[[], None], expected: Callable[[VideoInfo], int]) -> None:
        self.release, self.expected = release, expected
        self.units: dict[int, _Held] = {}
        self.files: dict[int, _File] = {}  # by id(info): a file's units share its info

    def add(self, unit: Unit, result: BatchResult) -> None:
        held = self._held(unit)
        held.results.append(result)
        held.received += len(result.indices)

    def end(self, item: UnitEnd) -> None:
        self._held(item.unit).end = item

    def _held(self, unit: Unit) -> _Held:
        if unit.info is not None and unit.first:
            self.files.setdefault(id(unit.info), _File()).next = unit.seq
        return self.units.setdefault(unit.seq, _Held(unit))

    def ready(self) -> Iterator[VideoStart | BatchResult | VideoEnd]:
        for seq in [s for s, h in self.units.items() if h.unit.info is None and h.end is not None]:
            held = self.units.pop(seq)  # an input that could not be probed: its end alone
            self.release()
            yield VideoEnd(held.unit.path, error=held.end.error, fatal=True)
        for key, file in list(self.files.items()):
            yield from self._file(key, file)

    def _file(self, key: int, file: _File) -> Iterator[VideoStart | BatchResult | VideoEnd]:
        while file.next is not None and (held := self.units.get(file.next)) is not None:
            unit, end = held.unit, held.end
            if unit.first and file.end is None:
                file.end = VideoEnd(unit.path, expected=self.expected(unit.info), info=unit.info)
                yield VideoStart(unit.info)
            results, held.results = held.results, []
            if not file.dropping:
                yield from results
            if end is None or held.received < end.decoded:
                return
            del self.units[file.next]
            self.release()
            file.next += 1
            yield from self._close(file, end)
            if unit.last:
                del self.files[key]
                return

    def _close(self, file: _File, end: UnitEnd) -> Iterator[VideoEnd]:
        if file.dropping:
            return
        f = file.end
        f.decoded += end.decoded
        f.corrupt_packets += end.corrupt
        f.dropped += end.dropped
        f.dropped_in_bursts += end.dropped_in_bursts
        f.stopped |= end.stopped
        if end.error is not None:
            f.error, f.fatal, file.dropping = end.error, True, True
        if end.unit.last or f.fatal:
            if f.error is None and f.decoded == 0:  # e.g. a header that promises nothing decodable
                f.error, f.fatal = f"{f.path}: no frame could be decoded", True
            elif f.error is None and (f.lost or f.corrupt_packets):
                f.error = (f"{f.path}: damaged: decoded {f.decoded} of {f.expected} frames "
                           f"({f.lost} lost, {f.corrupt_packets} corrupt packets skipped)")
            yield f
