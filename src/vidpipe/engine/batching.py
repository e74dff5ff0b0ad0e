"""Batching: chunks of decoded frames packed into the detector's batches, one frame size per batch.

In: :class:`~.items.Chunk` s in any order. Out: ``(Batch, [Rows])`` pairs, a full
:class:`~vidpipe.detector.Batch` (or one taken out short, :meth:`Batcher.partial` /
:meth:`Batcher.stale`) and which of its rows hold which unit's frames. A chunk's frames go into
the batch as it arrives; with CUDA graphs they are copied into the graph's input at
:meth:`Batcher.commit` (the scheduler's once a turn) or when the batch is submitted.

The short-batch policy (applied by the scheduler while the GPU idles): a batch goes out short only
when that costs nothing (:func:`padding`: a run of one file carries that much padding anyway) or
when its first frames have waited ``MAX_WAIT`` (frames trickling in from a live stream).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from ..graphs import Batch
from ..errors import VidpipeError
from ..inputs import is_stream_url
from ..sources import VideoInfo, probe
from .items import Chunk, Unit

# Longest a frame waits for its batch to fill while the GPU idles. A short batch costs a full one
# on the GPU (padding), so files, which fill a batch in ~10-30 ms, send theirs out full.
MAX_WAIT = 0.05


@dataclass
class Rows:
    """Rows of a batch that hold consecutive frames of ``unit`` (``captured``: a live source's
    wall-clock capture times, else None; ``size``: the frames' (width, height))."""

    unit: Unit
    indices: list[int]
    times: list[float]
    captured: list[float] | None = None
    size: tuple[int, int] | None = None


class Batcher:
    """Packs chunks into batches of one frame size (``open(h, w)`` starts one), adding each chunk's
    frames as it comes and remembering which rows belong to which unit."""

    def __init__(self, open: Callable[[int, int], Batch]) -> None:
        self.open_batch = open
        self.open: dict[tuple[int, int], tuple[Batch, list[Rows]]] = {}
        self.since: dict[tuple[int, int], float] = {}  # when each open batch got its first frames

    def add(self, chunk: Chunk) -> Iterator[tuple[Batch, list[Rows]]]:
        """Full batches completed by ``chunk``; first, a batch of another size that holds frames of its
        unit (a source that changed resolution), taken out short: a unit's results must come in frame
        order, and its later frames would otherwise be issued ahead of those still waiting there."""
        h, w = chunk.batch.frames.shape[-2:]
        for key in [k for k, (_, pieces) in self.open.items()
                    if k != (h, w) and any(r.unit is chunk.unit for r in pieces)]:
            yield self._take(key)
        rest = chunk.batch
        while len(rest):
            if (h, w) not in self.open:
                self.open[h, w] = (self.open_batch(h, w), [])
                self.since[h, w] = time.perf_counter()
            batch, pieces = self.open[h, w]
            head, rest = rest.split(batch.size - batch.n)
            batch.add(head.frames)
            if pieces and pieces[-1].unit is chunk.unit:  # the unit's next frames, on the next rows
                pieces[-1].indices += head.indices
                pieces[-1].times += head.times
                if head.captured is not None:
                    pieces[-1].captured = (pieces[-1].captured or []) + head.captured
            else:
                pieces.append(Rows(chunk.unit, list(head.indices), list(head.times), head.captured, (w, h)))
            if batch.n == batch.size:
                yield self._take((h, w))

    def commit(self) -> None:
        """The frames added to open batches since the last commit, copied into their graphs' inputs."""
        for batch, _ in self.open.values():
            batch.commit()

    def partial(self, short: float = float("inf")) -> list[tuple[Batch, list[Rows]]]:
        """Batches not yet full, taken out: all, or as many as are ``short`` frames short in all."""
        batches = []
        for key, (batch, pieces) in list(self.open.items()):
            if batch.size - batch.n <= short:
                short -= batch.size - batch.n
                batches.append(self._take(key))
        return batches

    def stale(self, wait: float) -> list[tuple[Batch, list[Rows]]]:
        """Batches not yet full whose first frames came ``wait`` seconds ago or more, taken out."""
        now = time.perf_counter()
        return [self._take(key) for key, t in list(self.since.items()) if now - t >= wait]

    def _take(self, key: tuple[int, int]) -> tuple[Batch, list[Rows]]:
        del self.since[key]
        return self.open.pop(key)



def padding(inputs: list[str], expected: Callable[[VideoInfo], int], size: int) -> int:
    """Frames of padding in the batches of a run of one file: its length is known up front."""
    if len(inputs) != 1 or is_stream_url(inputs[0]):
        return 0
    try:
        return -expected(probe(inputs[0])) % size
    except VidpipeError:
        return 0  # reported in its turn by the producer


