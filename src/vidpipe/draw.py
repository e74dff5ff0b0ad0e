"""Detections drawn into frames on their device: box outlines, and a label per box (class name,
track id, score) in white on a dark bar above it; the lines and zones of ``--line`` / ``--zone``
with their counts; then the frames as YUV 4:2:0 for an encoder.

In: ``frames uint8 [N, 3, H, W]`` RGB (any device), ``boxes float32 [N, D, 4]`` frame pixels
(x1, y1, x2, y2), ``labels int64 [N, D]``, ``scores float32 [N, D]``, ``counts int64 [N]`` (valid
leading entries), ``track_ids int64 [N, D]`` or None, and the class names; optionally
:class:`Regions` (lines and zones, made once per video) and per frame one label per region
(:meth:`Regions.labels` of the analytics' counts). Out: new frames, same shape and device.

Nothing waits for the device: every step is a fixed-shape tensor op (boxes are rasterised with 2-D
difference arrays and cumulative sums, glyphs are scattered from an atlas), so a batch costs a few
dozen kernels whatever its number of boxes. Glyphs come from Pillow's default font (torchvision's
dependency), rendered once per device; lines and zones are rasterised by Pillow once per video.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

BOX = (0, 255, 0)  # outline colour (RGB)
REGION = (255, 0, 255)  # lines and zones
TEXT, BAR = (255, 255, 255), (0, 0, 0)
THICK = 2  # outline width, pixels
FONT_SIZE = 11
MAX_CHARS = 24  # label characters drawn, at most (name, track id, score)


@lru_cache(maxsize=None)
def _atlas(device: str) -> tuple[torch.Tensor, int, int]:
    """``bool [128, gh, gw]``: each ASCII character's pixels in a cell a digit wide."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=FONT_SIZE)
    chars = [chr(c) for c in range(128)]
    gw = int(np.ceil(font.getlength("0"))) + 1  # digits' width: wider letters lose a column
    gh = FONT_SIZE + 3
    cells = np.zeros((128, gh, gw), bool)
    for code in range(33, 127):
        image = Image.new("L", (gw, gh))
        ImageDraw.Draw(image).text((0, 0), chars[code], fill=255, font=font)
        cells[code] = np.asarray(image) > 127
    return torch.from_numpy(cells).to(device), gh, gw


@lru_cache(maxsize=None)
def _name_codes(names: tuple[str, ...], device: str) -> torch.Tensor:
    """``int64 [C, MAX_CHARS]``: each class name's ASCII codes, space-padded."""
    rows = [[ord(c) if ord(c) < 128 else ord("?") for c in n[:MAX_CHARS]] for n in names]
    return torch.tensor([r + [32] * (MAX_CHARS - len(r)) for r in rows], dtype=torch.int64, device=device)


