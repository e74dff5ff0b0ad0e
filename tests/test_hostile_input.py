"""What a careless or hostile command line, file or model meets: nothing of the user's is overwritten,
no code runs from a model file, ``--resume`` redoes what an output does not cover, and every bad case
is one line and the right exit code, before slow work where it can be known before, with no hang."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cli_run import CLI, COMMON, detect, frames_of, one_line_error
from vidpipe.synth import make_clip, repeat_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "in.mp4", frames=6, width=64, height=48)


def kept(path: Path) -> bytes:
    return path.read_bytes()


# --- nothing of the user's is overwritten ------------------------------------------------------------

def test_save_video_into_the_inputs_folder_is_refused_before_any_work(tmp_path, clip):
    video = tmp_path / "in.mp4"
    video.write_bytes(kept(clip))
    for output, save in ((tmp_path / "o.jsonl", tmp_path), (tmp_path / "out", tmp_path)):
        r = detect(tmp_path if output.suffix == "" else video, "-o", output, "--save-video", save)
        assert r.returncode == 2 and "is the input" in one_line_error(r, str(video)), r.stderr
        assert video.read_bytes() == kept(clip)


def test_totals_that_would_replace_an_input_are_refused(tmp_path, clip):
    victim = tmp_path / "o.totals.json"  # a video named so, given as the input
    victim.write_bytes(kept(clip))
    r = detect(victim, "-o", tmp_path / "o.jsonl", "--track", "--line", "door:0,0,9,9")
    if r.returncode == 2 and "trackers" in r.stderr:
        pytest.skip("needs the tracking extra")
    assert r.returncode == 2 and "is the input" in one_line_error(r, str(victim))
    assert victim.read_bytes() == kept(clip)


@pytest.mark.parametrize("kind", ["video", "fifo", "chardev", "symlink"])
def test_an_output_path_holding_something_else_is_never_replaced(tmp_path, clip, kind):
    target = tmp_path / "o.jsonl"
    if kind == "video":
        target.write_bytes(b"someone's file")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        (tmp_path / "elsewhere.txt").write_text("mine")
        target.symlink_to(tmp_path / "elsewhere.txt")
    else:
        target = Path("/dev/null")
    before = os.lstat(target)
    r = detect(clip, "-o", target)
    assert r.returncode == 2, r.stderr
    line = one_line_error(r, str(target))
    assert ("--overwrite" in line) if kind == "video" else ("not a regular file" in line)
    after = os.lstat(target)
    assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (before.st_ino, stat.S_IFMT(before.st_mode))
    if kind == "video":
        r = detect(clip, "-o", target, "--overwrite")  # the user says so: replaced
        assert r.returncode == 0 and frames_of(target) == list(range(6))


def test_a_second_run_replaces_its_own_output_but_not_one_of_another_input(tmp_path, clip):
    other = tmp_path / "other.mp4"
    other.write_bytes(kept(clip))
    out = tmp_path / "o.jsonl"
    assert detect(clip, "-o", out).returncode == 0
    first = out.stat().st_mtime_ns
    assert detect(clip, "-o", out).returncode == 0 and out.stat().st_mtime_ns != first  # its own: run again
    r = detect(other, "-o", out)
    assert r.returncode == 2 and f"not vidpipe's output of {other}" in one_line_error(r, str(out))


def test_a_glob_through_parent_folders_writes_only_under_o(tmp_path, clip):
    base = tmp_path / "base"
    (base / "sub" / "x").mkdir(parents=True)
    (base / "a.mp4").write_bytes(kept(clip))
    out = base / "sub" / "out"
    r = detect(str(base / "sub" / "*" / ".." / ".." / "*.mp4"), "-o", str(out) + "/")
    assert r.returncode == 0, r.stderr
    written = [p for p in tmp_path.rglob("*.jsonl")]
    assert written and all(out in p.parents for p in written), written


def test_names_near_the_file_systems_limit(tmp_path, clip):
    """An output whose name fits is written (its partial file's name is cut short, not refused); one
    that cannot fit with vidpipe's suffixes is refused up front, naming it."""
    fits = tmp_path / ("v" * 236 + ".mp4")  # output 242 bytes, + ".incomplete" 253
    fits.write_bytes(kept(clip))
    out = tmp_path / "out"
    r = detect(fits, "-o", str(out) + "/")
    assert r.returncode == 0, r.stderr
    assert frames_of(out / ("v" * 236 + ".jsonl")) == list(range(6))
    long = tmp_path / ("w" * 245 + ".mp4")
    long.write_bytes(kept(clip))
    r = detect(long, "-o", str(out) + "/")
    assert r.returncode == 2 and "too long" in one_line_error(r, "w" * 245)


# --- model files are data --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def yolo_yaml(tmp_path_factory) -> Path:
    ultralytics = pytest.importorskip("ultralytics")
    src = Path(ultralytics.__file__).parent / "cfg" / "models" / "11" / "yolo11.yaml"
    path = tmp_path_factory.mktemp("yaml") / "yolo11n.yaml"
    path.write_text(src.read_text())
    return path


@pytest.mark.parametrize("case,message", [
    ("activation", "not a torch.nn activation"),
    ("layer", "not one of Ultralytics' model layers"),
    ("empty", "not an empty file"),
    ("list", "not a list"),
    ("garbage", "not valid YAML"),
    ("types", "'backbone' must be a non-empty list"),
    ("fifo", "FIFO"),
    ("zero", "a device, not a model file"),
    ("huge", "more than a model file"),
])
def test_a_model_yaml_is_read_as_data(tmp_path, clip, yolo_yaml, case, message):
    """Nothing in a YAML runs as Python without --trust-weights, and a YAML that is not a model is one
    line before any work; a FIFO or /dev/zero is never read."""
    path = tmp_path / "m.yaml"
    marker = tmp_path / "PWNED"
    text = yolo_yaml.read_text()
    if case == "activation":
        path.write_text(text + f"\nactivation: __import__('pathlib').Path({str(marker)!r}).touch() or nn.SiLU()\n")
    elif case == "layer":
        path.write_text(text.replace("Conv,", "__import__,", 1))
    elif case in ("empty", "list", "garbage", "types"):
        path.write_text({"empty": "", "list": "- 1\n- 2\n", "garbage": "{{{: :\n", "types": "nc: x\nbackbone: 3\n"}[case])
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "zero":
        path.symlink_to("/dev/zero")
    else:
        path.write_text(text + "#" * (2 << 20))
    r = detect(clip, "-o", tmp_path / "o.jsonl", "--model", path, timeout=120)
    assert r.returncode == 2 and message in one_line_error(r, str(path)), r.stderr
    assert not marker.exists()


def test_an_ssd300_state_dict_of_integers_is_one_line(tmp_path, clip):
    import torch

    from vidpipe.model import SSD300

    bad = {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in SSD300().state_dict().items()}
    torch.save(bad, tmp_path / "ints.pt")
    r = subprocess.run([*CLI, str(clip), "-o", str(tmp_path / "o.jsonl"), "--weights", str(tmp_path / "ints.pt"),
                        "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not floats" in one_line_error(r, "ints.pt")


# --- --resume knows what an output covers ----------------------------------------------------------

def test_resume_redoes_what_an_output_does_not_cover(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    a, b, c = (make_clip(src / f"{n}.mp4", frames=8, width=64, height=48, seed=i) for i, n in enumerate("abc"))
    assert detect(src, "-o", out, "--max-frames", "4").returncode == 0
    r = detect(src, "-o", out, "--resume")  # other settings (every frame): each is redone
    assert r.returncode == 0 and all(frames_of(out / f"{n}.jsonl") == list(range(8)) for n in "abc")
    (out / "a.jsonl").write_bytes(b"")  # emptied since
    make_clip(b, frames=12, width=64, height=48, seed=7)  # the input replaced by a longer one
    untouched = (out / "c.jsonl").stat().st_mtime_ns
    r = detect(src, "-o", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert frames_of(out / "a.jsonl") == list(range(8)) and frames_of(out / "b.jsonl") == list(range(12))
    assert (out / "c.jsonl").stat().st_mtime_ns == untouched  # covered: not written again
    r = detect(src, "-o", out, "--resume")
    assert "nothing left to do (3 of 3 inputs complete)" in r.stderr.splitlines()[-1]


# --- values that are not what they claim -----------------------------------------------------------

def test_the_seed_draws_other_random_ssd300_weights(tmp_path):
    from vidpipe.config import Config
    from vidpipe.models.ssd300 import SSD300Family

    def weights(seed: int):
        return SSD300Family.from_config(Config(weights="random", seed=seed, random_candidates=50)).network

    one, two = weights(1), weights(2)
    assert not all(p.equal(q) for p, q in zip(one.parameters(), two.parameters()))


@pytest.mark.parametrize("flags,message", [
    (["--classes", "٣"], "--classes"),
    (["--classes", "1,2x"], "--classes"),
    (["--track", "--line", "door:0,0,nan,9"], "finite"),
    (["--track", "--line", "door:0,0,inf,9"], "finite"),
    (["--track", "--line", "door:5,5,5,5"], "zero length"),
    (["--zone", "z:0,0,1,1,2,2"], "enclose an area"),
    (["--video-segment", "1e308"], "--video-segment"),
    (["--video-segment", "nan"], "--video-segment"),
    (["--seed", str(2**64)], "--seed"),
    (["--imgsz", str(2**20)], "--imgsz"),
    (["--decoders", "100000000"], "--decoders"),
    (["--batch-size", "100000000"], "--batch-size"),
    (["--gil-interval-ms", "1e308"], "--gil-interval-ms"),
])
def test_flags_out_of_range_are_one_line_before_any_work(tmp_path, clip, flags, message):
    r = subprocess.run([*CLI, str(clip), "-o", str(tmp_path / "o.jsonl"), *flags], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_bench_live_seconds_must_be_a_duration(value):
    r = subprocess.run([sys.executable, "-m", "vidpipe.cli", "bench", "--suite", "live", "x.mp4", "--live-seconds",
                        value], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--live-seconds" in r.stderr and "Traceback" not in r.stderr


def test_an_unreadable_folder_under_an_input_is_named_not_skipped(tmp_path, clip, monkeypatch):
    from vidpipe.errors import VidpipeError
    from vidpipe.inputs import expand_inputs

    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.mp4").write_bytes(kept(clip))
    (tmp_path / "locked").mkdir()
    real = os.scandir

    def scandir(path="."):  # as a folder of another user's without read permission answers
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(VidpipeError, match="locked: cannot read this folder"):
        expand_inputs([str(tmp_path)])


def test_a_file_that_changes_resolution_keeps_its_frames_in_order(tmp_path):
    """10 frames of one size then 14 of another, batches of 4: the first size's last two frames wait in
    a batch of their own size while the second size's fill batches; they must still come first."""
    parts = [repeat_clip(make_clip(tmp_path / f"{i}.mp4", frames=n, width=w, height=h, bframes=False, seed=i),
                         tmp_path / f"{i}.ts", 1) for i, (w, h, n) in enumerate(((64, 48, 10), (96, 64, 14)))]
    clip = tmp_path / "cam.ts"
    clip.write_bytes(b"".join(p.read_bytes() for p in parts))
    r = detect(clip, "-o", tmp_path / "o.jsonl")
    assert r.returncode == 0 and frames_of(tmp_path / "o.jsonl") == list(range(24)), r.stderr


# --- found early, said in one line -----------------------------------------------------------------

@pytest.mark.parametrize("flags,module,message", [
    (["--format", "parquet"], "pyarrow", "--format parquet needs pyarrow"),
    (["--ray"], "ray", "--ray needs Ray"),
])
def test_a_missing_extra_is_one_line_before_the_model_loads(tmp_path, clip, flags, module, message):
    script = textwrap.dedent(f"""
        import importlib.util, sys
        real = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == {module!r} else real(name, *a)
        from vidpipe.cli import main
        sys.exit(main(["detect", {str(clip)!r}, "-o", {str(tmp_path / 'o')!r}, *{flags!r}, *{COMMON!r}]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "random" not in r.stderr  # no model was built


def test_an_unwritable_output_fails_its_input_before_any_work_naming_the_output(tmp_path):
    src = tmp_path / "in"
    for name in "ab":
        (src / name).mkdir(parents=True)
        make_clip(src / name / "clip.mp4", frames=2, width=64, height=48)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b").write_text("a file where b's folder would go")
    r = detect(src, "-o", out)
    lines = r.stderr.splitlines()
    first = next(i for i, x in enumerate(lines) if "error" in x)
    assert r.returncode == 1 and f"cannot write {out / 'b' / 'clip.jsonl'}" in lines[first]
    assert first == 0  # before the model was built (its warning) or any frame
    assert frames_of(out / "a" / "clip.jsonl") == [0, 1]


def test_a_file_size_limit_mid_run_fails_the_input_in_one_line_and_leaves_no_partial(tmp_path, clip):
    """``ulimit -f`` (as a full disk: writes fail mid-run): the JSON Lines output and the annotated
    video cannot grow; the input fails in one line and no .partial file is left."""
    import resource

    assert detect(clip, "-o", tmp_path / "warm.jsonl").returncode == 0  # random weights cached beforehand

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    for extra in ([], ["--save-video", tmp_path / "v"]):
        out = tmp_path / f"o{len(extra)}.jsonl"
        r = subprocess.run([*CLI, str(clip), "-o", str(out), *map(str, extra), *COMMON], capture_output=True,
                           text=True, timeout=300, preexec_fn=limit)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "File too large" in one_line_error(r, "in.mp4")
        assert not list(tmp_path.rglob("*.partial")), list(tmp_path.rglob("*"))


@pytest.mark.parametrize("content,message", [(b"\xff\xfe bad", "not UTF-8"), (b"a.mp4\0b.mp4\n", "NUL")])
def test_a_sources_file_that_is_not_a_list_of_sources_is_one_line(tmp_path, content, message):
    listing = tmp_path / "cams.txt"
    listing.write_bytes(content)
    r = subprocess.run([*CLI, "--sources", str(listing), "-o", str(tmp_path / "out"), *COMMON], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and message in one_line_error(r, str(listing))


# --- live sources --------------------------------------------------------------------------------------

class _Stalling(BaseHTTPRequestHandler):
    """Serves a clip as a live stream; paths with "stall" stop sending after a few packets and hold
    the connection open; every connection's stream starts over, as a camera's does."""

    data: bytes = b""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        try:
            if "stall" in self.path:
                self.wfile.write(self.data[:len(self.data) // 6])
                time.sleep(600)
            self.wfile.write(self.data)
        except OSError:
            pass

    def log_message(self, *args) -> None:
        pass


def test_a_stream_that_stalls_is_given_up_after_its_reconnects_and_named(tmp_path):
    """One of three URLs keeps stalling after each reconnect: it is given up on after the read timeout
    and its reconnects (timeout and count shortened here), the run exits 1 naming it, the others are
    whole."""
    clip = repeat_clip(make_clip(tmp_path / "c.mp4", frames=60, width=64, height=48, bframes=False), tmp_path / "c.ts", 1)
    handler = type("H", (_Stalling,), {"data": clip.read_bytes()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"  # 60 frames a connection; stall.ts ~10, 3 connections
    script = textwrap.dedent(f"""
        import sys
        from vidpipe import sources
        sources.NET_TIMEOUT, sources.RECONNECTS = 1.0, 2
        from vidpipe.cli import main
        sys.exit(main(["detect", "{base}/a.ts", "{base}/stall.ts", "{base}/b.ts", "-o", {str(tmp_path / 'out')!r},
                       "--max-frames", "40", "--live-policy", "all", *{COMMON!r}]))
    """)
    t = time.time()
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    server.shutdown()
    assert time.time() - t < 200
    assert r.returncode == 1 and "gave up after 2 reconnects" in one_line_error(r, "stall.ts"), r.stderr
    assert r.stderr.splitlines()[-1].endswith(f"1 failed: {base}/stall.ts")


def test_a_cameras_credentials_appear_nowhere(tmp_path):
    clip = repeat_clip(make_clip(tmp_path / "c.mp4", frames=10, width=64, height=48, bframes=False), tmp_path / "c.ts", 1)
    handler = type("H", (_Stalling,), {"data": clip.read_bytes()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://user:s3cr3t@127.0.0.1:{server.server_address[1]}/live.ts"
    gone = "http://user:s3cr3t@127.0.0.1:1/nothing.ts"  # refused: its error line names it
    out = tmp_path / "out"
    r = subprocess.run([*CLI, url, gone, "-o", str(out), "--max-frames", "5", "--live-policy", "all", *COMMON,
                        "--allow-failures"], capture_output=True, text=True, timeout=240)
    server.shutdown()
    assert r.returncode == 0 and "nothing.ts" in r.stderr, r.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and out in p.parents]
    assert written and all("s3cr3t" not in p.name and b"s3cr3t" not in p.read_bytes() for p in written), written
    assert "s3cr3t" not in r.stderr and "s3cr3t" not in r.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("flags", [["--formatters", "2"], ["--procs-per-device", "2"]])
def test_ctrl_c_of_a_run_with_child_processes_is_not_a_traceback(tmp_path, flags):
    from test_output_safety import _alive, _descendants

    clip = make_clip(tmp_path / "cam.mp4", frames=30, width=64, height=48, bframes=False)
    p = subprocess.Popen([*CLI, str(clip), "-o", str(tmp_path / "out") + "/", "--realtime", "--loop", *flags, *COMMON],
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "out").glob("*.partial")):
        time.sleep(0.2)
    children = _descendants(p.pid)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode in (0, 130) and "Traceback" not in err, err
    time.sleep(1.0)
    assert children and [c for c in children if _alive(c)] == []


# --- the Python API -------------------------------------------------------------------------------------

def test_the_api_takes_a_path_and_says_what_is_wrong_with_its_arguments(tmp_path, clip):
    from vidpipe import Config, Detector
    from vidpipe.config import ConfigError
    from vidpipe.engine import iter_results, run
    from vidpipe.sinks import open_sink

    det = Detector(Config(device="cpu", weights="random", batch_size=4))
    out = tmp_path / "o.jsonl"
    report = run(det, str(clip), lambda v: open_sink("jsonl", out, v.path, v.width, v.height))
    assert report.frames == 6 and frames_of(out) == list(range(6))
    with pytest.raises(TypeError, match="expected a vidpipe.Detector, got str"):
        run("ssd300", [str(clip)], lambda v: None)
    with pytest.raises(TypeError, match="expected a video path or URL"):
        run(det, 3, lambda v: None)
    with pytest.raises(ConfigError, match="model must be text"):
        Config(model=None)
    with pytest.raises(TypeError, match="Detector takes a vidpipe.Config"):
        Detector("yolo11m.pt")
    with pytest.raises(ValueError, match="given twice"):
        list(iter_results(det, [str(clip), str(clip)]))
