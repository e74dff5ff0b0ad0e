"""Tracking (--track): ByteTrack ids from the trackers package, fed in frame order by the engine.
Checked against the library run directly on the same detections (identical ids), on fresh random
trajectories and end to end on a clip with a moving object; track ids in every sink; supervision
interop."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("trackers")
import supervision as sv  # noqa: E402
from trackers import ByteTrackTracker  # noqa: E402

from drawn_clip import encode_rgb  # noqa: E402

import vidpipe  # noqa: E402
from vidpipe import Config, Detector  # noqa: E402
from vidpipe.engine import run  # noqa: E402
from vidpipe.models.boxes import BoxesFamily  # noqa: E402
from vidpipe.sinks import open_sink  # noqa: E402
from vidpipe.synth import trajectories  # noqa: E402
from vidpipe.track import Tracker  # noqa: E402


@pytest.mark.parametrize("frames, objects", [(40, 6), (240, 25)])
def test_ids_are_the_librarys_on_random_trajectories(frames, objects):
    """vidpipe's batched ByteTrack against the library's own, frame by frame: the same ids, in the
    same order (ties in score too), on fresh random trajectories."""
    seed = int.from_bytes(os.urandom(4), "little")
    frames = trajectories(seed, frames, objects)
    ours, theirs = Tracker(30.0), ByteTrackTracker(frame_rate=30.0)
    d = max(len(s) for _, _, s in frames)
    confirmed = 0
    for start in range(0, len(frames), 8):  # batches of 8 frames, padded as the engine's are
        chunk = frames[start:start + 8]
        pad = lambda a, i, shape: np.concatenate([a, np.zeros((d - len(a), *shape), a.dtype)])  # noqa: E731
        boxes = np.stack([pad(b, 0, (4,)) for b, _, _ in chunk])
        labels = np.stack([pad(lab, 0, ()) for _, lab, _ in chunk])
        scores = np.stack([pad(s, 0, ()) for _, _, s in chunk])
        counts = np.array([len(s) for _, _, s in chunk])
        b, lab, s, c, ids = ours.batch(boxes, labels, scores, counts)
        for i, (fb, fl, fs) in enumerate(chunk):
            ref = theirs.update(sv.Detections(xyxy=fb, confidence=fs, class_id=fl))
            order = np.argsort(-ref.confidence, kind="stable")
            assert c[i] == len(fs), seed
            assert np.array_equal(ids[i, :c[i]], ref.tracker_id[order]), (seed, start + i)
            assert np.array_equal(b[i, :c[i]], ref.xyxy[order].astype(np.float32)), seed
            assert np.array_equal(lab[i, :c[i]], ref.class_id[order]), seed
            assert np.all(np.diff(s[i, :c[i]]) <= 0), seed  # best first
        assert len(ours.ids) == len(theirs.tracks), seed  # the same tracks alive
        # The same Kalman states, bit for bit: box, velocity and every coordinate's covariance.
        kfs = [t.state_estimator.kf for t in theirs.tracks]
        state = np.array([kf.state[:, 0] for kf in kfs]).reshape(-1, 8)
        assert np.array_equal(ours.box, state[:, :4]) and np.array_equal(ours.vel, state[:, 4:]), (seed, start)
        for c in range(4):
            at = [c, c, c + 4, c + 4], [c, c + 4, c, c + 4]  # pp, pv, vp, vv of coordinate c
            cov = np.array([kf.state_covariance[at] for kf in kfs]).reshape(-1, 4)
            assert np.array_equal(ours.cov, cov.T), (seed, start, c)
        confirmed += int((ids >= 0).sum())
    assert confirmed, seed


def moving_square(path, frames: int = 12, width: int = 96, height: int = 64):
    """A white 12x12 square moving 3 px right per frame on black, and a grey one standing still."""
    images = [np.zeros((height, width, 3), np.uint8) for _ in range(frames)]
    for f, img in enumerate(images):
        img[20:32, 10 + 3 * f:22 + 3 * f] = 255
        img[40:52, 70:82] = 128
    return encode_rgb(path, images, {"crf": "10"})


class SquareFinder(torch.nn.Module):
    """Boxes of the bright (> 0.75) and of the mid-grey (0.3-0.7) pixels, scores 0.9 and 0.8."""

    def forward(self, x: torch.Tensor):
        y = x.float().mean(1)
        boxes = []
        for mask in (y > 0.75, (y > 0.3) & (y < 0.7)):
            rows, cols = mask.any(2), mask.any(1)
            idx_r = torch.arange(rows.shape[1], device=x.device)
            idx_c = torch.arange(cols.shape[1], device=x.device)
            y1 = torch.where(rows, idx_r, rows.shape[1]).amin(1)
            y2 = torch.where(rows, idx_r + 1, 0).amax(1)
            x1 = torch.where(cols, idx_c, cols.shape[1]).amin(1)
            x2 = torch.where(cols, idx_c + 1, 0).amax(1)
            boxes.append(torch.stack([x1, y1, x2, y2], 1).float())
        n = x.shape[0]
        scores = torch.tensor([0.9, 0.8], device=x.device).expand(n, -1)
        return torch.stack(boxes, 1), scores, torch.zeros(n, 2, dtype=torch.long, device=x.device)


def refuse(*args):
    raise AssertionError("tracked in the writer thread")


@pytest.mark.parametrize("fmt", ["jsonl", "coco", "parquet"])
def test_a_run_with_track_writes_the_librarys_ids(tmp_path, fmt, monkeypatch):
    clip = moving_square(tmp_path / "m.mp4")
    if fmt == "jsonl":  # the formatting processes track (spawned: they import this module afresh)
        monkeypatch.setattr(Tracker, "batch", refuse)
    family = BoxesFamily(SquareFinder(), ["square"], score_threshold=0.5, max_detections=2)
    # JSON Lines through the formatting processes (as on a GPU), the others in the writer thread.
    det = Detector(Config(device="cpu", batch_size=4, track=True, formatters=2 if fmt == "jsonl" else 0),
                   model=family)
    out = tmp_path / f"o.{fmt}"
    report = run(det, [str(clip)], lambda v: open_sink(fmt, out, v.path, v.width, v.height, det.classes, True))
    assert report.frames == 12 and not report.failed
    if fmt == "jsonl":
        rows = [(x["frame"], d["box"], d["score"], d["track_id"]) for x in map(json.loads, out.read_text().splitlines())
                for d in x["detections"]]
    elif fmt == "coco":
        rows = [(d["image_id"], [d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]],
                 d["score"], d["track_id"]) for d in json.loads(out.read_text())]
    else:
        import pyarrow.parquet as pq

        t = pq.read_table(out).to_pydict()
        rows = [(f, [a, b, c, d], s, i) for f, a, b, c, d, s, i in
                zip(t["frame"], t["x1"], t["y1"], t["x2"], t["y2"], t["score"], t["track_id"])]
    # The library on the same detections, frame by frame.
    theirs = ByteTrackTracker(frame_rate=30.0)
    for f in range(12):
        mine = [r for r in rows if r[0] == f]
        ref = theirs.update(sv.Detections(xyxy=np.array([r[1] for r in mine], np.float32),
                                          confidence=np.array([r[2] for r in mine], np.float32),
                                          class_id=np.zeros(len(mine), int)))
        assert sorted(r[3] for r in mine) == sorted(ref.tracker_id.tolist()), f
    if fmt == "jsonl":  # tracked in a formatting process: this process's tracker never ran
        assert Tracker.batch is refuse
    moving = {r[3] for r in rows if r[0] >= 1 and r[2] > 0.85}
    still = {r[3] for r in rows if r[0] >= 1 and r[2] < 0.85}
    assert len(moving) == len(still) == 1 and moving != still and min(moving | still) >= 0  # one id each


def test_python_api_tracks_and_converts_to_supervision(tmp_path):
    clip = moving_square(tmp_path / "m.mp4")
    family = BoxesFamily(SquareFinder(), ["square"], score_threshold=0.5, max_detections=2)
    results = list(vidpipe.detect(clip, Detector(Config(device="cpu", batch_size=4, track=True), model=family)))
    assert [r.frame for r in results] == list(range(12))
    assert len({int(r.track_ids[0]) for r in results[1:]}) == 1 and results[5].track_ids[0] >= 0
    d = results[5].to_supervision()
    assert np.array_equal(d.xyxy, results[5].boxes) and np.array_equal(d.tracker_id, results[5].track_ids)
    assert np.array_equal(d.confidence, results[5].scores) and list(d.data["class_name"]) == ["square", "square"]
    untracked = list(vidpipe.detect(clip, Detector(Config(device="cpu", batch_size=4), model=family)))
    assert untracked[5].track_ids is None and untracked[5].to_supervision().tracker_id is None


def test_missing_trackers_is_one_line(tmp_path):
    script = f"""
