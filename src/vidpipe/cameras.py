"""Stand-in cameras: a video file served over HTTP as a live MPEG-TS stream, at its own frame rate,
looped forever, one connection per camera.

What a camera's feed is to vidpipe (a URL whose packets arrive on the camera's clock, decoded by
NVDEC packet by packet on a GPU run) on a machine that has no camera: ``vidpipe bench --suite live
--live-cameras http`` and the tests use it. A ``--realtime`` file stands in for a camera too, but
is read by NVDEC's file decoder, a cheaper path per frame.

In: a video file (its first video stream is remuxed, not re-encoded). Out: :class:`CameraServer`, a
server in a process of its own (its Python never competes with the process under test for a GIL)
and :meth:`CameraServer.url`; each GET of any path streams the video from its first packet, each
packet sent at its decode time after the request, timestamps continuing across loops.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av

from .errors import VidpipeError


@dataclass(frozen=True)
class _Packet:
    data: bytes
    pts: int | None
    dts: int
    keyframe: bool


def _packets(path: str) -> tuple[av.video.stream.VideoStream, list[_Packet], int]:
    """The video's stream (its container left open: the stream is every connection's template), its
    packets in decode order, and one loop's duration in its time base."""
    c = av.open(path)
    stream = c.streams.video[0]
    packets = [_Packet(bytes(p), p.pts, p.dts, p.is_keyframe) for p in c.demux(stream)
               if p.size and p.dts is not None]
    if not packets:
        raise ValueError("no video packets")
    step = round(1 / (float(stream.average_rate or 30) * stream.time_base))  # one frame, in the time base
    return stream, packets, packets[-1].dts - packets[0].dts + step


class _Handler(BaseHTTPRequestHandler):
    template: av.video.stream.VideoStream
    packets: list[_Packet]
    loop: int  # one pass, in the stream's time base

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        tb: Fraction = self.template.time_base
        first = self.packets[0].dts
        try:
            # Each packet flushed to the socket as it is muxed: it leaves at its time, not with a buffer.
            with av.open(self.wfile, "w", format="mpegts", options={"flush_packets": "1"}) as out:
                stream = out.add_stream_from_template(self.template)
                start, offset = time.monotonic(), 0
                while True:
                    for p in self.packets:
                        if (wait := start + float((p.dts - first + offset) * tb) - time.monotonic()) > 0:
                            time.sleep(wait)
                        packet = av.Packet(p.data)
                        packet.stream, packet.time_base = stream, tb
                        packet.dts = p.dts + offset
                        packet.pts = None if p.pts is None else p.pts + offset
                        packet.is_keyframe = p.keyframe
                        out.mux(packet)
                    offset += self.loop
        except (OSError, ValueError, av.error.FFmpegError):  # a broken pipe, a reset connection, ...
            pass  # the camera's viewer went away

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        pass


def _serve(path: str, port: mp.Queue) -> None:
    try:
        template, packets, loop = _packets(path)
    except (ValueError, OSError, av.error.FFmpegError) as e:
        port.put(f"{path}: cannot be served as a camera ({getattr(e, 'strerror', None) or e})")
        return
    handler = type("Camera", (_Handler,), {"template": template, "packets": packets, "loop": loop})
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

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(5)
