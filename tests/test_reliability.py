"""Bad input, damaged files, fuzzing and network streams: a clean one-line error and a non-zero
exit, never a traceback, a hang or a lost result."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from vidpipe.errors import VidpipeError
from vidpipe.sources import (FFmpegNvdecSource, NvdecSource, NvdecStreamSource, PyAVSource,
                             ffmpeg_nvdec_available, open_source, probe)
from vidpipe.synth import make_clip, repeat_clip

CLI = [sys.executable, "-m", "vidpipe.cli", "detect"]
COMMON = ["--weights", "random", "--device", "cpu", "--batch-size", "4"]


def detect(*args, timeout=300):
    return subprocess.run([*CLI, *map(str, args), *COMMON], capture_output=True, text=True, timeout=timeout)


def one_line_error(stderr: str, name: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [x for x in stderr.splitlines() if "error:" in x]
    assert lines and name in lines[0], stderr
    return lines[0]


def frames_of(path: Path) -> list[int]:
    return [json.loads(x)["frame"] for x in path.read_text().splitlines()]


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_file(tmp_path, cut, faststart):
    clip = make_clip(tmp_path / "c.mp4", frames=30, width=96, height=64, faststart=faststart)
    data = clip.read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: int(len(data) * cut)])
    out = tmp_path / "o.jsonl"
    r = detect(bad, "-o", out)
    assert r.returncode in (1, 2)
    line = one_line_error(r.stderr, "cut.mp4")
    if faststart:  # the index survives: what was decodable is set aside, in order, and the loss reported
        assert not out.exists()  # never the final name: --resume retries the input
        incomplete = tmp_path / "o.jsonl.incomplete"
        got = frames_of(incomplete) if incomplete.exists() else []
        assert got == list(range(len(got))) and len(got) < 30
        if got:
            assert f"{30 - len(got)} lost" in line and "o.jsonl.incomplete" in line
        else:
            assert "no frame could be decoded" in line
    else:  # the index was at the end: nothing is decodable
        assert "not a readable video" in line and not out.exists()


def test_corrupt_packets_in_the_middle(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=40, width=96, height=64, faststart=True)
    data = bytearray(clip.read_bytes())
    g = torch.Generator().manual_seed(0)
    mid = len(data) // 2
    data[mid:mid + 400] = bytes(torch.randint(0, 256, (400,), generator=g, dtype=torch.uint8).tolist())
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    out = tmp_path / "o.jsonl"
    r = detect(bad, "-o", out)
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr
    assert out.exists() == (r.returncode == 0)  # damaged: never the final name
    got = frames_of(out if r.returncode == 0 else tmp_path / "o.jsonl.incomplete")
    assert got == list(range(len(got))) and len(got) >= 20


def test_absurd_dimensions(tmp_path):
    clip = make_clip(tmp_path / "wide.mp4", frames=1, width=8208, height=16)
    with pytest.raises(VidpipeError, match="unsupported frame size 8208x16"):
        probe(clip)
    r = detect(clip, "-o", tmp_path / "o.jsonl")
    assert r.returncode == 1 and "unsupported frame size" in one_line_error(r.stderr, "wide.mp4")


def test_directory_without_videos(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    r = detect(tmp_path, "-o", tmp_path / "out")
    assert r.returncode == 2 and "no videos" in one_line_error(r.stderr, str(tmp_path))


FUZZ = r"""
import json, random, signal, sys, torch
from pathlib import Path
from vidpipe.engine import FrameProducer, VideoEnd
from vidpipe.sources import FrameBatch
sys.path.insert(0, sys.argv[5])
from ordering import in_order
src, work, cases, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = src.read_bytes()
rng = random.Random(seed)
def timeout(*_): raise TimeoutError
signal.signal(signal.SIGALRM, timeout)
stats = {"cases": 0, "decoded_ok": 0, "clean_error": 0, "frames": 0}
for i in range(cases):
    buf = bytearray(data)
    for _ in range(rng.randint(1, 24)):
        buf[rng.randrange(len(buf))] = rng.randrange(256)
    if rng.random() < 0.2:
        buf = buf[: rng.randrange(1, len(buf))]
    path = work / f"case{i}.mp4"
    path.write_bytes(bytes(buf))
    (work / "current").write_text(str(i))
    signal.alarm(20)
    items = list(in_order(FrameProducer([str(path)], "pyav", torch.device("cpu"), 8, threaded=False)))
    signal.alarm(0)
    end = items[-1]
    assert isinstance(end, VideoEnd) and (end.ok or "\n" not in end.error), end
    n = sum(len(b) for b in items if isinstance(b, FrameBatch))
    idx = [j for b in items if isinstance(b, FrameBatch) for j in b.indices]
    assert idx == list(range(n)), idx
    stats["cases"] += 1
    stats["frames"] += n
    stats["decoded_ok" if end.ok else "clean_error"] += 1
    path.unlink()