import sys
sys.modules["trackers"] = None
from vidpipe.cli import main
sys.exit(main(["detect", {str(moving_square(tmp_path / 'm.mp4'))!r}, "-o", {str(tmp_path / 'o.jsonl')!r},
               "--weights", "random", "--device", "cpu", "--track"]))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and 'pip install "vidpipe[track]"' in r.stderr and "Traceback" not in r.stderr


def test_a_tracked_file_leaves_the_tracking_library_to_the_formatting_processes(tmp_path):
    """With formatting processes the run's own process never imports the tracking library (its import
    took over a second of a tracked run's start): the lanes track, and the ids are written."""
    script = f"""
import json, sys
from vidpipe.cli import main
code = main(["detect", {str(moving_square(tmp_path / 'm.mp4'))!r}, "-o", {str(tmp_path / 'o.jsonl')!r},
             "--weights", "random", "--device", "cpu", "--track", "--formatters", "2"])
print(json.dumps([code, "trackers" in sys.modules]))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert json.loads(r.stdout.splitlines()[-1]) == [0, False], r.stderr
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and any(d["track_id"] >= 0 for x in lines for d in x["detections"])


def test_batches_that_land_while_the_lane_tracks_go_to_it_together(tmp_path, monkeypatch):
    """Batches put faster than the lanes track them go in groups (fewer tasks than batches), and the
    output is what tracking each batch in turn gives: every frame once, in order, the same ids."""
    from fractions import Fraction

    from vidpipe.engine.items import BatchResult, VideoEnd, VideoStart
    from vidpipe.engine.write import FormatPool, Writer
    from vidpipe.postprocess import Detections
    from vidpipe.sinks import JsonlSink
    from vidpipe.sources import VideoInfo

    seed = int.from_bytes(os.urandom(4), "little")
    frames, n = trajectories(seed, 240, 20), 8
    d = max(len(s) for _, _, s in frames)
    pad = lambda a, shape: np.concatenate([a, np.zeros((d - len(a), *shape), a.dtype)])  # noqa: E731
    chunks = [frames[i:i + n] for i in range(0, len(frames), n)]
    batches = [(*(np.stack(x) for x in zip(*[(pad(b, (4,)), pad(lab, ()), pad(s, ())) for b, lab, s in chunk])),
                np.array([len(s) for _, _, s in chunk])) for chunk in chunks]
    sent = []
    track_text = FormatPool.track_text
    monkeypatch.setattr(FormatPool, "track_text", lambda self, *a: sent.append(a[4]) or track_text(self, *a))
    out = tmp_path / "o.jsonl"
    info = VideoInfo(str(out), 640, 480, len(frames), 30.0, "h264", Fraction(1, 30))
    writer = Writer(lambda i: JsonlSink(out, i.path, i.width, i.height), True, None, None, formatters=2, track=True)
    writer.put(VideoStart(info))
    for k, (b, lab, s, c) in enumerate(batches):
        det = Detections(*(torch.from_numpy(a) for a in (b, lab, s, c)))
        writer.put(BatchResult(info, list(range(k * n, (k + 1) * n)), [0.0] * n, det, None))
    writer.put(VideoEnd(info.path, len(frames), len(frames), info=info))
    report = writer.finish(True)
    assert report.frames == len(frames) and not report.failed
    assert sum(sent, []) == [n] * len(batches) and len(sent) <= len(batches) // 2, (seed, sent)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(len(frames)))
    ours = Tracker(30.0)
    for k, arrays in enumerate(batches):
        *_, c, ids = ours.batch(*arrays)
        for i in range(n):
            assert [x["track_id"] for x in lines[k * n + i]["detections"]] == ids[i, :c[i]].tolist(), (seed, k, i)
