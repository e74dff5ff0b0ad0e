"""vidpipe bench on the CPU: the pipeline suite's table, its one-command column from a command that ran."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

import pytest

from vidpipe.synth import make_clip


def test_pipeline_suite_times_the_same_configuration_as_one_command(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=10, width=64, height=48)
    results = tmp_path / "results.md"
    r = subprocess.run([sys.executable, "-m", "vidpipe.cli", "bench", str(clip), "--weights", "random", "--device",
                        "cpu", "--repeats", "1", "--max-frames", "3", "--batch-size", "1", "--results", str(results)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = results.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| input"))
    row = next(line for line in text.splitlines() if line.startswith("| clip.mp4"))
    assert header.count("|") == row.count("|") and "(d) one command" in header
    wall, beyond = map(float, re.fullmatch(r"([\d.]+) \((-?[\d.]+)\)", row.strip("| ").split(" | ")[-1]).groups())
    assert wall > 0 and beyond < wall  # (wall - the import, measured apart: negative when the import varies)
    # The command got the options the bench was given, and ran: its output holds the frames asked for.
    assert "`vidpipe detect VIDEO -o OUT --weights random --device cpu --batch-size 1 --max-frames 3`" in text
    assert "the command wrote 3 frames" in text
    assert f"cpu_cores {os.cpu_count()}, kernel {platform.release()}" in text  # the machine, as figures need


def test_startup_suite_takes_each_run_beside_the_import_timed_just_before_it(tmp_path, monkeypatch):
    """'wall - import' is the median of each run's wall minus a bare import timed right before it, not
    the median wall minus an import measured apart (the two differ when the machine's imports drift)."""
    from vidpipe import bench
    from vidpipe.cli import build_parser

    clip = make_clip(tmp_path / "clip.mp4", frames=4, width=64, height=48)
    imports = iter([9.0, 9.0, 9.0,  # the three before the runs
                    9.0,  # beside the first run
                    9.0, 11.0, 9.5,  # beside the three second runs
                    9.0])  # beside the folder run
    exits = iter([11.0, 10.2, 12.3, 10.6, 20.0])
    stamps = dict(cli=0.1, imports=3.0, built=8.0, cuda=8.0, model=8.4, opened=8.5, decoded=8.6, warmed=9.1,
                  captured=9.2, issued=9.2, written=9.3, done=9.8)
    monkeypatch.setattr(bench, "_bare_import", lambda: next(imports))
    monkeypatch.setattr(bench, "_one_command", lambda argv, env, timeline: {**stamps, "exit": next(exits)})
    monkeypatch.setattr(bench, "_background_compile", lambda cache: None)
    results = tmp_path / "results.md"
    bench.main(build_parser().parse_args(["bench", "--suite", "startup", str(clip), "--weights", "random",
                                          "--device", "cpu", "--repeats", "3", "--results", str(results)]))
    rows = {r.split(" | ")[2]: r.split(" | ") for r in results.read_text().splitlines() if r.startswith("| clip.mp4")}
    assert rows["second"][3:5] == ["10.60", "1.20"]  # median wall; median of 1.2, 1.3, 1.1 (not 10.6 - 9.0)
    assert rows["first (empty caches)"][3:5] == ["11.00", "2.00"]
    assert "the bare imports beside them 9.00-11.00 s" in results.read_text()


def test_writer_only_writes_the_load_it_is_given(tmp_path):
    """(e) the host side alone: the run's writer takes every frame, each with the detections per frame
    measured, into a JSON Lines file (what the figure is the rate of)."""
    import json
    from fractions import Fraction

    from vidpipe import Config
    from vidpipe.bench import writer_only
    from vidpipe.detector import Detector
    from vidpipe.sources import VideoInfo

    det = Detector(Config(device="cpu", weights="random", batch_size=8))
    info = VideoInfo("cam.mp4", 1920, 1080, 900, 30.0, "h264", Fraction(1, 30))
    out = tmp_path / "w.jsonl"
    assert writer_only(det, info, 37.4, out, 100) > 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(100))
    assert {len(x["detections"]) for x in lines} == {37}
    assert all(0 <= d["box"][0] < d["box"][2] <= 1920 for x in lines for d in x["detections"])