print(json.dumps(stats))
"""


def test_fuzzed_clips_never_crash_or_hang(tmp_path):
    clip = make_clip(tmp_path / "seed.mp4", frames=16, width=64, height=48, faststart=True)
    r = subprocess.run([sys.executable, "-c", FUZZ, str(clip), str(tmp_path), "300", "1234",
                        str(Path(__file__).parent)],
                       capture_output=True, text=True, timeout=900)
    current = (tmp_path / "current").read_text() if (tmp_path / "current").exists() else "?"
    assert r.returncode == 0, f"case {current} crashed (rc {r.returncode}): {r.stderr[-1500:]}"
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert stats["cases"] == 300 and stats["decoded_ok"] + stats["clean_error"] == 300


def test_fuzzed_clip_through_the_whole_tool(tmp_path):
    clip = make_clip(tmp_path / "seed.mp4", frames=8, width=64, height=48, faststart=True)
    data = clip.read_bytes()
    g = torch.Generator().manual_seed(7)
    for case in range(3):
        buf = bytearray(data)
        for pos in torch.randint(0, len(buf), (16,), generator=g).tolist():
            buf[pos] = (buf[pos] + 97) % 256
        path = tmp_path / f"f{case}.mp4"
        path.write_bytes(bytes(buf))
        out = tmp_path / f"f{case}.jsonl"
        r = detect(path, "-o", out)
        assert "Traceback" not in r.stderr
        assert (r.returncode == 0 and out.exists()) or (r.returncode in (1, 2) and "error:" in r.stderr)


class _ClipServer(BaseHTTPRequestHandler):
    """Serves one file with Range support; ``drop_after`` bytes into the first response it hangs
    up, as a flaky network would."""

    data: bytes = b""
    drop_after: int | None = None
    gone_after_drop = False  # after hanging up once, hang up on every later request too
    requests = 0

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._respond(body=False)

    def do_GET(self):
        self._respond(body=True)

    def _respond(self, body: bool):
        cls = type(self)
        cls.requests += 1
        if cls.gone_after_drop and cls.drop_after is None:
            self.connection.shutdown(2)
            return
        start, end = 0, len(self.data) - 1
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start, end = int(a or 0), int(b) if b else len(self.data) - 1
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(self.data)}")
        self.end_headers()
        if not body:
            return
        chunk = self.data[start:end + 1]
        if cls.drop_after is not None and start < cls.drop_after:
            cut, cls.drop_after = cls.drop_after - start, None
            self.wfile.write(chunk[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # hang up mid-body
            return
        self.wfile.write(chunk)


@contextmanager
def served(clip: Path):
    """``clip`` served over HTTP on loopback: (handler class, server, URL)."""
    handler = type("H", (_ClipServer,), {"data": clip.read_bytes(), "drop_after": None, "requests": 0,
                                         "gone_after_drop": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, server, f"http://127.0.0.1:{server.server_address[1]}/{clip.name}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_clip(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=60, width=128, height=96, faststart=True)
    with served(clip) as (handler, server, url):
        yield clip, handler, server, url


def _decode(source) -> tuple[list[int], torch.Tensor, list[float]]:
    batches = list(source.batches(16))
    return ([i for b in batches for i in b.indices], torch.cat([b.frames.cpu() for b in batches]),
            [t for b in batches for t in b.times])


def test_http_stream_matches_file(http_clip):
    clip, _, _, url = http_clip
    idx, frames, _ = _decode(PyAVSource(url))
    ref_idx, ref, _ = _decode(PyAVSource(clip))
    assert idx == ref_idx == list(range(60)) and torch.equal(frames, ref)


def test_http_stream_reconnects_after_a_drop(http_clip):
    clip, handler, _, url = http_clip
    source = PyAVSource(url)
    handler.drop_after = len(handler.data) // 2
    idx, frames, _ = _decode(source)
    _, ref, _ = _decode(PyAVSource(clip))
    assert idx == list(range(60)) and torch.equal(frames, ref)  # every frame exactly once
    assert handler.drop_after is None and source.reconnections >= 1  # the drop happened, and was mended


def test_http_server_gone_mid_stream(http_clip):
    _, handler, _, url = http_clip
    source = PyAVSource(url, reconnects=2)
    handler.drop_after, handler.gone_after_drop = len(handler.data) // 2, True
    indices = []
    with pytest.raises(VidpipeError) as e:
        for batch in source.batches(8):
            indices += batch.indices
    assert "gave up after 2 reconnects" in str(e.value) and "\n" not in str(e.value)
    assert indices == list(range(len(indices))) and len(indices) < 60
    assert source.reconnections == 2


STREAM_CLIPS = {  # what cameras send: B-frames or none, HEVC (NVDEC's minimum height 144), variable rate
    "h264-bframes": dict(frames=40, width=128, height=96),
    "h264-no-bframes": dict(frames=40, width=128, height=96, bframes=False),
    "hevc": dict(frames=24, width=192, height=144, codec="libx265"),
    "vfr": dict(frames=30, width=128, height=96, vfr=True),
}


@pytest.mark.nvdec
@pytest.mark.parametrize("container", ["mp4", "ts"])
@pytest.mark.parametrize("name", sorted(STREAM_CLIPS))
def test_a_stream_on_nvdec_gives_the_files_frames(tmp_path, name, container):
    """A URL decoded by NVDEC packet by packet gives, frame for frame and bit for bit, what a run
    decodes from the file itself, with the same indices and times, and each frame is FFmpeg's but for
    YUV->RGB rounding; FFmpeg's frames differ by that rounding, so a stream that fell back to FFmpeg
    fails here. The HEVC clip has open GOPs (leading pictures). Served as MP4 its packets go through
    FFmpeg's Annex B filter; as MPEG-TS (a camera's stream: no frame count, read to its last frame)
    they already are Annex B and go to NVDEC as they come."""
    n = STREAM_CLIPS[name]["frames"]
    clip = make_clip(tmp_path / f"{name}.mp4", faststart=True, **STREAM_CLIPS[name])
    ref_idx, ref, ref_t = _decode(open_source(str(clip), "nvdec", torch.device("cuda")))
    if container == "ts":
        clip = repeat_clip(clip, tmp_path / f"{name}.ts", 1)
    with served(clip) as (_, _, url):
        idx, frames, t = _decode(NvdecStreamSource(url, "cuda", max_frames=n))
        _, av_frames, _ = _decode(PyAVSource(url, "cuda", max_frames=n))
    assert idx == ref_idx == list(range(n)) and t == pytest.approx(ref_t, abs=1e-9)
    assert torch.equal(frames, ref) and not torch.equal(av_frames, ref)
    assert (frames.float() - av_frames.float()).abs().mean((1, 2, 3)).max() < 3.0


@pytest.mark.nvdec
@pytest.mark.parametrize("decoder", ["pynvvideocodec", "ffmpeg"])
def test_a_stream_on_nvdec_reconnects_after_a_drop(http_clip, decoder):
    """Each stream decoder: every frame exactly once across a dropped connection, as the file gives them."""
    if decoder == "ffmpeg" and not ffmpeg_nvdec_available():
        pytest.skip("needs PyAV with CUDA decoding")
    stream, whole = (NvdecStreamSource, NvdecSource) if decoder == "pynvvideocodec" else (FFmpegNvdecSource,) * 2
    clip, handler, _, url = http_clip
    source = stream(url, "cuda")
    handler.drop_after = len(handler.data) // 2
    idx, frames, _ = _decode(source)
    _, ref, _ = _decode(whole(clip, "cuda"))
    assert idx == list(range(60)) and torch.equal(frames, ref)
    assert handler.drop_after is None and source.reconnections >= 1


@pytest.mark.nvdec
def test_the_engine_decodes_a_stream_on_nvdec(http_clip, monkeypatch):
    """A URL in a run on NVDEC: every frame once, NVDEC's bits, each chunk the frames of one decode
    call as a camera's (one, or with B-frames at times two: handed over together, so that the policy
    "latest" does not drop the first for the second)."""
    from vidpipe.engine import Chunk, FrameProducer

    clip, _, _, url = http_clip
    calls, packet = [], NvdecStreamSource._packet
    monkeypatch.setattr(NvdecStreamSource, "_packet", lambda *a: calls.append(packet(*a)) or calls[-1])
    chunks = [i for i in FrameProducer([url], "nvdec", torch.device("cuda"), 8, live_policy="all",
                                       stream_decoder="pynvvideocodec") if isinstance(i, Chunk)]
    _, ref, _ = _decode(NvdecSource(clip, "cuda"))
    assert [i for c in chunks for i in c.batch.indices] == list(range(60))
    assert [len(c.batch) for c in chunks] == [len(f) for f in calls if f] and max(map(len, calls)) >= 2
    assert torch.equal(torch.cat([c.batch.frames.cpu() for c in chunks]), ref)


def ffmpeg_nvdec(test):
    """A test of FFmpeg's NVDEC decoding: a GPU test, skipped where PyAV has no CUDA decoding."""
    skip = pytest.mark.skipif(not ffmpeg_nvdec_available(), reason="needs a GPU and PyAV with CUDA decoding")
    return pytest.mark.cuda(skip(test))


