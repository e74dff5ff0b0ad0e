"""Ordering: results of units decoded in parallel, put back in input order.

In: results (:class:`~.items.BatchResult`, a unit's own in frame order) and ends
(:class:`~.items.UnitEnd`) of units in any order. Out, from :meth:`Orderer.ready`:
:class:`~.items.VideoStart`, the results and :class:`~.items.VideoEnd` of each input in input
order; the segments of one file make one video. What is held is results (small), never frames.
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
    started: bool = False


class Orderer:
    """Restores input order: results and ends of units arrive in any order (a unit's own results
    in frame order); a unit's are emitted once every earlier unit's are, and ``release`` is called
    per emitted unit. Segments of one file make one VideoStart ... VideoEnd."""

    def __init__(self, release: Callable[[], None], expected: Callable[[VideoInfo], int]) -> None:
        self.release, self.expected = release, expected
        self.units: dict[int, _Held] = {}
        self.head = 0
        self.file = VideoEnd("")
        self.dropping = False  # the rest of a file whose decoding broke off

    def _held(self, unit: Unit) -> _Held:
        return self.units.setdefault(unit.seq, _Held(unit))

    def add(self, unit: Unit, result: BatchResult) -> None:
        held = self._held(unit)
        held.results.append(result)
        held.received += len(result.indices)

    def end(self, item: UnitEnd) -> None:
        self._held(item.unit).end = item

    def ready(self) -> Iterator[VideoStart | BatchResult | VideoEnd]:
        while (held := self.units.get(self.head)) is not None:
            unit, end = held.unit, held.end
            if unit.info is not None and unit.first and not held.started:
                held.started, self.dropping = True, False
                self.file = VideoEnd(unit.path, expected=self.expected(unit.info))
                yield VideoStart(unit.info)
            results, held.results = held.results, []
            if not self.dropping:
                yield from results
            if end is None or held.received < end.decoded:
                return
            del self.units[self.head]
            self.head += 1
            self.release()
            yield from self._close(end)

    def _close(self, end: UnitEnd) -> Iterator[VideoEnd]:
        if end.unit.info is None:
            yield VideoEnd(end.unit.path, error=end.error, fatal=True)
            return
        if self.dropping:
            return
        f = self.file
        f.decoded += end.decoded
        f.corrupt_packets += end.corrupt
        if end.error is not None:
            f.error, f.fatal, self.dropping = end.error, True, True
        if end.unit.last or f.fatal:
            if f.error is None and f.decoded == 0:  # e.g. a header that promises nothing decodable
                f.error, f.fatal = f"{f.path}: no frame could be decoded", True
            elif f.error is None and (f.lost or f.corrupt_packets):
                f.error = (f"{f.path}: damaged: decoded {f.decoded} of {f.expected} frames "
                           f"({f.lost} lost, {f.corrupt_packets} corrupt packets skipped)")
            yield f


