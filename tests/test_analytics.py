"""Line and zone analytics: crossings of random synthetic tracks counted as they were drawn, per
class and direction; objects inside a zone per frame; and the counts in a run's JSON Lines output
and totals file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("supervision")

from drawn_clip import encode_rgb  # noqa: E402
from vidpipe import Config, Detector  # noqa: E402
from vidpipe.analytics import Analytics, parse_line, parse_zone  # noqa: E402
from vidpipe.coco import Classes  # noqa: E402
from vidpipe.config import ConfigError  # noqa: E402
from vidpipe.engine import run  # noqa: E402
from vidpipe.models.boxes import BoxesFamily  # noqa: E402
from vidpipe.sinks import open_sink  # noqa: E402

CLASSES = Classes.from_names(["person", "car", "bike"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_tracks_crossing_a_line_and_standing_in_a_zone(seed):
    """Tracks move horizontally from a random start to a random end; each that starts wholly on one
    side of the vertical line x = L and ends wholly on the other crossed once, left to right = in.
    The zone is the rectangle left of L: a box is inside when its bottom centre is."""
    rng = np.random.default_rng(seed)
    line_x, frames, n = 300.0, 40, int(rng.integers(5, 30))
    start = rng.uniform(0, 560, n)
    end = rng.uniform(0, 560, n)
    labels = rng.integers(0, 3, n)
    y = rng.uniform(0, 400, n)
    a = Analytics((f"door:{line_x},0,{line_x},480",), (f"left:0,0,{line_x},0,{line_x},480,0,480",), CLASSES)
    counted = None
    for f in range(frames):
        x = start + (end - start) * f / (frames - 1)
        boxes = np.stack([x, y, x + 40, y + 40], 1).astype(np.float32)
        counted = a.frame(boxes, labels, np.arange(n))
        centre = x + 20
        expect_inside = np.bincount(labels[centre < line_x], minlength=3)
        assert counted["zones"]["left"] == {CLASSES.names[c]: int(k) for c, k in enumerate(expect_inside) if k}
    right = (start > line_x) & (end + 40 < line_x)  # wholly right at the start, wholly left at the end
    left = (start + 40 < line_x) & (end > line_x)
    per_class = lambda m: {CLASSES.names[c]: int(k) for c, k in enumerate(np.bincount(labels[m], minlength=3)) if k}
    assert counted["lines"]["door"] == {"in": per_class(left), "out": per_class(right)}
    assert a.totals()["lines"] == counted["lines"]


def test_unconfirmed_detections_cross_no_line():
    a = Analytics(("door:50,0,50,100",), (), CLASSES)
    for x in (10, 80, 10, 80):  # "-1" is no identity: these are not one object going back and forth
        a.frame(np.array([[x, 40, x + 10, 60]], np.float32), np.array([0]), np.array([-1]))
    assert a.totals()["lines"]["door"] == {"in": {}, "out": {}}


@pytest.mark.parametrize("spec, parse", [("door", parse_line), ("door:1,2,3", parse_line),
                                         ("door:1,2,3,4,5,6", parse_line), (":1,2,3,4", parse_line),
                                         ("zone:1,2,3,4", parse_zone), ("z:a,b,c,d,e,f", parse_zone)])
def test_bad_specs_say_what_is_expected(spec, parse):
    with pytest.raises(ValueError, match="expected NAME:"):
        parse(spec)


def test_lines_need_tracks_and_bad_specs_fail_the_command_line(tmp_path):
    import subprocess
    import sys

    with pytest.raises(ConfigError, match="track"):
        Config(lines=("door:0,0,10,10",))
    r = subprocess.run([sys.executable, "-m", "vidpipe.cli", "detect", "x.mp4", "-o", str(tmp_path / "o.jsonl"),
                        "--zone", "lobby:1,2"], capture_output=True, text=True)
    assert r.returncode == 2 and "expected NAME:x1,y1,x2,y2,x3,y3" in r.stderr.strip().splitlines()[-1]


class Spot(torch.nn.Module):
    """A box around the bright pixels' centre (the test clip's moving square)."""

    def forward(self, x: torch.Tensor):
        mask = (x.float().mean(1) > 0.5).float()
        n = mask.sum((1, 2)).clamp(min=1)
        cx = (mask.sum(1) * torch.arange(x.shape[-1])).sum(1) / n
        cy = (mask.sum(2) * torch.arange(x.shape[-2])).sum(1) / n
        boxes = torch.stack([cx - 6, cy - 6, cx + 6, cy + 6], 1)[:, None]
        return boxes, torch.full((x.shape[0], 1), 0.9), torch.zeros(x.shape[0], 1, dtype=torch.long)


def test_a_run_writes_counts_per_frame_and_totals(tmp_path):
    """A white square crosses a door line left to right: one "in", counted once its track is
    confirmed and it has crossed; the zone left of the door holds it until it leaves."""
    images = [np.zeros((64, 96, 3), np.uint8) for _ in range(30)]
    for f, img in enumerate(images):
        img[26:38, 4 + f * 2:16 + f * 2] = 255
    clip = encode_rgb(tmp_path / "spot.mp4", images)
    cfg = Config(device="cpu", batch_size=4, track=True, lines=("door:48,0,48,64",),
                 zones=("left:0,0,48,0,48,64,0,64",))
    det = Detector(cfg, model=BoxesFamily(Spot(), ["thing"]))
    target = tmp_path / "spot.jsonl"
    report = run(det, [str(clip)], lambda v: open_sink("jsonl", target, v.path, v.width, v.height, det.classes,
                                                        tracked=True))
    assert not report.failed
    lines = [json.loads(x) for x in target.read_text().splitlines()]
    ins = [x["lines"]["door"]["in"].get("thing", 0) for x in lines]
    inside = [x["zones"]["left"].get("thing", 0) for x in lines]
    centre = [4 + f * 2 + 5.5 for f in range(30)]  # the square covers x .. x + 11
    assert inside == [int(c < 48) for c in centre]  # bottom centre left of the door
    first = next(f for f, c in enumerate(centre) if c - 6 > 48)  # the whole box is past the door
    assert ins == [0] * first + [1] * (30 - first)
    totals = {"lines": {"door": {"in": {"thing": 1}, "out": {}}}, "zones_peak": {"left": {"thing": 1}}}
    assert json.loads((tmp_path / "spot.totals.json").read_text()) == totals == report.videos[0].analytics