@ffmpeg_nvdec
@pytest.mark.parametrize("container", ["mp4", "ts"])
@pytest.mark.parametrize("name", sorted(STREAM_CLIPS))
def test_a_stream_decoded_by_ffmpeg_on_nvdec_gives_ffmpegs_frames(tmp_path, name, container):
    """A URL demuxed and decoded by FFmpeg on NVDEC (frames left in CUDA memory, converted on the
    device) gives every frame once, with the indices and times FFmpeg's CPU decoding gives, each frame
    its picture (FFmpeg's own RGB conversion lands about a level lower), on a stream the reader must
    wait for; and the open GOPs of the HEVC clip too."""
    n = STREAM_CLIPS[name]["frames"]
    clip = make_clip(tmp_path / f"{name}.mp4", faststart=True, **STREAM_CLIPS[name])
    if container == "ts":
        clip = repeat_clip(clip, tmp_path / f"{name}.ts", 1)
    with served(clip) as (_, _, url):
        source = open_source(url, "nvdec", torch.device("cuda"), max_frames=n)
        idx, frames, t = _decode(source)
        ref_idx, ref, ref_t = _decode(PyAVSource(url, "cuda", max_frames=n))
    assert isinstance(source, FFmpegNvdecSource) and source.pending == torch.cuda.default_stream()
    assert idx == ref_idx == list(range(n)) and t == pytest.approx(ref_t, abs=1e-9)
    diff = (frames.float() - ref.float()).abs().mean((1, 2, 3))
    assert diff.max() < 2.0 and diff.min() > 0  # the same pictures, not FFmpeg's CPU conversion itself


