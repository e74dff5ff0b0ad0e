"""Live sources spread over worker processes (``--procs-per-device`` with live sources): each source
runs in one worker, workers run side by side in their own processes, every source's output is
complete and in order, and a worker that dies hands its sources to the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest

from vidpipe import Config
from vidpipe.engine import LiveSources
from vidpipe.livescale import run_live_processes, until_ended
from vidpipe.scale import Assignment
from vidpipe.synth import make_clip

CPU = [Assignment("cpu", "", "cpu")]


def run_until_ended(cfg: Config, paths: list[str], targets: dict, per_device: int, on_message=None, devices=CPU):
    """As ``vidpipe detect INPUT... --procs-per-device N`` runs live inputs: the set closes once
    every input's output is finished."""
    sources, on_video = until_ended(paths)
    return run_live_processes(cfg, sources, "jsonl", targets.__getitem__, devices, per_device, on_video=on_video,
                              on_message=on_message)


def frames(path) -> list[int]:
    return [json.loads(x)["frame"] for x in path.read_text().splitlines()]


def test_sources_run_in_their_own_worker_processes(tmp_path):
    clips = [make_clip(tmp_path / f"cam{i}.mp4", frames=6, width=64, height=48, bframes=False, seed=i)
             for i in range(4)]
    targets = {str(c): tmp_path / f"{c.stem}.jsonl" for c in clips}
    pids, ran_on = {}, defaultdict(set)

    def on_message(kind, worker, payload) -> None:
        if kind == "hello":
            pids[worker] = payload
        elif kind == "video":
            ran_on[worker].add(payload["path"])

    cfg = Config(device="cpu", weights="random", batch_size=2, realtime=True, max_frames=6, live_policy="all")
    report = run_until_ended(cfg, list(targets), targets, 2, on_message)
    assert not report.failed and report.frames == 24, report
    # Two processes, neither this one, two sources each (the one with the fewest gets the next).
    assert len(set(pids.values()) - {os.getpid()}) == 2, pids
    assert sorted(map(len, ran_on.values())) == [2, 2] and set().union(*ran_on.values()) == set(targets), ran_on
    for target in targets.values():
        assert frames(target) == list(range(6)), target


def test_a_dead_worker_hands_its_sources_to_the_others(tmp_path):
    clips = [make_clip(tmp_path / f"cam{i}.mp4", frames=6, width=64, height=48, bframes=False, seed=i)
             for i in range(2)]
    targets = {str(c): tmp_path / f"{c.stem}.jsonl" for c in clips}
    pids, events = {}, []

    def on_message(kind, worker, payload) -> None:
        events.append((kind, worker))
        if kind == "hello":
            pids[worker] = payload
        elif kind == "frames" and worker == 0 and 0 in pids:  # worker 0 has started its source: kill it
            os.kill(pids.pop(0), signal.SIGKILL)

    cfg = Config(device="cpu", weights="random", batch_size=2, realtime=True, max_frames=6, live_policy="all")
    # In a thread, so that a parent still waiting on the dead worker fails the test instead of hanging it.
    ran: dict = {}
    run = threading.Thread(daemon=True, target=lambda: ran.update(
        report=run_until_ended(cfg, list(targets), targets, 2, on_message)))
    run.start()
    run.join(300)
    assert not run.is_alive(), f"the run did not end after its worker was killed: {events}"
    report = ran["report"]
    assert ("dead", 0) in events, events
    assert not report.failed and {v.path for v in report.videos} == set(targets), report
    for target in targets.values():  # the killed worker's source ran again, whole, on the other
        assert frames(target) == list(range(6)), target


def test_cli_live_inputs_over_processes(tmp_path):
    """vidpipe detect CAM... --realtime --procs-per-device 2: one output per input, every frame in
    order (--live-policy all), exit 0."""
    clips = [make_clip(tmp_path / f"cam{i}.mp4", frames=5, width=64, height=48, bframes=False, seed=i)
             for i in range(3)]
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "vidpipe.cli", "detect", *map(str, clips), "-o", f"{out}/",
                        "--weights", "random", "--device", "cpu", "--batch-size", "2", "--realtime",
                        "--live-policy", "all", "--procs-per-device", "2"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "15 frames from 3 of 3 inputs" in r.stderr, r.stderr
    for c in clips:
        assert frames(out / f"{c.stem}.jsonl") == list(range(5))


