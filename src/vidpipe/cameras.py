"""Stand-in cameras: a video file served over HTTP as a live MPEG-TS stream, at its own frame rate,
looped forever, one connection per camera.

What a camera's feed is to vidpipe (a URL whose packets arrive on the camera's clock) on a machine
that has no camera: ``vidpipe bench --suite live --live-cameras http`` and the tests use it. A
``--realtime`` file stands in for a camera too, but is read by NVDEC's file decoder, a cheaper path.

In: a video file (its first video stream is remuxed, not re-encoded). Out: :class:`CameraServer`, a
server in a process of its own (its Python never competes with the process under test for a GIL),
:meth:`CameraServer.url` and :meth:`CameraServer.stats`. Each GET of a camera's path streams the
video from its first packet, each packet sent at its decode time after the request, timestamps
continuing across loops. The stream is muxed once for every camera (loops are added as the first
connection reaches the end of those muxed so far), so a camera costs the server a write per packet:
64 cameras are 1,920 writes a second, where muxing each camera's stream on its own fell behind.
``GET /stats`` answers how late the server sent its packets (``/stats?reset``: and starts counting
again): a figure measured against cameras that were late is the server's, not the reader's.
"""

from __future__ import annotations

import collections
import io
import json
import multiprocessing as mp
import threading
import time
import urllib.request
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av

from .errors import VidpipeError

LATENESS_WINDOW = 100_000  # packets whose delays GET /stats summarises (~50 s of 64 cameras)


class _Recorder(io.RawIOBase):
    """What the muxer writes, cut at each packet (``flush_packets``: a packet's bytes leave together)."""

    def __init__(self) -> None:
        self.pending = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.pending += data
        return len(data)

    def take(self) -> bytes:
        data, self.pending = bytes(self.pending), bytearray()
        return data


class _Feed:
    """The served stream, muxed once: ``chunks[i]`` is packet i's bytes, due ``due[i]`` seconds after
    the connection began; :meth:`upto` mux further loops on demand."""

    def __init__(self, path: str) -> None:
        src = av.open(path)
        stream = src.streams.video[0]
        self.packets = [(bytes(p), p.pts, p.dts, p.is_keyframe) for p in src.demux(stream)
                        if p.size and p.dts is not None]
        if not self.packets:
            raise ValueError("no video packets")
        self.tb: Fraction = stream.time_base
        step = round(1 / (float(stream.average_rate or 30) * self.tb))  # one frame, in the time base
        self.loop = self.packets[-1][2] - self.packets[0][2] + step  # one pass, in the time base
        self.recorder = _Recorder()
        self.out = av.open(self.recorder, "w", format="mpegts", options={"flush_packets": "1"})
        self.stream = self.out.add_stream_from_template(stream)
        self.source = src  # the template's container stays open while the muxer uses it
        self.chunks: list[bytes] = []
        self.due: list[float] = []
        self.loops = 0
        self.lock = threading.Lock()

    def upto(self, n: int) -> int:
        """At least ``n`` chunks muxed (whole loops); how many there are."""
        with self.lock:
            while len(self.chunks) < n:
                first, offset = self.packets[0][2], self.loops * self.loop
                for data, pts, dts, key in self.packets:
                    packet = av.Packet(data)
                    packet.stream, packet.time_base = self.stream, self.tb
                    packet.dts = dts + offset
                    packet.pts = None if pts is None else pts + offset
                    packet.is_keyframe = key
                    self.out.mux(packet)
                    self.chunks.append(self.recorder.take())
                    self.due.append(float((dts - first + offset) * self.tb))
                self.loops += 1
            return len(self.chunks)


class _Handler(BaseHTTPRequestHandler):
    feed: _Feed
    lateness: collections.deque[float]  # s each recent packet went out after its time (0: on time), every camera's

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path in ("/stats", "/stats?reset"):
            self._stats(reset=self.path.endswith("reset"))
            return
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        feed, start, i = self.feed, time.monotonic(), 0
        try:
            while True:
                if i >= len(feed.chunks):
                    feed.upto(i + 1)
                if (wait := start + feed.due[i] - time.monotonic()) > 0:
                    time.sleep(wait)
                self.lateness.append(max(0.0, -wait))
                self.wfile.write(feed.chunks[i])
                i += 1
        except (OSError, ValueError):  # a broken pipe, a reset connection, ...
            pass  # the camera's viewer went away

    def _stats(self, reset: bool) -> None:
        late = sorted(self.lateness)
        if reset:
            self.lateness.clear()
        body = json.dumps({"packets": len(late), "late_p99_ms": 1e3 * late[int(0.99 * (len(late) - 1))] if late else 0.0,
                           "late_max_ms": 1e3 * late[-1] if late else 0.0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        pass


def _serve(path: str, port: mp.Queue) -> None:
    try:
        feed = _Feed(path)
        feed.upto(1)
    except (ValueError, OSError, av.error.FFmpegError) as e:
        port.put(f"{path}: cannot be served as a camera ({getattr(e, 'strerror', None) or e})")
        return
    handler = type("Camera", (_Handler,), {"feed": feed, "lateness": collections.deque(maxlen=LATENESS_WINDOW)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    port.put(server.server_address[1])
    server.serve_forever()


class CameraServer:
    """``path`` served as looping live cameras on loopback, by a process of its own, while the block
    runs: ``with CameraServer("clip.mp4") as cams: url = cams.url(3)``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._process: mp.Process | None = None
        self._port = 0

    def __enter__(self) -> CameraServer:
        ctx = mp.get_context("spawn")  # a fresh interpreter: nothing of the caller's (CUDA, threads) in it
        port = ctx.Queue()
        self._process = ctx.Process(target=_serve, args=(self.path, port), name="vidpipe-cameras", daemon=True)
        self._process.start()
        answer = port.get()
        if isinstance(answer, str):
            self._process.join()
            raise VidpipeError(answer)
        self._port = answer
        return self

    def url(self, camera: int) -> str:
        """Camera ``camera``'s URL (each a stream of its own, from its first frame when opened)."""
        return f"http://127.0.0.1:{self._port}/cam{camera}.ts"

    def stats(self, reset: bool = False) -> dict:
        """How late the server sent its last ``packets`` packets (every camera's, up to LATENESS_WINDOW,
        since the last reset): the 99th percentile and the worst, in ms after each packet's time;
        ``reset``: then forget them."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self._port}/stats{'?reset' if reset else ''}",
                                    timeout=10) as r:
            return json.loads(r.read())

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(5)