def test_thread_stacks_tell_a_busy_thread_from_a_waiting_one():
    """ThreadStacks (behind --live-profile): a thread computing is found in its function with about a
    core busy; threads sleeping are found where they sleep, with no CPU."""
    import threading
    import time

    from vidpipe.profiling import ThreadStacks

    stop = threading.Event()

    def spinning():
        while not stop.is_set():
            sum(range(1000))

    def napping():
        while not stop.is_set():
            time.sleep(0.01)

    threads = [threading.Thread(target=spinning, name="spin-1"), threading.Thread(target=napping, name="nap-1"),
               threading.Thread(target=napping, name="nap-2")]
    for t in threads:
        t.start()
    try:
        with ThreadStacks() as stacks:
            time.sleep(1.0)
    finally:
        stop.set()
    lines = {line.split(" (")[0]: line for line in stacks.describe()}
    # Busy, not exactly one core: the test shares a 2-core CI machine with whatever else runs.
    spin = r"spin \(1 threads, 0\.[2-9]\d cores\): ([89]\d|100)% test_bench.py spinning"
    assert re.search(spin, lines["spin"]), lines
    assert re.search(r"nap \(2 threads, 0\.0\d cores\): 1\d\d% test_bench.py napping", lines["nap"]), lines


def test_live_suite_profiles_its_threads_when_asked(tmp_path):
    """--live-profile: under the live table, where the run's threads were (its decode threads among them)."""
    clip = make_clip(tmp_path / "clip.mp4", frames=30, width=64, height=48)
    results = tmp_path / "results.md"
    r = subprocess.run([sys.executable, "-m", "vidpipe.cli", "bench", "--suite", "live", str(clip), "--weights",
                        "random", "--device", "cpu", "--live-streams", "1", "--live-seconds", "2", "--live-profile",
                        "--batch-size", "1", "--results", str(results)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = results.read_text().splitlines()
    note = next(line for line in text if line.startswith("Threads, 1 streams"))
    assert re.search(r"vidpipe-decode \(\d+ threads, [\d.]+ cores\): \d+% engine/decode.py:\d+ ", note), note
    # The live rate beside the same input's as a file: the stream's steady rate and its share of that.
    file_rate = float(re.search(r"clip.mp4 as a file .*: ([\d,]+) frames/s", "\n".join(text))[1].replace(",", ""))
    row = next(line for line in text if line.startswith("| clip.mp4 |")).split(" | ")
    taken, share = re.fullmatch(r"([\d,]+) \(([\d.]+)\)", row[7]).groups()
    assert abs(float(share) - float(taken.replace(",", "")) / file_rate) < 0.01 + 1 / file_rate
    assert abs(float(taken.replace(",", "")) - float(row[8].split(" / ")[1])) <= 1  # one stream: its rate


@pytest.mark.nvdec
def test_decode_only_decodes_with_the_runs_stream_decoder(tmp_path, monkeypatch):
    """The decode-only ceiling of a file SimpleDecoder cannot take (open GOPs) is the decoder the run
    would use: every frame through PyNvVideoCodec's packets by default, none with FFmpeg's decoder."""
    import torch

    from vidpipe.bench import decode_only
    from vidpipe.config import Config
    from vidpipe.runtime import DeviceRuntime
    from vidpipe.sources import NvdecStreamSource, ffmpeg_nvdec_available

    path = str(make_clip(tmp_path / "h.mp4", frames=36, width=192, height=144, codec="libx265", gop=12))
    calls, packet = [], NvdecStreamSource._packet
    monkeypatch.setattr(NvdecStreamSource, "_packet", lambda *a: calls.append(packet(*a)) or calls[-1])
    runtime = DeviceRuntime(torch.device("cuda"))
    decoders = ["pynvvideocodec", "auto"] + (["ffmpeg"] if ffmpeg_nvdec_available() else [])
    for stream_decoder in decoders:
        calls.clear()
        cfg = Config(decoder="nvdec", stream_decoder=stream_decoder)
        assert decode_only([path], cfg, runtime) == 36
        # Parts cut at keyframes decode a few frames twice (leading pictures): at least every frame.
        assert (sum(map(len, calls)) >= 36) == (stream_decoder != "ffmpeg"), stream_decoder