@pytest.mark.nvdec
def test_cameras_spread_over_processes_on_one_gpu(tmp_path):
    """Two engines on one GPU, NVDEC decoding in each: both compute on that GPU, every frame of every
    camera written once, in order."""
    from vidpipe.scale import parse_devices

    gpu = parse_devices("0")
    clips = [make_clip(tmp_path / f"cam{i}.mp4", frames=30, width=320, height=240, bframes=False, seed=i)
             for i in range(4)]
    targets = {str(c): tmp_path / f"{c.stem}.jsonl" for c in clips}
    messages = []
    cfg = Config(weights="random", batch_size=4, compile="off", realtime=True, max_frames=60, loop=True,
                 live_policy="all")
    report = run_until_ended(cfg, list(targets), targets, 2, lambda *m: messages.append(m), gpu)
    assert not report.failed and report.frames == 240, report
    assert sorted(p for kind, _, p in messages if kind == "device") == [gpu[0].visible] * 2, messages
    assert len({p for kind, _, p in messages if kind == "hello"}) == 2
    for target in targets.values():
        assert frames(target) == list(range(60)), target


class Control(list):
    put = list.append


def test_dispatch_balances_moves_and_reports_what_no_worker_can_run(tmp_path):
    """The parent's bookkeeping alone (no processes): a source goes to the worker running the fewest,
    a removed one is removed from its worker, a failed worker's running sources go to the others
    (not those whose output it finished), and with no worker left the rest are reported."""
    import threading

    from vidpipe.livescale import _Dispatch

    controls = [Control(), Control()]
    sources = LiveSources(["a", "b", "c"])
    names = iter(range(100))
    dispatch = _Dispatch(sources, controls, lambda p: tmp_path / f"{p}-{next(names)}")
    thread = threading.Thread(target=dispatch.run, daemon=True)
    thread.start()

    def told() -> list[list[tuple]]:
        return [[m[:2] for m in c] for c in controls]

    def soon(check) -> bool:  # within a few of the dispatcher's looks (POLL apart)
        t = time.time() + 5
        while not check() and time.time() < t:
            time.sleep(0.05)
        return check()

    assert soon(lambda: told() == [[("add", "a"), ("add", "c")], [("add", "b")]]), told()
    dispatch.ended("a")  # a's and c's outputs are finished: worker 0 runs nothing now
    dispatch.ended("c")
    sources.add("d")
    assert soon(lambda: told()[0] == [("add", "a"), ("add", "c"), ("add", "d")]), told()
    sources.remove("a")
    assert soon(lambda: told()[0][-1] == ("remove", "a")), told()
    assert not dispatch.lost(0)  # d moves to worker 1; nothing of c (finished) runs again
    assert soon(lambda: told()[1] == [("add", "b"), ("add", "d")]), told()
    assert dispatch.lost(1)  # no worker left
    sources.add("e")
    assert soon(lambda: sorted(dispatch.orphans()) == ["b", "d", "e"]), dispatch.orphans()
    time.sleep(0.3)
    assert len(told()[0]) == 4 and len(told()[1]) == 2  # nothing more to the failed workers
    sources.close()
    thread.join(5)
    assert not thread.is_alive() and controls[0][-1] is None and controls[1][-1] is None


def test_auto_processes_follow_the_cameras_and_the_machine(monkeypatch):
    """--procs-per-device auto: one engine per CAMERAS_PER_PROCESS cameras, no more than a GPU shares
    well nor than the cores allow; one on a CPU, where there is no GPU to share."""
    from vidpipe import livescale

    monkeypatch.setattr(livescale.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    per = livescale.CAMERAS_PER_PROCESS
    assert [livescale.processes_for(n, "cuda") for n in (1, per, per + 1, 3 * per)] == [1, 1, 2, 3]
    assert livescale.processes_for(100 * per, "cuda") == livescale.PROCESSES_PER_GPU == 4
    monkeypatch.setattr(livescale.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert livescale.processes_for(100 * per, "cuda") == 4 // livescale.CORES_PER_PROCESS
    assert livescale.processes_for(100 * per, "cpu") == 1
