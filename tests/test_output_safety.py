"""Nothing lost, nothing silently wrong: outputs never overwrite inputs or each other, output names
are a function of the input alone, and every bad case is one line for its input while the others
run on (one test per case found under fault)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_run import CLI, COMMON, detect, frames_of, one_line_error
from vidpipe.sinks import OutputConflict, open_sink
from vidpipe.synth import make_clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return [make_clip(root / f"{name}.mp4", frames=3 + i, width=64, height=48, seed=i) for i, name in enumerate("abc")]


@pytest.mark.parametrize("fmt", ["jsonl", "coco"])
@pytest.mark.parametrize("how", ["same path", "other spelling", "hard link"])
def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path, clips, fmt, how):
    victim = tmp_path / "victim.mp4"
    victim.write_bytes(clips[0].read_bytes())
    before = victim.read_bytes()
    out = {"same path": victim, "other spelling": tmp_path / "." / ".." / tmp_path.name / "victim.mp4",
           "hard link": tmp_path / "link.json"}[how]
    if how == "hard link":
        os.link(victim, out)
    r = detect(victim, "-o", out, "--format", fmt)
    assert r.returncode == 2
    assert "is the input" in one_line_error(r, str(victim))
    assert victim.read_bytes() == before


def test_two_runs_on_one_output_never_destroy_each_others_result(tmp_path):
    """Each run writes its own partial file; the run that finishes second does not replace the
    output the other finished after it started, and keeps its own result."""
    target = tmp_path / "out.jsonl"
    rows = (np.zeros((1, 1, 4), np.float32), np.ones((1, 1), np.int64), np.ones((1, 1), np.float32), np.array([1]))
    a = open_sink("jsonl", target, "a.mp4", 10, 10)
    b = open_sink("jsonl", target, "b.mp4", 10, 10)
    assert a.partial != b.partial
    a.write([0], [0.0], *rows)
    b.write([0], [0.0], *rows)
    b.close(complete=True)
    with pytest.raises(OutputConflict, match="written by another run"):
        a.close(complete=True)
    assert '"video": "b.mp4"' in target.read_text()
    assert '"video": "a.mp4"' in a.partial.read_text()
    c = open_sink("jsonl", target, "c.mp4", 10, 10)  # a run that started after b finished replaces it
    c.write([0], [0.0], *rows)
    c.close(complete=True)
    assert '"video": "c.mp4"' in target.read_text()


def test_two_cli_runs_on_one_output_both_report_truthfully(tmp_path, clips):
    out = tmp_path / "out.jsonl"
    runs = [subprocess.Popen([*CLI, str(c), "-o", str(out), *COMMON], stderr=subprocess.PIPE, text=True)
            for c in clips[:2]]
    codes = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    assert all("Traceback" not in err for _, err in codes)
    winners = [i for i, (rc, _) in enumerate(codes) if rc == 0]
    assert winners, codes  # at least one finished, and the file holds a winner's detections
    names = {json.loads(x)["video"] for x in out.read_text().splitlines()}
    assert names in [{str(clips[i])} for i in winners]
    for rc, err in codes:  # a loser says so
        assert rc == 0 or "written by another run" in err


def test_output_names_follow_the_input_alone_across_resumes(tmp_path):
    """Adding a file whose name sorts first (and repeats another's) changes no other output."""
    src, out, clean = tmp_path / "in", tmp_path / "out", tmp_path / "clean"
    for k, sub in enumerate("bc"):
        (src / sub).mkdir(parents=True)
        make_clip(src / sub / "clip.mp4", frames=2 + k, width=64, height=48, seed=k)
    r = detect(src, "-o", out)
    assert r.returncode == 0, r.stderr
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")}
    (src / "a").mkdir()
    make_clip(src / "a" / "clip.mp4", frames=4, width=64, height=48, seed=7)
    r = detect(src, "-o", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # b and c not written again
    r = detect(src, "-o", clean)
    assert r.returncode == 0, r.stderr
    got = {p.relative_to(out): p.read_text() for p in out.rglob("*.jsonl")}
    want = {p.relative_to(clean): p.read_text() for p in clean.rglob("*.jsonl")}
    assert set(got) == {Path("a/clip.jsonl"), Path("b/clip.jsonl"), Path("c/clip.jsonl")}
    assert got == want
    assert frames_of(out / "a" / "clip.jsonl") == [0, 1, 2, 3]


def test_files_named_alike_in_two_folders_are_an_error_not_a_rename(tmp_path, clips):
    for d in "xy":
        (tmp_path / d).mkdir()
        (tmp_path / d / "clip.mp4").write_bytes(clips[0].read_bytes())
    r = detect(tmp_path / "x" / "clip.mp4", tmp_path / "y" / "clip.mp4", "-o", tmp_path / "out")
    assert r.returncode == 2 and "would both write" in one_line_error(r, "clip.mp4")


def test_one_file_under_two_spellings_is_processed_once(tmp_path, clips):
    r = detect(clips[0], Path(clips[0].parent, ".", clips[0].name), "-o", f"{tmp_path / 'out'}/")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "out").iterdir() if p.suffix != ".vidpipe"] == ["a.jsonl"]
    assert "from 1 of 1 inputs" in r.stderr