@ffmpeg_nvdec
def test_a_realtime_open_gop_file_is_read_as_a_camera_is(tmp_path):
    """--realtime files stand in for cameras: one SimpleDecoder cannot take (open GOPs) is decoded by
    FFmpeg on NVDEC as a camera's stream is (frames on the legacy default stream), not packet by packet
    as the same file is outside --realtime; every frame once either way."""
    from vidpipe.engine import Chunk, FrameProducer

    path = str(make_clip(tmp_path / "h.mp4", frames=24, width=192, height=144, codec="libx265", gop=12))
    for realtime, stream in ((True, torch.cuda.default_stream()), (False, None)):
        chunks = [i for i in FrameProducer([path], "nvdec", torch.device("cuda"), 8, realtime=realtime,
                                           live_policy="all") if isinstance(i, Chunk)]
        assert sorted(j for c in chunks for j in c.batch.indices) == list(range(24))
        assert {c.batch.stream for c in chunks} == {stream}, realtime


@ffmpeg_nvdec
def test_the_engine_decodes_a_stream_with_ffmpeg_on_nvdec(http_clip):
    """A URL in a run on NVDEC takes FFmpeg's NVDEC decoding by default: every frame once, each chunk
    carrying the stream its frames are written on, and once the engine's stream has waited for it,
    the source's frames."""
    from vidpipe.engine import Chunk, FrameProducer

    clip, _, _, url = http_clip
    chunks = [i for i in FrameProducer([url], "nvdec", torch.device("cuda"), 8, live_policy="all")
              if isinstance(i, Chunk)]
    _, ref, _ = _decode(FFmpegNvdecSource(clip, "cuda"))
    assert [i for c in chunks for i in c.batch.indices] == list(range(60))
    assert {c.batch.stream for c in chunks} == {torch.cuda.default_stream()}
    reader = torch.cuda.Stream()
    with torch.cuda.stream(reader):
        reader.wait_stream(torch.cuda.default_stream())
        got = torch.cat([c.batch.frames for c in chunks]).cpu()
    assert torch.equal(got, ref)


