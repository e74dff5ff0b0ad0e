"""Decoded frames in each input's order, for tests: holds the frames of units decoded ahead, which
only small test inputs can afford (the engine reorders detections instead). Inputs interleave, as
the engine's do; :func:`by_video` groups them."""

from __future__ import annotations

from typing import Iterator

from vidpipe.engine import Chunk, FrameProducer, VideoEnd, VideoStart
from vidpipe.engine.order import Orderer
from vidpipe.sources import FrameBatch


def in_order(producer: FrameProducer) -> Iterator[VideoStart | FrameBatch | VideoEnd]:
    order = Orderer(lambda: None, lambda info: info.num_frames)
    for item in producer:  # releases each unit as it ends
        if isinstance(item, Chunk):
            item.batch.info = item.unit.info  # which occurrence of a file given twice, for by_video
            order.add(item.unit, item.batch)
        else:
            order.end(item)
        yield from order.ready()


def by_video(items) -> list[list]:
    """``in_order``'s items grouped per input occurrence (a file given twice is two groups, told
    apart by their info objects), in the order the groups started; an input that could not be
    probed is a group of its VideoEnd alone."""
    groups: list[list] = []
    open_: dict[int, list] = {}
    for item in items:
        info = item.info
        if isinstance(item, VideoStart):
            open_[id(info)] = [item]
            groups.append(open_[id(info)])
        elif info is not None and id(info) in open_:
            open_[id(info)].append(item)
            if isinstance(item, VideoEnd):
                del open_[id(info)]
        else:
            groups.append([item])
    return groups
