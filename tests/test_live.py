"""Live sources in one process: --realtime files (read at their frame rate, the stand-in camera)
and --loop, several at once, each written in its own order without waiting for the others, each
frame with its capture time and latency; the latency policy (latest: drop what could not be taken,
never lag; all: every frame)."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from vidpipe import Config, Detector
from vidpipe.engine import run
from vidpipe.models.boxes import BoxesFamily
from vidpipe.sinks import open_sink
from vidpipe.synth import make_clip


class Constant(torch.nn.Module):
    """One box per frame, score 0.9: the test is about frames and clocks, not detections."""

    def forward(self, x: torch.Tensor):
        n = x.shape[0]
        boxes = x.new_zeros(n, 1, 4) + torch.arange(4, device=x.device, dtype=x.dtype)
        return boxes, x.new_full((n, 1), 0.9), torch.zeros(n, 1, dtype=torch.long, device=x.device)


class Slow(Constant):
    """0.1 s per batch: a detector slower than the camera."""

    def forward(self, x: torch.Tensor):
        time.sleep(0.1)
        return super().forward(x)


def detect(tmp_path, clips, model=None, **cfg) -> tuple[dict[str, list[dict]], float]:
    cfg = {"batch_size": 4, **cfg}
    det = Detector(Config(device="cpu", **cfg), model=BoxesFamily(model or Constant(), ["thing"]))
    outs = {str(c): tmp_path / f"{c.stem}.jsonl" for c in clips}
    t0 = time.time()
    report = run(det, list(outs), lambda v: open_sink("jsonl", outs[v.path], v.path, v.width, v.height))
    wall = time.time() - t0
    assert not report.failed, report.failed
    detect.report = report
    return {p: [json.loads(x) for x in o.read_text().splitlines()] for p, o in outs.items()}, wall


def test_loop_runs_frame_numbers_and_times_on(tmp_path):
    clip = make_clip(tmp_path / "a.mp4", frames=10, width=64, height=48, bframes=False)
    out, _ = detect(tmp_path, [clip], loop=True, max_frames=25)
    lines = out[str(clip)]
    assert [x["frame"] for x in lines] == list(range(25))
    times = [x["time"] for x in lines]
    assert all(b > a for a, b in zip(times, times[1:])) and abs(times[10] - 10 / 30) < 1e-3
    assert all(len(x["detections"]) == 1 for x in lines) and "latency_ms" not in lines[0]  # not live


def test_realtime_streams_run_side_by_side_at_their_rate(tmp_path):
    """Two 30 fps stand-in cameras, 30 frames each: about one second of wall time in all (not two),
    frames captured on their clock, and the second camera's results written while the first is
    still running (its latency stays low: inputs do not wait for each other)."""
    clips = [make_clip(tmp_path / f"cam{i}.mp4", frames=15, width=64, height=48, bframes=False, seed=i)
             for i in range(2)]
    out, wall = detect(tmp_path, clips, realtime=True, loop=True, max_frames=30, live_policy="all")
    assert 0.9 < wall < 1.9, wall
    for lines in out.values():
        assert [x["frame"] for x in lines] == list(range(30))
        captured = np.array([x["captured_at"] for x in lines])
        # on the clock: frame k no earlier than k / 30 s after the first (10 ms scheduling slack)
        assert (captured - captured[0] >= np.arange(30) / 30 - 0.01).all()
        latency = np.array([x["latency_ms"] for x in lines])
        assert (latency >= 0).all() and np.median(latency) < 300, latency  # held for the other: ~500


def test_latest_policy_drops_what_the_detector_could_not_take(tmp_path):
    """A 30 fps camera, a detector taking 0.1 s a frame: under ``latest`` the frames that arrived
    while it was busy are dropped and counted (not lost: no error), the ones written are in order
    and current; under ``all`` every frame is written and the lag grows."""
    clip = make_clip(tmp_path / "cam.mp4", frames=30, width=64, height=48, bframes=False)
    out, _ = detect(tmp_path, [clip], model=Slow(), batch_size=1, realtime=True)
    lines, end = out[str(clip)], detect.report.videos[0]
    frames = [x["frame"] for x in lines]
    assert frames == sorted(set(frames)) and len(frames) + end.dropped == 30 and end.dropped >= 10, frames
    assert end.ok and end.decoded == len(frames)
    assert max(x["latency_ms"] for x in lines) < 400  # one frame's wait and one batch, not a queue

    out, _ = detect(tmp_path, [clip], model=Slow(), batch_size=1, realtime=True, live_policy="all")
    lines, end = out[str(clip)], detect.report.videos[0]
    assert [x["frame"] for x in lines] == list(range(30)) and end.dropped == 0
    assert lines[-1]["latency_ms"] > 1000  # 3 s of work for 1 s of video: the last frame waited