def test_several_inputs_into_one_file_name_is_an_error(tmp_path, clips):
    r = detect(*clips[:2], "-o", tmp_path / "out" / "one.jsonl")
    assert r.returncode == 2 and "need a directory" in one_line_error(r, "one.jsonl")
    assert not (tmp_path / "out").exists()


def test_an_output_that_cannot_be_written_fails_that_input_alone(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for k, sub in enumerate("abc"):
        (src / sub).mkdir(parents=True)
        make_clip(src / sub / "clip.mp4", frames=2, width=64, height=48, seed=k)
    out.mkdir()
    (out / "b").write_text("a file where b's output folder would go")
    r = detect(src, "-o", out)
    assert r.returncode == 1
    line = one_line_error(r, "b/clip.mp4")
    assert "cannot write" in line
    assert r.stderr.splitlines()[-1].endswith(f"1 failed: {src / 'b' / 'clip.mp4'}")
    assert frames_of(out / "a" / "clip.jsonl") == [0, 1] and frames_of(out / "c" / "clip.jsonl") == [0, 1]


def test_an_output_under_proc_is_one_line(tmp_path, clips):
    r = detect(clips[0], "-o", "/proc/vidpipe-test.jsonl")
    assert r.returncode == 1 and "cannot write" in one_line_error(r, "a.mp4")


def test_disk_full_fails_that_input_and_leaves_no_partial(tmp_path):
    """A full disk (ENOSPC injected at the sink's write, as a small tmpfs would raise it)."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for k, name in enumerate("abc"):
        make_clip(src / f"{name}.mp4", frames=2, width=64, height=48, seed=k)
    script = textwrap.dedent(f"""
        import errno, sys
        from vidpipe import sinks
        write = sinks.JsonlSink.write_lines
        def full(self, text, frames):
            if self.path.name == "b.jsonl":
                raise OSError(errno.ENOSPC, "No space left on device")
            write(self, text, frames)
        sinks.JsonlSink.write_lines = full
        from vidpipe.cli import main
        sys.exit(main(["detect", {str(src)!r}, "-o", {str(out)!r}, *{COMMON!r}]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "No space left on device" in one_line_error(r, "b.mp4")
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".vidpipe") == ["a.jsonl", "c.jsonl"]  # no partial


@pytest.mark.parametrize("flags,message", [
    (["--decoders", "-3"], "--decoders: must be a whole number from 0 to 256"),
    (["--devices", "cpu,cpu", "--split-frames", "0"], "--split-frames: must be >= 1"),
    (["--score-threshold", "nan"], "--score-threshold: must be a number in [0, 1]"),
    (["--score-threshold", "2"], "--score-threshold: must be a number in [0, 1]"),
    (["--iou-threshold", "-1"], "--iou-threshold: must be a number in [0, 1]"),
    (["--batch-size", "0"], "--batch-size: must be a whole number from 1 to 4,096"),
    (["--max-frames", "x"], "--max-frames: expected a whole number"),
    (["--procs-per-device", "0"], "--procs-per-device: must be >= 1"),
])
def test_numeric_flags_are_validated(tmp_path, clips, flags, message):
    r = subprocess.run([*CLI, str(clips[0]), "-o", str(tmp_path / "o.jsonl"), *flags], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert message in r.stderr.splitlines()[-1]


def test_config_rejects_nan_thresholds_and_names_what_is_valid():
    from vidpipe.config import Config, ConfigError

    for field in ("score_threshold", "iou_threshold", "candidate_threshold"):
        with pytest.raises(ConfigError, match=f"^{field} must be a number in \\[0, 1"):
            Config(**{field: float("nan")})
    with pytest.raises(ValueError, match="^decoders must be a whole number from 0 to 256, got -3$"):
        Config(decoders=-3)
    with pytest.raises(ValueError, match="^decoder must be one of auto, nvdec, pyav; got 'gpu'$"):
        Config(decoder="gpu")


def test_parquet_with_an_undecodable_file_name(tmp_path, clips):
    pq = pytest.importorskip("pyarrow.parquet")
    name = os.fsdecode(b"caf\xe9.mp4")  # Latin-1 bytes: not UTF-8
    clip = tmp_path / name
    clip.write_bytes(clips[0].read_bytes())
    out = tmp_path / "o.parquet"
    r = detect(clip, "-o", out, "--format", "parquet")
    assert r.returncode == 0, r.stderr
    videos = set(pq.read_table(out).column("video").to_pylist())
    assert videos <= {str(tmp_path / "caf\\xe9.mp4")}
    assert not list(tmp_path.glob("*.partial"))


def test_a_header_that_promises_no_frames_is_a_failure_and_resume_retries_it(tmp_path, clips):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(clips[0].read_bytes().replace(b"stts", b"xxxx", 1))  # no sample times: nothing decodes
    out = tmp_path / "o.jsonl"
    r = detect(bad, "-o", out)
    assert r.returncode == 1 and "no frame could be decoded" in one_line_error(r, "broken.mp4")
    assert not out.exists()
    r = detect(bad, "-o", out, "--resume")
    assert r.returncode == 1 and "no frame could be decoded" in r.stderr  # tried again, not skipped


def test_non_finite_model_outputs_fail_the_input_instead_of_invalid_json(tmp_path, clips):
    from vidpipe.weights import calibrated_random_ssd300, save_checkpoint

    model = calibrated_random_ssd300()
    with torch.no_grad():
        model.loc[0].bias.fill_(float("inf"))
    weights = tmp_path / "inf.pt"
    save_checkpoint(model, weights)
    out = tmp_path / "o.jsonl"
    r = subprocess.run([*CLI, str(clips[2]), "-o", str(out), "--weights", str(weights), "--device", "cpu",
                        "--batch-size", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "not finite" in one_line_error(r, "c.mp4")
    assert "non-finite" in r.stderr  # the weights themselves were flagged on loading
    assert not out.exists()
    for path in tmp_path.glob("o.jsonl*"):
        for line in path.read_text().splitlines():
            json.loads(line)  # whatever was set aside is valid JSON


@pytest.mark.parametrize("kind", ["fifo", "loop", "dangling"])
def test_special_files_are_named_for_what_they_are(tmp_path, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "fifo":
        os.mkfifo(path)
        expect = "a FIFO"
    elif kind == "loop":
        os.symlink(path, path)
        expect = "symbolic link loop"
    else:
        os.symlink(tmp_path / "gone.mp4", path)
        expect = "broken symbolic link"
    r = detect(path, "-o", tmp_path / "o.jsonl", timeout=60)
    assert r.returncode == 1 and expect in one_line_error(r, path.name)


def test_character_device_is_not_an_empty_file(tmp_path):
    r = detect("/dev/zero", "-o", tmp_path / "o.jsonl", timeout=60)
    assert r.returncode == 1 and "a character device" in one_line_error(r, "/dev/zero")


def test_missing_input_fails_before_the_model_is_built(tmp_path):
    t0 = time.perf_counter()
    r = detect(tmp_path / "nope.mp4", "-o", tmp_path / "o.jsonl", timeout=60)
    assert r.returncode == 1 and "no such file" in one_line_error(r, "nope.mp4")
    assert time.perf_counter() - t0 < 10  # no model was built: calibrating random weights alone takes longer


def test_server_that_never_answers_is_a_timeout(tmp_path):
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)  # accepts the connection, never says a word
    try:
        url = f"http://127.0.0.1:{server.getsockname()[1]}/clip.mp4"
        r = detect(url, "-o", tmp_path / "o.jsonl", timeout=120)
    finally:
        server.close()
    assert r.returncode == 1 and "no answer" in one_line_error(r, url)


def test_ctrl_c_during_start_up_is_not_a_traceback(tmp_path, clips):
    p = subprocess.Popen([*CLI, str(clips[0]), "-o", str(tmp_path / "o.jsonl"), *COMMON],
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # inside the imports of torch and the model
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err, err


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            out.add(k)
            todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("children", ["workers", "formatting processes"])
def test_child_processes_die_with_their_parent(tmp_path, children):
    """SIGKILL of vidpipe leaves none of its processes running: worker processes (--devices) and the
    formatting processes (--formatters) of a live run alike."""
    long = make_clip(tmp_path / "long.mp4", frames=400, width=160, height=120)
    flags = (["--devices", "cpu,cpu", "--split-frames", "100000"] if children == "workers" else
             ["--realtime", "--loop", "--formatters", "2"])
    p = subprocess.Popen([*CLI, str(long), "-o", str(tmp_path / "o.jsonl"), *COMMON, *flags], stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(_descendants(p.pid)) < 2:
        time.sleep(0.2)
    time.sleep(2.0)  # the children are past their imports
    started = _descendants(p.pid)
    assert len(started) >= 2
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    time.sleep(5.0)
    assert [w for w in started if _alive(w)] == []


def test_weights_with_non_finite_values_warn_on_loading(tmp_path, caplog):
    from vidpipe.weights import calibrated_random_ssd300, load_model, save_checkpoint

    model = calibrated_random_ssd300()
    with torch.no_grad():
        model.conf[1].weight[0, 0, 0, 0] = float("nan")
    save_checkpoint(model, tmp_path / "nan.pt")
    load_model(str(tmp_path / "nan.pt"))
    assert any("non-finite" in r.message and "conf.1.weight" in r.message for r in caplog.records)



def test_resume_with_every_output_complete_builds_no_model(tmp_path, clips):
    out = tmp_path / "out"
    r = detect(clips[0].parent, "-o", out)
    assert r.returncode == 0, r.stderr
    # The same settings on a device this machine may not have (the device does not change what an output
    # holds): building the model there would fail on a CPU machine, so exit 0 shows it was never built.
    r = subprocess.run([*CLI, str(clips[0].parent), "-o", str(out), "--resume", "--weights", "random",
                        "--device", "cuda:7", "--batch-size", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "nothing left to do (3 of 3 inputs complete)" in r.stderr.splitlines()[-1]