def test_nvdec_streams_are_h264_or_hevc(tmp_path, caplog):
    """Other codecs are refused in one line before any CUDA call (this runs without a GPU), and with
    the automatic decoder choice fall back to FFmpeg with a warning."""
    clip = make_clip(tmp_path / "v.mp4", frames=4, codec="libvpx-vp9", faststart=True)
    with served(clip) as (_, _, url):
        with pytest.raises(VidpipeError, match="NVDEC reads H.264 and HEVC streams here, not vp9"):
            NvdecStreamSource(url, "cuda")
        src = open_source(url, "nvdec", torch.device("cuda"), fallback=True)
    assert src.name == "pyav" and "decoding it with FFmpeg on the CPU instead" in caplog.text


SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = Path(__file__).parent / "servers" / "rtsp_server.py"


def _have_rtsp_server() -> bool:
    probe_gi = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", probe_gi], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class RtspServer:
    """GStreamer's RTSP server on loopback in a child process; ``kill`` and ``start`` again at will."""

    def __init__(self, clip: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.clip, self.proc = clip, None
        self.url = f"rtsp://127.0.0.1:{self.port}/clip"

    def start(self) -> None:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SERVER), str(self.clip), str(self.port)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def rtsp(tmp_path):
    if not _have_rtsp_server():
        pytest.skip("GStreamer's RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0) is not installed")
    server = RtspServer(make_clip(tmp_path / "live.mp4", frames=90, width=128, height=96, bframes=False, gop=15))
    server.start()
    yield server
    server.kill()


def test_rtsp_stream(rtsp):
    source = PyAVSource(rtsp.url, max_frames=60)
    batches = list(source.batches(16))
    times = [t for b in batches for t in b.times]
    assert [i for b in batches for i in b.indices] == list(range(60))
    assert times[0] == 0.0 and all(a < b for a, b in zip(times, times[1:]))


def test_rtsp_server_restarts_mid_stream(rtsp):
    source = PyAVSource(rtsp.url, max_frames=80, timeout=3)
    indices, times = [], []
    for batch in source.batches(8):
        indices += batch.indices
        times += batch.times
        if len(indices) == 24:  # the camera goes away for a moment
            rtsp.kill()
            threading.Timer(1.0, rtsp.start).start()
    assert indices == list(range(80)) and all(a < b for a, b in zip(times, times[1:]))
    assert source.reconnections >= 1


def test_rtsp_server_gone(rtsp):
    source = PyAVSource(rtsp.url, reconnects=2, timeout=2)
    indices = []
    with pytest.raises(VidpipeError, match="gave up after 2 reconnects") as e:
        for batch in source.batches(8):
            indices += batch.indices
            if len(indices) == 16:
                rtsp.kill()
    assert "\n" not in str(e.value) and indices == list(range(len(indices)))
