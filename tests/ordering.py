"""Decoded frames in input order, for tests: holds the frames of units decoded ahead, which only
small test inputs can afford (the engine reorders detections instead)."""

from __future__ import annotations

from typing import Iterator

from vidpipe.engine import Chunk, FrameProducer, VideoEnd, VideoStart
from vidpipe.engine.order import Orderer
from vidpipe.sources import FrameBatch


def in_order(producer: FrameProducer) -> Iterator[VideoStart | FrameBatch | VideoEnd]:
    order = Orderer(lambda: None, lambda info: info.num_frames)
    for item in producer:  # releases each unit as it ends
        if isinstance(item, Chunk):
            order.add(item.unit, item.batch)
        else:
            order.end(item)
        yield from order.ready()
