"""Line and zone analytics over one video's tracked detections: crossings of named lines (in / out,
per class) and objects inside named polygons (per class, per frame).

In: a line spec ``NAME:x1,y1,x2,y2`` / a zone spec ``NAME:x1,y1,x2,y2,x3,y3,...`` (frame pixels;
parsed by :func:`parse_line` / :func:`parse_zone`, torch-free), then one frame at a time in frame
order: ``boxes float32[D, 4]`` (x1, y1, x2, y2 pixels), ``labels int64[D]``, ``track_ids int64[D]``
(-1: no confirmed track; such detections count in zones but never cross a line).
Out: per frame, :meth:`Analytics.frame` -> ``{"lines": {name: {"in": {class: n}, "out": {...}}},
"zones": {name: {class: n}}}`` (lines: counts so far; zones: this frame), and the same counts at the
end (:meth:`Analytics.totals`; zones: the most objects inside at once, per class).

The geometry is supervision's (``LineZone``: a track crosses when all four box corners have moved
to the other side of the line, the direction from the line's start to its end with "in" on the
right hand's side as supervision defines it; ``PolygonZone``: a box is inside when its bottom centre
is). Optional dependency: ``pip install "vidpipe[track]"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .coco import Classes
from .errors import VidpipeError

MAX_COORDINATE = 1e6  # pixels: far past any frame, short of what float32 geometry would round away


@dataclass(frozen=True)
class Region:
    """A named line (2 points) or zone (3+ points), in frame pixels."""

    name: str
    points: tuple[tuple[float, float], ...]


def _parse(text: str, what: str, example: str, least: int, most: int | None) -> Region:
    name, sep, coords = text.partition(":")
    try:
        values = [float(v) for v in coords.split(",")]
    except ValueError:
        values = []
    points = len(values) // 2
    if not sep or not name or len(values) % 2 or points < least or (most is not None and points > most):
        raise ValueError(f"{what} {text!r}: expected {example}")
    if not all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in values):
        raise ValueError(f"{what} {text!r}: coordinates must be finite pixel positions (|x|, |y| <= "
                         f"{MAX_COORDINATE:g})")
    region = Region(name, tuple(zip(values[0::2], values[1::2])))
    if len(set(region.points)) < points or (what == "zone" and _area(region.points) == 0):
        raise ValueError(f"{what} {text!r}: its points must be distinct" + (" and enclose an area" if what == "zone"
                                                                              else " (a line of zero length)"))
    return region


def _area(points: tuple[tuple[float, float], ...]) -> float:
    """The polygon's area (shoelace formula)."""
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))) / 2


def parse_line(text: str) -> Region:
    return _parse(text, "line", "NAME:x1,y1,x2,y2 (frame pixels), e.g. door:100,400,500,400", 2, 2)


def parse_zone(text: str) -> Region:
    return _parse(text, "zone", "NAME:x1,y1,x2,y2,x3,y3,... (3+ points, frame pixels)", 3, None)


class Analytics:
    """The lines' and zones' state for one video."""

    def __init__(self, lines: tuple[str, ...], zones: tuple[str, ...], classes: Classes) -> None:
        try:
            import supervision as sv
        except ImportError:
            raise VidpipeError('--line and --zone need supervision: pip install "vidpipe[track]"') from None
        self._sv, self.names = sv, classes.names
        self.lines = {r.name: sv.LineZone(start=sv.Point(*r.points[0]), end=sv.Point(*r.points[1]))
                      for r in map(parse_line, lines)}
        self.zones = {r.name: sv.PolygonZone(polygon=np.round(r.points).astype(np.int64))
                      for r in map(parse_zone, zones)}
        self.peak: dict[str, dict[str, int]] = {name: {} for name in self.zones}
        self.crossed: list[dict] = []  # the last frame's crossings: line, track_id, class_id, class_name, direction

    def frame(self, boxes: np.ndarray, labels: np.ndarray, track_ids: np.ndarray | None) -> dict:
        """One frame's detections -> this frame's counts (see the module docstring)."""
        dets = self._sv.Detections(xyxy=boxes.astype(np.float32).reshape(-1, 4), class_id=labels.astype(int),
                                   tracker_id=None if track_ids is None else track_ids.astype(int))
        out: dict = {}
        self.crossed = []
        if self.lines:
            tracked = dets[dets.tracker_id >= 0]  # unconfirmed (-1) detections share no identity
            for name, line in self.lines.items():
                went_in, went_out = line.trigger(tracked)
                for direction, crossed in (("in", went_in), ("out", went_out)):
                    self.crossed += [{"line": name, "track_id": int(tracked.tracker_id[i]),
                                      "class_id": int(tracked.class_id[i]),
                                      "class_name": self.names[int(tracked.class_id[i])], "direction": direction}
                                     for i in np.flatnonzero(crossed)]
            out["lines"] = {name: self._line_counts(line) for name, line in self.lines.items()}
        if self.zones:
            out["zones"] = {}
            for name, zone in self.zones.items():
                inside = self._per_class(labels[zone.trigger(dets)])
                out["zones"][name] = inside
                peak = self.peak[name]
                for cls, n in inside.items():
                    peak[cls] = max(peak.get(cls, 0), n)
        return out

    def totals(self) -> dict:
        """Crossings per line and class over the video; per zone and class, the most inside at once."""
        out: dict = {}
        if self.lines:
            out["lines"] = {name: self._line_counts(line) for name, line in self.lines.items()}
        if self.zones:
            out["zones_peak"] = {name: dict(sorted(p.items())) for name, p in self.peak.items()}
        return out

    def _line_counts(self, line) -> dict[str, dict[str, int]]:
        return {"in": self._named(line.in_count_per_class), "out": self._named(line.out_count_per_class)}

    def _named(self, per_id: dict[int, int]) -> dict[str, int]:
        return {self.names[int(k)]: int(v) for k, v in sorted(per_id.items())}

    def _per_class(self, labels: np.ndarray) -> dict[str, int]:
        ids, counts = np.unique(labels, return_counts=True)
        return {self.names[int(i)]: int(n) for i, n in zip(ids, counts)}