def _number(values: torch.Tensor, width: int, zeros: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative integers below ``10 ** width`` as ASCII digits, without leading zeros unless
    ``zeros``: ``int64 [..., width]`` (left-aligned) and how many."""
    powers = 10 ** torch.arange(width - 1, -1, -1, device=values.device)
    digits = 48 + (values[..., None] // powers) % 10
    if zeros:
        return digits, torch.full_like(values, width)
    count = 1 + sum((values >= 10 ** k).long() for k in range(1, width))
    start = (width - count)[..., None] + torch.arange(width, device=values.device)
    return digits.gather(-1, start.clamp(max=width - 1)), count


def _labels(labels, scores, track_ids, names) -> tuple[torch.Tensor, torch.Tensor]:
    """``codes int64 [N, D, MAX_CHARS]`` ("name #12 .87"; "#-" while a track is unconfirmed),
    space-padded, and their lengths."""
    device = labels.device
    const = lambda text: (torch.tensor([ord(c) for c in text], device=device).expand(*labels.shape, len(text)),  # noqa: E731
                          torch.full(labels.shape, len(text), device=device))
    table = _name_codes(names, str(device))
    parts = [(table[labels], torch.tensor([min(len(n), MAX_CHARS) for n in names], device=device)[labels])]
    if track_ids is not None:
        ids, count = _number(track_ids.clamp(min=0) % 10000, 4)
        unconfirmed = track_ids < 0
        parts += [const(" #"), (torch.where(unconfirmed[..., None], 45, ids), torch.where(unconfirmed, 1, count))]
    parts += [const(" ."), _number((scores.float().clamp(0, 0.99) * 100).round().long(), 2, zeros=True)]
    width = sum(c.shape[-1] for c, _ in parts)
    codes = torch.full((*labels.shape, width + 1), 32, dtype=torch.int64, device=device)  # last: a spare column
    at = torch.zeros(labels.shape, dtype=torch.int64, device=device)
    for part, count in parts:
        k = torch.arange(part.shape[-1], device=device)
        codes.scatter_(-1, torch.where(k < count[..., None], at[..., None] + k, width), part)
        at = at + count
    return codes[..., :MAX_CHARS], at.clamp(max=MAX_CHARS)


def _cover(n: int, h: int, w: int, x1, y1, x2, y2, valid) -> torch.Tensor:
    """``int32 [n, h, w]``: how many of the ``valid`` rectangles [x1, x2] x [y1, y2] (inclusive,
    ``int64 [n, D]``, clamped to the frame) cover each pixel."""
    diff = torch.zeros(n, h + 1, w + 1, dtype=torch.int32, device=x1.device)
    frame = torch.arange(n, device=x1.device)[:, None].expand_as(x1)
    one = valid.to(torch.int32)
    for ys, xs, sign in ((y1, x1, 1), (y1, x2 + 1, -1), (y2 + 1, x1, -1), (y2 + 1, x2 + 1, 1)):
        diff.index_put_((frame, ys, xs), sign * one, accumulate=True)
    return diff.cumsum(1).cumsum(2)[:, :h, :w]


def _codes(texts: list[list[str]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``int64 [N, K, MAX_CHARS]`` ASCII codes of ``texts`` (N lists of K strings), space-padded, and
    their lengths ``int64 [N, K]``."""
    n, k = len(texts), len(texts[0]) if texts else 0
    codes = np.full((n, k, MAX_CHARS), 32, np.int64)
    length = np.zeros((n, k), np.int64)
    for i, row in enumerate(texts):
        for j, text in enumerate(row):
            raw = np.frombuffer(text[:MAX_CHARS].encode("ascii", "replace"), np.uint8)
            codes[i, j, :len(raw)], length[i, j] = raw, len(raw)
    return torch.from_numpy(codes).to(device), torch.from_numpy(length).to(device)


def _text(n: int, h: int, w: int, codes: torch.Tensor, length: torch.Tensor, x: torch.Tensor, top: torch.Tensor,
          valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels ``codes`` / ``length`` (``[n, K, MAX_CHARS]`` / ``[n, K]``) with their top-left corners at
    ``x``, ``top`` (``int64 [n, K]``): ``bool [n, h, w]`` of their dark bars, and ``bool [n, 1, h, w]`` of
    their glyphs' pixels."""
    device = codes.device
    atlas, gh, gw = _atlas(str(device))
    bar = _cover(n, h, w, x, top, (x + length * gw - 1).clamp(max=w - 1), (top + gh - 1).clamp(max=h - 1),
                 valid & (length > 0)) > 0
    glyph = atlas[codes]  # [n, K, MAX_CHARS, gh, gw]
    gy = top[..., None, None, None] + torch.arange(gh, device=device)[:, None]
    column = x[..., None] + torch.arange(MAX_CHARS, device=device) * gw
    gx = column[..., None, None] + torch.arange(gw, device=device)
    on = glyph & valid[..., None, None, None] & (gy < h) & (gx < w)
    flat = (torch.arange(n, device=device)[:, None, None, None, None] * h + gy) * w + gx
    text = torch.zeros(n * h * w + 1, dtype=torch.bool, device=device)
    text[torch.where(on, flat, n * h * w).reshape(-1)] = True  # misses land on the spare last element
    return bar, text[:-1].view(n, 1, h, w)


@dataclass
class Regions:
    """A video's lines and zones, drawn on each of its frames: ``outline`` ``bool [H, W]`` on the
    frames' device, and each region's label corner ``x``, ``top`` (``int64 [K]``, lines first), above
    its topmost point and inside the frame. Made once per video by :meth:`make`."""

    lines: tuple[str, ...]  # names, in the order of the labels
    zones: tuple[str, ...]
    outline: torch.Tensor
    x: torch.Tensor
    top: torch.Tensor

    @classmethod
    def make(cls, h: int, w: int, lines: list, zones: list, device: torch.device) -> Regions:
        """From :class:`vidpipe.analytics.Region` lines and zones (frame pixels). Rasterised once on the
        host (Pillow), ``THICK`` pixels wide; a zone's outline is closed."""
        from PIL import Image, ImageDraw

        image = Image.new("L", (w, h))
        draw = ImageDraw.Draw(image)
        corners = []
        _, gh, gw = _atlas(str(device))
        for region, closed in [(r, False) for r in lines] + [(r, True) for r in zones]:
            points = [(float(x), float(y)) for x, y in region.points]
            draw.line(points + points[:1] if closed else points, fill=255, width=THICK)
            x, y = min(points, key=lambda p: (p[1], p[0]))
            corners.append((min(max(round(x), 0), max(w - gw, 0)), min(max(round(y) - gh - THICK, 0), max(h - gh, 0))))
        x, top = torch.tensor(corners, dtype=torch.int64).reshape(-1, 2).T
        return cls(tuple(r.name for r in lines), tuple(r.name for r in zones),
                   torch.from_numpy(np.asarray(image) > 0).to(device), x.to(device), top.to(device))

    def labels(self, counted: list[dict] | None, n: int) -> list[list[str]]:
        """Per frame, each region's label from the analytics' counts of that frame
        (:meth:`vidpipe.analytics.Analytics.frame`): ``"door in 3 out 1"`` (crossings so far, all
        classes), ``"lobby 2"`` (objects inside now); the names alone without counts."""
        rows = []
        for i in range(n):
            c = counted[i] if counted is not None else {}
            line = lambda name, way: sum(c["lines"][name][way].values())  # noqa: E731
            rows.append([f"{name} in {line(name, 'in')} out {line(name, 'out')}" if "lines" in c else name
                         for name in self.lines]
                        + [f"{name} {sum(c['zones'][name].values())}" if "zones" in c else name
                           for name in self.zones])
        return rows


def annotate(frames: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
             counts: torch.Tensor, track_ids: torch.Tensor | None, names: tuple[str, ...],
             regions: Regions | None = None, region_labels: list[list[str]] | None = None) -> torch.Tensor:
    """The frames with their detections (and ``regions`` with ``region_labels``, one list per frame)
    drawn (see the module docstring)."""
    n, _, h, w = frames.shape
    device = frames.device
    d = boxes.shape[1]
    valid = torch.arange(d, device=device) < counts[:, None]
    b = boxes.float().round().long()
    x1, x2 = b[..., 0].clamp(0, w - 1), b[..., 2].clamp(0, w - 1)
    y1, y2 = b[..., 1].clamp(0, h - 1), b[..., 3].clamp(0, h - 1)
    # A box's ring = its rectangle less its inside; counted per box, so another box's inside does
    # not hide it.
    ring = _cover(n, h, w, x1, y1, x2, y2, valid) > _cover(
        n, h, w, x1 + THICK, y1 + THICK, (x2 - THICK).clamp(min=0), (y2 - THICK).clamp(min=0),
        valid & (x2 - x1 > 2 * THICK) & (y2 - y1 > 2 * THICK))
    # Labels: a bar above each box (inside it when the box touches the top), glyphs on it.
    _, gh, _ = _atlas(str(device))
    codes, length = _labels(labels, scores, track_ids, names)
    bar, text = _text(n, h, w, codes, length, x1, torch.where(y1 >= gh, y1 - gh, y1), valid)
    out = frames
    if regions is not None and len(regions.x):  # under the boxes; their labels on top of everything
        k = len(regions.x)
        out = torch.where(regions.outline, _colour(REGION, device), out)
        codes, length = _codes(region_labels or regions.labels(None, n), device)
        region_bar, region_text = _text(n, h, w, codes, length, regions.x.expand(n, k), regions.top.expand(n, k),
                                        torch.ones(n, k, dtype=torch.bool, device=device))
        bar, text = bar | region_bar, text | region_text
    out = torch.where(ring[:, None], _colour(BOX, device), out)
    out = torch.where(bar[:, None], _colour(BAR, device), out)
    return torch.where(text, _colour(TEXT, device), out)


def _colour(rgb: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.uint8, device=device).view(1, 3, 1, 1)


def to_yuv420(frames: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, 3, H, W]`` RGB (H, W even) -> ``uint8 [N, H * 3 // 2, W]``: the Y, U and V planes
    of yuv420p one after another (BT.601, limited range, chroma averaged over 2x2), the layout
    PyAV's ``VideoFrame.from_ndarray(..., format="yuv420p")`` reads."""
    x = frames.float()
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    n, h, w = r.shape
    half = lambda c: c.view(n, h // 2, 2, w // 2, 2).mean((2, 4)).reshape(n, -1)  # noqa: E731
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    planes = torch.cat([y.reshape(n, -1), half(u), half(v)], 1)
    return planes.round().clamp(0, 255).to(torch.uint8).view(n, h * 3 // 2, w)
