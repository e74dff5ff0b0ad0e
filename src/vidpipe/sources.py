"""Frame sources: decode a video into batches of RGB frames with their index and time.

Out: :class:`FrameBatch` with ``frames Tensor[N, 3, H, W]`` uint8 RGB on the requested device,
frame indices (0-based, presentation order) and times (seconds since the first frame).

* ``nvdec``: PyNvVideoCodec hardware decode into GPU memory, handed to torch through DLPack;
  frames never touch host memory. Files: its SimpleDecoder, sessions pooled per decode thread.
  Stream URLs and files with leading pictures: FFmpeg demuxes, NVDEC decodes packet by packet.
* ``pyav``: FFmpeg decode on the CPU with FFmpeg's threads; on a GPU the batch is staged in pinned
  host memory and copied asynchronously. Corrupt packets are skipped and counted, not fatal;
  network streams reconnect.

Both can decode a frame range ``[start, stop)`` (seek to the keyframe before, then frame-exact),
which the engine uses to decode segments of one file in parallel.

Both deliver every decodable frame exactly once, in presentation order, with the same indices and
times for the same file. Frames are delivered as stored (rotation metadata is not applied).
"""

from __future__ import annotations

import logging
import os
import time
from bisect import bisect_left
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from fractions import Fraction
from typing import Callable, Iterator, Literal

import av
import numpy as np
import torch
from av.bitstream import BitStreamFilterContext

from .errors import VidpipeError
from .inputs import check_input, is_stream_url
from .profiling import nvtx_range
from .runtime import DeviceRuntime
from .yuv import matrix, nv12_to_rgb

log = logging.getLogger(__name__)

Decoder = Literal["auto", "nvdec", "pyav"]
StreamDecoder = Literal["auto", "ffmpeg", "pynvvideocodec"]  # how NVDEC decodes what SimpleDecoder cannot (open_source)
MAX_SIDE = 8192  # NVDEC's limit for H.264/HEVC; larger claims are corrupt headers, not video


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video stream (``num_frames`` may be 0 when unknown)."""

    path: str
    width: int
    height: int
    num_frames: int
    fps: float
    codec: str
    time_base: Fraction
    pix_fmt: str = ""  # FFmpeg's name of the decoded pixel format ("yuv420p", "yuv420p10le"); "" unknown


@dataclass
class FrameBatch:
    """``frames``: ``Tensor[N, 3, H, W]`` uint8 RGB; ``indices``/``times``: N ints / N floats (s);
    ``captured``: for live sources (streams, ``--realtime`` files), the wall-clock time (``time.time()``)
    each frame was captured (a stream's from its timestamps), else None. ``stream``: the CUDA stream
    whose queued work writes ``frames``, which a reader on another stream must wait for; None when they
    are written by the time they are handed over."""

    video: str
    frames: torch.Tensor
    indices: list[int]
    times: list[float]
    captured: list[float] | None = field(default=None, repr=False)
    stream: torch.cuda.Stream | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = self.frames.shape[0]
        if self.frames.dim() != 4 or self.frames.shape[1] != 3 or len(self.indices) != n or len(self.times) != n:
            raise ValueError(f"inconsistent FrameBatch: frames {tuple(self.frames.shape)}, "
                             f"{len(self.indices)} indices, {len(self.times)} times")

    def __len__(self) -> int:
        return self.frames.shape[0]

    def split(self, n: int) -> tuple[FrameBatch, FrameBatch]:
        """The first ``n`` frames and the rest (views, no copy)."""
        c = self.captured
        return (FrameBatch(self.video, self.frames[:n], self.indices[:n], self.times[:n],
                           captured=None if c is None else c[:n], stream=self.stream),
                FrameBatch(self.video, self.frames[n:], self.indices[n:], self.times[n:],
                           captured=None if c is None else c[n:], stream=self.stream))

    def __repr__(self) -> str:
        return (f"FrameBatch(video={self.video!r}, frames={tuple(self.frames.shape)} {self.frames.device}, "
                f"indices={self.indices[:1]}..{self.indices[-1:]})")


NET_TIMEOUT = 10.0  # seconds a network source may stay silent (connect, then each read)
# Seconds a reconnected stream must deliver frames before its reconnects count from zero again: a
# stream that stalls again soon after each reconnect is given up on after its reconnects, not retried
# for ever (its frames would keep a run going that can never finish it).
STEADY_S = 60.0
RECONNECTS = 5  # reconnects in a row (0.5 s back-off, doubling) before a lost stream is given up


def _open(path: str, timeout: float | None = None, **kwargs) -> av.container.InputContainer:
    """Open a file, or a URL with connect/read timeouts (RTSP over TCP: no lost packets); ``kwargs``
    go to ``av.open`` (``hwaccel``). The timeouts are FFmpeg's own socket ones, not PyAV's
    ``av.open(timeout=...)``, whose check of the clock takes the GIL each time FFmpeg polls it, many
    times a frame: in a process of many cameras each such hand-over waits for the other threads."""
    if not is_stream_url(path):
        return av.open(path, **kwargs)
    us = str(round(1e6 * (NET_TIMEOUT if timeout is None else timeout)))
    options = {"rw_timeout": us}  # any protocol's reads and writes
    scheme = path.split(":", 1)[0].lower()
    if scheme in ("http", "https", "rtsp", "rtsps", "tcp"):  # theirs: connecting too (RTMP's means listening)
        options["timeout"] = us
    if scheme == "rtsp":
        options["rtsp_transport"] = "tcp"
    return av.open(path, options=options, **kwargs)


def _frame_rate(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    """Frames per second, 0 if unknown. A raw H.264/HEVC stream has no container rate (FFmpeg's raw
    demuxer gives 25 whatever it holds): its own, from its parameter sets' timing, as ffprobe's
    r_frame_rate (FFmpeg's guess falls back to the 25 when that timing is absent or implausible)."""
    raw = container.format.name in _PACKET_CODECS  # the raw demuxers are named after their codec
    return float((stream.guessed_rate if raw else stream.average_rate) or 0)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read a video's stream header with FFmpeg; raise :class:`VidpipeError` for anything that is
    not a decodable video (missing, empty, audio-only, absurd dimensions, unsupported codec).
    A file's header is read once per version of the file (the CLI's progress bar, the engine's
    planner and every source of one file would each open it: a few ms apiece)."""
    path = str(path)
    if is_stream_url(path):
        return _probe(path)
    reason = check_input(path)
    if reason is not None:
        raise VidpipeError(reason)
    return _probe_file(*_file_key(path))


@lru_cache(maxsize=256)
def _probe_file(path: str, mtime_ns: int, size: int) -> VideoInfo:
    return _probe(path)


def _probe(path: str) -> VideoInfo:
    try:
        with _open(path) as c:
            if not c.streams.video:
                kinds = sorted({s.type for s in c.streams}) or ["no streams"]
                raise VidpipeError(f"{path}: no video stream (has {', '.join(kinds)})")
            s = c.streams.video[0]
            cc = s.codec_context
            if cc is None:
                raise VidpipeError(f"{path}: unsupported codec ({s.codec_tag or 'unknown'})")
            width, height = cc.width, cc.height
            info = VideoInfo(path, width, height, int(s.frames or 0), _frame_rate(c, s),
                             cc.name, s.time_base or Fraction(1, 1000000), cc.format.name if cc.format else "")
    except VidpipeError:
        raise
    except av.error.FFmpegError as e:
        raise VidpipeError(f"{path}: not a readable video ({_ffmpeg_reason(e)})") from None
    except Exception as e:  # a damaged header can trip PyAV itself: still the file's fault, one line
        raise VidpipeError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise VidpipeError(f"{path}: unsupported frame size {width}x{height} (max {MAX_SIDE} per side)")
    return info


def _ffmpeg_reason(e: Exception, timeout: float | None = None) -> str:
    if isinstance(e, (av.error.ExitError, av.error.TimeoutError)):  # a connection or a read timed out
        return f"no answer within {NET_TIMEOUT if timeout is None else timeout:g} s"
    return getattr(e, "strerror", None) or str(e).splitlines()[0]


@dataclass(frozen=True)
class PacketIndex:
    """Per-frame facts read by demuxing only: presentation times (s since the first frame) and the
    presentation-order indices of keyframes."""

    times: tuple[float, ...]
    keyframes: tuple[int, ...]
    pts: tuple[int, ...] = ()  # sorted presentation timestamps (empty for raw streams)
    # Leading pictures: frames after a keyframe in decode order but shown before it (an open GOP,
    # x265's default), which PyNvVideoCodec's SimpleDecoder gets wrong (see open_source).
    leading: bool = False
    container: str = ""  # FFmpeg's name for the file's format ("mpegts", "matroska,webm", ...)

    @property
    def exact_seeks(self) -> bool:
        """Whether a seek to a keyframe's timestamp lands on that keyframe. MPEG-TS has no index:
        FFmpeg searches it by decode timestamps and landed frames after the keyframe (6 frames after
        the first of an x264 clip with B-frames), so a part decoded from there lost its first frames.
        A raw elementary stream (``.h264``) has no timestamps to seek to at all, and the keyframes its
        parser flags need not be where a decoder can start."""
        return self.container != "mpegts" and bool(self.pts)


def _file_key(path: str) -> tuple:
    """A file's identity for caches: its path and version (a file replaced under the same name is
    another file)."""
    st = os.stat(path)
    return path, st.st_mtime_ns, st.st_size


def scan_packets(path: str) -> PacketIndex:
    """The file's :class:`PacketIndex`, read once per version of the file: the planner and every
    source decoding a part of it share one scan."""
    return _scan_packets(*_file_key(path))


@lru_cache(maxsize=64)
def _scan_packets(path: str, mtime_ns: int, size: int) -> PacketIndex:
    with av.open(path) as c:
        stream = c.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in c.demux(stream) if p.size]
        tb, fps, container = stream.time_base, _frame_rate(c, stream) or 30.0, c.format.name
    if any(pts is None for pts, _ in packets):  # raw elementary streams (and some MPEG-PS packets) carry none
        return PacketIndex(tuple(i / fps for i in range(len(packets))),
                           tuple(i for i, (_, key) in enumerate(packets) if key), container=container)
    leading, key_pts = False, None
    for pts, key in packets:  # decode order
        key_pts = pts if key else key_pts
        leading = leading or (key_pts is not None and pts < key_pts)
    packets.sort()
    first = packets[0][0] if packets else 0
    return PacketIndex(tuple(float((pts - first) * tb) for pts, _ in packets),
                       tuple(i for i, (_, key) in enumerate(packets) if key),
                       tuple(pts for pts, _ in packets), leading, container)


class UndecodableStream(OSError):
    """A stream whose packets stopped decoding: reopened as a lost connection is."""


class PyAVSource:
    """FFmpeg (CPU) decode of one video or stream URL; see the module docstring.

    For URLs (rtsp, http, ...) reads time out after ``timeout`` seconds (default ``NET_TIMEOUT``) and a
    lost connection is reopened up to ``reconnects`` (``RECONNECTS``) times in a row with doubling
    back-off; a reconnection counts as a recovery once it has delivered frames for ``STEADY_S``. For a file served over
    the network, frames the server replays after a reconnect (by timestamp) are skipped, so none
    is delivered twice. A live feed (no frame count) is reopened whenever it ends and its clock
    continues; bound it with ``max_frames`` or stop it.
    """

    name = "pyav"
    pending: torch.cuda.Stream | None = None  # FrameBatch.stream of its batches: uploads are synchronised
    # (source, state, reason): connected, lost, reconnected, given up, decode_error; None: not told
    on_state: Callable[[str, str, str], None] | None = None
    keeps_open = False  # a file's container kept from one part (``batches`` with a range) to the next

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu", *,
                 threads: int = 0, max_frames: int | None = None, reconnects: int | None = None,
                 timeout: float | None = None, info: VideoInfo | None = None) -> None:
        self.info = info or probe(path)
        self.device = torch.device(device)
        self.threads = threads
        self.max_frames = max_frames
        self.reconnects = RECONNECTS if reconnects is None else reconnects
        self.timeout = NET_TIMEOUT if timeout is None else timeout
        self.decoded = 0
        self.corrupt_packets = 0
        self._failing_since: float | None = None  # the first packet that failed since the last frame
        self.reconnections = 0
        self._kept: av.container.InputContainer | None = None  # see keeps_open

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                admit: Callable[[], None] | None = None) -> Iterator[FrameBatch]:
        """Frames ``[start, stop)`` (default: all) in batches; a range seeks to the keyframe at or
        before ``start`` and numbers frames by their timestamp's rank in the container. ``admit``
        is called before each batch is stacked and uploaded (back-pressure: it may block)."""
        pin = self.device.type == "cuda"
        buf: list[np.ndarray] = []
        times: list[float] = []
        limit = self.max_frames if self.max_frames is not None else -1
        self.decoded = start
        frames = self._timed_frames() if start == 0 and stop is None else self._range(start, stop)
        # Each generator below closes the one it reads explicitly: a pass that ends early releases its
        # connection and decoder session now, not whenever the last reference to it goes (on the H200 a
        # stream's session came back to the pool only at a later garbage collection).
        with closing(frames):
            for frame, t in frames:
                buf.append(self._image(frame))
                times.append(t)
                if len(buf) >= batch_size and not self._more(frame):
                    yield self._batch(buf, times, pin, admit)
                    buf, times = [], []
                if self.decoded + len(buf) == limit:
                    break
        if buf:
            yield self._batch(buf, times, pin, admit)

    def _range(self, start: int, stop: int | None) -> Iterator[tuple[av.VideoFrame, float]]:
        index = scan_packets(self.info.path)
        stop = len(index.times) if stop is None else min(stop, len(index.times))
        keep = self.keeps_open and index.exact_seeks
        if keep and self._kept is None:
            self._kept = self._container()
            self._video_stream(self._kept)
        with nullcontext(self._kept) if keep else self._opened() as c:
            stream = c.streams.video[0] if keep else self._video_stream(c)
            if index.exact_seeks:  # else decoded from the start, the frames before ``start`` skipped
                key = max((k for k in index.keyframes if k <= start), default=0)
                c.seek(index.pts[key], stream=stream, backward=True)
            with closing(self._decode(c, stream)) as decoded:
                for n, frame in enumerate(decoded):
                    if not index.pts:  # no timestamps: decoded from the start, a frame's place is its rank
                        i = n
                    else:
                        i = bisect_left(index.pts, frame.pts) if frame.pts is not None else -1
                    if i < start:
                        continue
                    if i >= stop:
                        return
                    yield frame, index.times[i]

    def _timed_frames(self) -> Iterator[tuple[av.VideoFrame, float]]:
        """Frames with their time in seconds since the first one. Frames without a timestamp
        (raw streams, an RTSP stream's first frame) sit one frame period after the previous; when a
        live stream restarts its clock after a reconnect, the clock continues instead."""
        period = 1.0 / (self.info.fps or 30.0)
        base, offset, last = None, 0.0, -period
        with closing(self._frames()) as frames:
            for frame in frames:
                if frame.pts is None:
                    t = last + period
                else:
                    if base is None:
                        base, offset = frame.pts, last + period
                    t = offset + float((frame.pts - base) * frame.time_base)
                    if t <= last:
                        base, offset = frame.pts, last + period
                        t = offset
                last = t
                yield frame, t

    def _frames(self) -> Iterator[av.VideoFrame]:
        url = is_stream_url(self.info.path)
        replays = url and self.info.num_frames > 0  # a file served over the network, not a live feed
        last_pts, delivered, attempt = None, 0, 0
        while True:
            self._failing_since = None  # each connection's failures are its own
            since = None  # when this connection's first new frame came
            try:
                with self._opened() as c, closing(self._decode(c, self._video_stream(c))) as decoded:
                    for frame in decoded:
                        self._failing_since = None
                        if replays and last_pts is not None and frame.pts is not None and frame.pts <= last_pts:
                            continue  # replayed by the server after a reconnect
                        last_pts = frame.pts if frame.pts is not None else last_pts
                        delivered += 1
                        if since is None and url and self.on_state is not None:
                            self.on_state(self.info.path, "reconnected" if self.reconnections else "connected", "")
                        since = since or time.monotonic()
                        if attempt and time.monotonic() - since >= STEADY_S:
                            attempt = 0  # a connection that held is a recovery: the next loss starts over
                        yield frame
                if not url or (replays and delivered >= self.info.num_frames):
                    return
                # A live feed has no natural end (and a killed server looks like one): reconnect.
                reason = "stream ended early" if replays else "stream ended"
            except (av.error.FFmpegError, OSError) as e:
                if not url:
                    raise
                reason = _ffmpeg_reason(e, self.timeout)
            if attempt >= self.reconnects:
                if self.on_state is not None:
                    self.on_state(self.info.path, "given up", reason)
                raise VidpipeError(f"{self.info.path}: connection lost ({reason}); gave up after "
                                   f"{self.reconnects} reconnects")
            delay = 0.5 * 2 ** attempt
            attempt += 1
            self.reconnections += 1
            if self.on_state is not None:
                self.on_state(self.info.path, "lost", reason)
            log.warning("%s: connection lost (%s); reconnecting in %.1f s", self.info.path, reason, delay)
            time.sleep(delay)

    def _container(self) -> av.container.InputContainer:
        """One connection (or pass) of the source."""
        return _open(self.info.path, self.timeout)

    @contextmanager
    def _opened(self) -> Iterator[av.container.InputContainer]:
        """:meth:`_container`, closed at the block's end."""
        c = self._container()
        try:
            yield c
        finally:
            self._close(c)

    def _close(self, c: av.container.InputContainer) -> None:
        c.close()

    def close(self) -> None:
        """Closes the container kept between parts (``keeps_open``), if any; the source stays usable."""
        if self._kept is not None:
            kept, self._kept = self._kept, None
            self._close(kept)

    def _video_stream(self, c: av.container.InputContainer) -> av.video.stream.VideoStream:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"  # frame and slice threads
        stream.thread_count = self.threads
        return stream

    def _decode(self, c: av.container.InputContainer, stream) -> Iterator[av.VideoFrame]:
        for packet in c.demux(stream):
            try:
                yield from packet.decode()
            except av.error.EOFError:
                return
            except av.error.FFmpegError:  # a corrupt packet costs its frames, not the file
                self._undecodable()

    def _undecodable(self) -> None:
        """A packet that could not be decoded: counted. A stream (not a file, decoded to its end) whose
        packets have yielded no frame for ``timeout`` s since one failed is read as a lost connection
        and reopened with back-off: sending garbage, or a size change a decoder session cannot take."""
        self.corrupt_packets += 1
        if self.on_state is not None:
            self.on_state(self.info.path, "decode_error", "")
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > self.timeout and is_stream_url(self.info.path):
            self._failing_since = None
            raise UndecodableStream(f"no frame decoded for {self.timeout:g} s")

    def _image(self, frame: av.VideoFrame) -> np.ndarray:
        return frame.to_ndarray(format="rgb24")

    def _more(self, frame: av.VideoFrame) -> bool:
        """Another frame came out of the decoder with this one (kept in its batch)."""
        return False

    def _batch(self, frames: list[np.ndarray], times: list[float], pin: bool,
               admit: Callable[[], None] | None) -> FrameBatch:
        if admit is not None:
            admit()
        dev = self._stack(frames, pin)
        start = self.decoded
        self.decoded += len(frames)
        return FrameBatch(self.info.path, dev, list(range(start, start + len(frames))), times, stream=self.pending)

    def _stack(self, frames: list[np.ndarray], pin: bool) -> torch.Tensor:
        # Stacked straight into (pinned, for a GPU) memory: one host copy, then an async upload.
        host = torch.empty((len(frames), *frames[0].shape), dtype=torch.uint8, pin_memory=pin)
        np.stack(frames, out=host.numpy())
        return host.to(self.device, non_blocking=True).permute(0, 3, 1, 2)


def _nvdec_session(path: str, runtime: DeviceRuntime, slot: int | None):
    """``(SimpleDecoder for path, the stream its conversion kernels run on, fresh)``; ``fresh``:
    the session is at the file's first frame. With a ``slot``, sessions are kept per slot in the
    device's runtime: one already on this very file is reused as is (a seek away from any frame),
    another is re-pointed (``reconfigure_decoder``, a few ms) instead of created anew: a new
    session costs ~100 ms and creations do not run in parallel. The stream has high priority: its
    small per-frame kernels then run between the model's instead of queueing behind them."""
    import PyNvVideoCodec as nvc

    gpu = runtime.device.index if runtime.device.index is not None else torch.cuda.current_device()

    def create(stream: torch.cuda.Stream):
        with runtime.gate.setup(), runtime.create_lock:
            return nvc.SimpleDecoder(path, gpu_id=gpu, use_device_memory=True, cuda_stream=stream.cuda_stream,
                                     output_color_type=nvc.OutputColorType.RGBP)

    if slot is None:
        stream = torch.cuda.Stream(gpu, priority=-1)
        return create(stream), stream, True
    key = _file_key(path)
    dec, stream, held = runtime.take_session(slot) or (None, None, None)
    stream = stream or torch.cuda.Stream(gpu, priority=-1)
    fresh = True
    try:
        if dec is not None and held == key:
            fresh = False
        elif dec is not None:
            with runtime.gate.setup(), runtime.create_lock:
                dec.reconfigure_decoder(path)
            if len(dec) == 0:
                raise RuntimeError("empty stream after reconfigure")
        else:
            dec = create(stream)
    except Exception:
        with runtime.gate.setup():
            dec = None  # freed inside the gate: freeing a decoder's memory synchronises the device
        dec = create(stream)
    runtime.put_session(slot, (dec, stream, key))
    return dec, stream, fresh


class NvdecSource:
    """PyNvVideoCodec hardware decode of one video (or of frames ``[start, stop)`` of it).
    ``slot`` names a reusable decoder session (one per decode thread) in ``runtime``, the device's
    :class:`~vidpipe.runtime.DeviceRuntime` (a private one when None); None opens a private session,
    freed when the source is (outside the capture gate: beside a detector's captures, use a slot)."""

    name = "nvdec"

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cuda", *,
                 max_frames: int | None = None, info: VideoInfo | None = None,
                 runtime: DeviceRuntime | None = None, slot: int | None = None) -> None:
        self.info = info or probe(path)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise VidpipeError("the nvdec decoder needs a CUDA device")
        self.runtime = runtime or DeviceRuntime(self.device)
        try:
            self._dec, self.stream, fresh = _nvdec_session(self.info.path, self.runtime, slot)
        except Exception as e:
            raise VidpipeError(f"{self.info.path}: NVDEC cannot decode this stream ({e})") from None
        # Frame times come from the container: NVDEC's own timestamps are decode-ordered for
        # variable frame rate streams.
        self.times = scan_packets(self.info.path).times
        self.num_frames = min(len(self._dec), len(self.times))
        if max_frames is not None:
            self.num_frames = min(self.num_frames, max_frames)
        self.decoded = 0
        self._next = 0 if fresh else -1  # the index the decoder delivers next (-1: unknown, seek)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                admit: Callable[[], None] | None = None) -> Iterator[FrameBatch]:
        """Frames ``[start, stop)`` in batches; ``admit`` is called before each batch is stacked
        out of the decoder's surfaces into new device memory (back-pressure: it may block)."""
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        pos = start
        while pos < stop:
            # The first call after the session's set-up (opened, re-pointed or sought) is where NVDEC
            # meets the stream's first packets and creates its decoder, which would invalidate a
            # capture as the set-up itself would: it runs inside the gate too.
            with (self.runtime.gate.setup() if pos == start else nullcontext()), nvtx_range("decode"), \
                    torch.cuda.stream(self.stream):
                if pos != self._next:
                    self._dec.seek_to_index(pos)
                frames = self._dec.get_batch_frames(min(batch_size, stop - pos))
            if not frames:
                break
            n = len(frames)
            self.decoded += n
            self._next = pos + n
            # Stacked in the yield: a local would keep the chunk alive while the next one decodes.
            yield FrameBatch(self.info.path, self._stack(frames, admit), list(range(pos, pos + n)),
                             list(self.times[pos:pos + n]))
            pos += n

    def _stack(self, frames: list, admit: Callable[[], None] | None) -> torch.Tensor:
        if admit is not None:
            admit()
        with nvtx_range("stack"), torch.cuda.stream(self.stream):
            # The stack copies out of the decoder's surface pool, which the next call reuses.
            batch = torch.stack([_surface(f, self.stream) for f in frames])
            self.stream.synchronize()
        return batch


def _surface(frame, stream: torch.cuda.Stream) -> torch.Tensor:
    """A decoded frame's ``uint8 [3, H, W]`` in the session's surface (reused by its next decode).
    The capsule is asked for directly: torch.from_dlpack(frame) first tries keyword arguments this
    producer rejects, and each TypeError costs the GIL, per frame."""
    return torch.from_dlpack(frame.__dlpack__(stream=stream.cuda_stream))


# NVDEC's codecs, by FFmpeg's names, and the filter that writes MP4/MKV's length-prefixed NAL units as
# the start-code (Annex B) stream NVDEC's parser reads.
_PACKET_CODECS = {"h264": ("H264", "h264_mp4toannexb"), "hevc": ("HEVC", "hevc_mp4toannexb")}
_NO_PTS = -(1 << 62)  # a packet without a timestamp (an RTSP stream's first): NVDEC carries it to the frame


def _annexb_filter(codec: str, stream: av.video.stream.VideoStream) -> BitStreamFilterContext | None:
    """The filter a stream's packets go through before NVDEC, or None where they already are Annex B
    (MPEG-TS, RTSP: cameras). FFmpeg's filters pass such a stream through unchanged, by the test made
    here (theirs: no extradata, HEVC's shorter than an hvcC record, or extradata that starts with a
    start code); calling one anyway lets go of the GIL three times per packet, each a hand-over among
    the decode threads of many cameras."""
    extra = stream.codec_context.extradata or b""
    if extra[:3] == b"\0\0\1" or extra[:4] == b"\0\0\0\1" or len(extra) < (23 if codec == "hevc" else 1):
        return None
    return BitStreamFilterContext(_PACKET_CODECS[codec][1], stream)


@dataclass
class _DeviceFrame:
    """A frame NVDEC decoded from a demuxed packet: its own ``uint8 [3, H, W]`` copy on the device;
    ``more``: the same packet gave the frame after it too."""

    pts: int | None
    time_base: Fraction
    image: torch.Tensor
    more: bool


class NvdecStreamSource(PyAVSource):
    """A stream URL (or a file) read by FFmpeg as :class:`PyAVSource` reads it (timeouts,
    reconnects with back-off, timestamps, replayed frames skipped) and decoded by NVDEC packet by
    packet: H.264 and HEVC, the cameras' codecs. A session per connection (or pass of a file), kept
    in the runtime's pool when it ends for the next connection of its kind; its frames copied out of
    the session's surfaces on a high-priority stream; the frames are NVDEC's, bit-identical to
    :class:`NvdecSource`'s for the same bitstream. ``runtime``: the device's
    :class:`~vidpipe.runtime.DeviceRuntime`, whose capture gate the session's creation, first decodes
    and release go through (a private one when None)."""

    name = "nvdec"

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cuda", *,
                 max_frames: int | None = None, runtime: DeviceRuntime | None = None, **kwargs) -> None:
        super().__init__(path, device, max_frames=max_frames, **kwargs)
        if self.device.type != "cuda":
            raise VidpipeError("the nvdec decoder needs a CUDA device")
        if self.info.codec not in _PACKET_CODECS:
            raise VidpipeError(f"{self.info.path}: NVDEC reads H.264 and HEVC streams here, not {self.info.codec}")
        self.runtime = runtime or DeviceRuntime(self.device)
        gpu = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.stream = torch.cuda.Stream(gpu, priority=-1)  # as NvdecSource's: its kernels go between the model's

    def _session(self, stream: av.video.stream.VideoStream) -> tuple[object, tuple]:
        """A decoder for this connection and its pool key: an idle one of the same kind of stream
        (codec, size, reordering) from the runtime, else a new one. Its kernels run on the stream it
        was created with, which this source then takes as its own."""
        import PyNvVideoCodec as nvc

        ctx = stream.codec_context
        key = ("stream", self.info.codec, ctx.width, ctx.height, bool(ctx.has_b_frames))
        if (idle := self.runtime.take_session(key)) is not None:
            dec, self.stream = idle
            return dec, key
        latency = nvc.DisplayDecodeLatencyType
        with self.runtime.gate.setup(), self.runtime.create_lock:
            return nvc.CreateDecoder(
                gpuid=self.stream.device.index, codec=getattr(nvc.cudaVideoCodec, _PACKET_CODECS[self.info.codec][0]),
                cudacontext=0, cudastream=self.stream.cuda_stream, usedevicememory=True,
                outputColorType=nvc.OutputColorType.RGBP,
                # No reordering to wait for without B-frames: each frame comes out of its own packet.
                latency=latency.NATIVE if ctx.has_b_frames else latency.LOW), key

    def _decode(self, c: av.container.InputContainer, stream) -> Iterator[_DeviceFrame]:
        import PyNvVideoCodec as nvc

        dec, key = self._session(stream)
        annexb = _annexb_filter(self.info.codec, stream)
        started = False  # NVDEC creates its decoder at the first frame: a device-wide sync, gated until then
        flush = nvc.PacketData()  # sent when the pass ends early (imported now: not at interpreter exit)
        try:
            for packet in c.demux(stream):
                if annexb is not None:
                    packets = annexb.filter(packet if packet.size else None)  # None: the filter's end
                else:
                    packets = (packet,) if packet.size else ()  # size 0: the demuxer's end
                for p in packets:
                    data = np.frombuffer(p, np.uint8)  # read by Decode before it returns
                    pd = nvc.PacketData()
                    pd.bsl_data, pd.bsl = data.ctypes.data, data.size
                    pd.pts = p.pts if p.pts is not None else _NO_PTS
                    with self.runtime.gate.setup() if not started else nullcontext():
                        frames = self._packet(dec, pd, stream.time_base)
                    started = started or bool(frames)
                    yield from frames
            # An empty packet: the frames NVDEC still holds for reordering.
            flush = None
            yield from self._packet(dec, nvc.PacketData(), stream.time_base)
        finally:
            self._release(dec, key, flush)

    def _release(self, dec, key: tuple, flush) -> None:
        """Back to the runtime's pool for the next connection of this kind, at the end of the stream
        (``flush`` None: its empty packet was sent) or after it (``flush``, an empty packet, drops the
        frames it held). Freeing a session instead holds the GIL ~26 ms in PyNvVideoCodec's destructor
        and synchronises the device: each camera that ended stalled every other camera that long. A
        session that cannot be flushed is freed."""
        try:
            if flush is not None:
                with torch.cuda.stream(self.stream):
                    dec.Decode(flush)
        except Exception as e:  # noqa: BLE001 - a broken session is not reused
            log.warning("%s: NVDEC session not reused (%s)", self.info.path,
                        (str(e).strip().splitlines() or [type(e).__name__])[0])
            with self.runtime.gate.setup():
                dec = None  # freeing a session's memory synchronises the device
            return
        self.runtime.put_session(key, (dec, self.stream))

    def _packet(self, dec, pd, time_base: Fraction) -> list[_DeviceFrame]:
        with nvtx_range("decode"), torch.cuda.stream(self.stream):
            try:
                frames = dec.Decode(pd)
            except Exception:  # a damaged packet costs its frames, not the stream
                self._undecodable()
                return []
            # Copied before the next Decode reuses the surfaces (same stream, so in order).
            return [_DeviceFrame(None if f.timestamp == _NO_PTS else f.timestamp, time_base,
                                 _surface(f, self.stream).clone(), i < len(frames) - 1)
                    for i, f in enumerate(frames)]

    def _image(self, frame: _DeviceFrame) -> torch.Tensor:
        return frame.image

    def _more(self, frame: _DeviceFrame) -> bool:
        # With B-frames NVDEC gives some packets' frames two at a time: in one batch they reach the
        # engine together, where a live stream's second would replace its first under --live-policy
        # latest as if the GPU had fallen behind (4.4% of 16 served cameras' frames dropped on an H200,
        # 0.7% in one batch; ``vidpipe bench --suite live --live-cameras http``).
        return frame.more

    def _stack(self, frames: list[torch.Tensor], pin: bool) -> torch.Tensor:
        with torch.cuda.stream(self.stream):  # where the frames were copied: the stack runs after them
            # A live frame comes alone: its own copy is the batch.
            batch = frames[0][None] if len(frames) == 1 else torch.stack(frames)
            self.stream.synchronize()
        return batch


class FFmpegNvdecSource(PyAVSource):
    """A stream URL (or a file) read by FFmpeg as :class:`PyAVSource` reads it (timeouts, reconnects with
    back-off, timestamps) and decoded by FFmpeg on NVDEC too (PyAV's CUDA hardware decoding): demultiplexing and
    decoding run inside FFmpeg with the GIL released, each frame stays in CUDA memory (NV12) and becomes
    RGB on the device in one kernel (:mod:`vidpipe.yuv`), queued on the CUDA legacy default stream, where
    FFmpeg copies its decoded frames: nothing waits for the GPU per frame. A camera's frame thus costs
    this process a few short holds of the GIL instead of the per-packet Python and per-frame device
    synchronisation of :class:`NvdecStreamSource`. Batches carry that stream as ``FrameBatch.stream``.
    ``runtime``: the device's :class:`~vidpipe.runtime.DeviceRuntime`, whose capture gate a
    connection's first decode (where FFmpeg creates the NVDEC decoder) and its close go through."""

    name = "nvdec"
    # A worker decoding several parts of a file seeks in one container instead of opening one per part:
    # each opening makes an NVDEC decoder and its frame pool, and each closing frees them, which
    # synchronises the device.
    keeps_open = True

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cuda", *,
                 max_frames: int | None = None, runtime: DeviceRuntime | None = None, **kwargs) -> None:
        # One decoding thread: NVDEC decodes; FFmpeg's frame threads would only add threads per camera.
        super().__init__(path, device, max_frames=max_frames, threads=1, **kwargs)
        if self.device.type != "cuda":
            raise VidpipeError("the nvdec decoder needs a CUDA device")
        if self.info.codec not in _PACKET_CODECS:
            raise VidpipeError(f"{self.info.path}: NVDEC reads H.264 and HEVC streams here, not {self.info.codec}")
        if self.info.pix_fmt not in _NV12_FORMATS:
            raise VidpipeError(f"{self.info.path}: FFmpeg's NVDEC frames become RGB here from 8-bit 4:2:0 only, "
                               f"not {self.info.pix_fmt}")
        self.runtime = runtime or DeviceRuntime(self.device)
        self.pending = torch.cuda.default_stream(self.device)
        try:  # the CUDA side of FFmpeg's decoding, set up now: a failure is this path's, not the stream's
            self._hwaccel().create(av.codec.Codec(self.info.codec, "r"))
        except (av.error.FFmpegError, OSError, NotImplementedError) as e:
            raise VidpipeError(f"{self.info.path}: FFmpeg cannot decode on NVDEC here ({e})") from None

    def _hwaccel(self):
        from av.codec.hwaccel import HWAccel

        # FFmpeg wraps the context torch made current on this thread: its own primary context would need
        # other flags than torch's ("Operation not supported" once torch has started CUDA).
        torch.cuda.set_device(self.pending.device)
        return HWAccel("cuda", device=str(self.pending.device.index), allow_software_fallback=False,
                       is_hw_owned=True, options={"primary_ctx": "0", "current_ctx": "1"})

    def _container(self) -> av.container.InputContainer:
        return _open(self.info.path, self.timeout, hwaccel=self._hwaccel())

    def _video_stream(self, c: av.container.InputContainer) -> av.video.stream.VideoStream:
        stream = c.streams.video[0]
        stream.thread_count = self.threads
        return stream

    def _decode(self, c: av.container.InputContainer, stream) -> Iterator[_DeviceFrame]:
        started = False  # FFmpeg creates its NVDEC decoder at the first frame: a device-wide sync, gated
        for packet in c.demux(stream):
            with self.runtime.gate.setup() if not started else nullcontext():
                try:
                    frames = packet.decode()
                except av.error.EOFError:
                    return
                except av.error.FFmpegError:  # a damaged packet costs its frames, not the stream
                    self._undecodable()
                    continue
                images = [self._rgb(f) for f in frames]
            started = started or bool(frames)
            for i, (f, image) in enumerate(zip(frames, images)):
                yield _DeviceFrame(f.pts, f.time_base, image, i < len(frames) - 1)

    def _close(self, c: av.container.InputContainer) -> None:
        with self.runtime.gate.setup():  # the decoder and its frames freed: device-wide syncs too
            c.close()

    def _rgb(self, frame: av.VideoFrame) -> torch.Tensor:
        if frame.format.name != "cuda":
            raise VidpipeError(f"{self.info.path}: NVDEC did not decode this stream ({frame.format.name} frames)")
        planes = frame.planes
        # The planes' memory is the frame's until the conversion has read it: the frame goes back to
        # FFmpeg's pool once these are dropped, and its next copy into it queues behind the conversion.
        y, uv = torch.from_dlpack(planes[0].__dlpack__()), torch.from_dlpack(planes[1].__dlpack__())
        try:
            with torch.cuda.stream(self.pending):
                return nv12_to_rgb(y, uv, matrix(frame.colorspace == _BT709, frame.color_range == _FULL_RANGE))
        except ValueError as e:  # a stream that changed to another format (10-bit) on a reconnect
            raise VidpipeError(f"{self.info.path}: FFmpeg's NVDEC frames become RGB here from 8-bit 4:2:0 only ({e})"
                               ) from None

    def _image(self, frame: _DeviceFrame) -> torch.Tensor:
        return frame.image

    def _more(self, frame: _DeviceFrame) -> bool:
        return frame.more  # as NvdecStreamSource's: frames of one packet go together

    def _stack(self, frames: list[torch.Tensor], pin: bool) -> torch.Tensor:
        with torch.cuda.stream(self.pending):
            return frames[0][None] if len(frames) == 1 else torch.stack(frames)


_BT709, _FULL_RANGE = 1, 2  # FFmpeg's AVCOL_SPC_BT709 and AVCOL_RANGE_JPEG
# Software formats whose NVDEC frames are NV12 (8-bit 4:2:0); "": a stream not probed to its format yet.
_NV12_FORMATS = {"", "yuv420p", "yuvj420p", "nv12"}


def ffmpeg_nvdec_available() -> bool:
    """Whether this PyAV's FFmpeg decodes on NVDEC into CUDA frames that DLPack hands to torch (PyAV 18+,
    built with CUDA), on a machine with a GPU."""
    if not torch.cuda.is_available():
        return False
    try:
        from av.codec.hwaccel import hwdevices_available
        from av.video.plane import VideoPlane
    except ImportError:
        return False
    return "cuda" in hwdevices_available() and hasattr(VideoPlane, "__dlpack__")


def nvdec_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import PyNvVideoCodec  # noqa: F401
    except Exception:
        return False
    return True


def resolve_decoder(decoder: Decoder, device: torch.device) -> Literal["nvdec", "pyav"]:
    """``auto`` -> nvdec when the device is CUDA and PyNvVideoCodec imports, else pyav (logged)."""
    if decoder not in ("auto", "nvdec", "pyav"):
        raise VidpipeError(f"unknown decoder {decoder!r}; choose auto, nvdec or pyav")
    if decoder == "auto":
        chosen = "nvdec" if device.type == "cuda" and nvdec_available() else "pyav"
        if device.type == "cuda" and chosen == "pyav":  # a GPU run on the CPU decoder: say so
            log.warning("decoder auto: PyNvVideoCodec unavailable, decoding with FFmpeg on the CPU")
        else:
            log.info("decoder auto: using %s", chosen)
        return chosen
    if decoder == "nvdec" and not (device.type == "cuda" and nvdec_available()):
        raise VidpipeError("--decoder nvdec needs a CUDA device and PyNvVideoCodec (pip install vidpipe[nvdec])")
    return decoder


def open_source(path: str, decoder: Literal["nvdec", "pyav"], device: torch.device, *,
                max_frames: int | None = None, info: VideoInfo | None = None,
                fallback: bool = False, runtime: DeviceRuntime | None = None,
                slot: int | None = None, stream_decoder: StreamDecoder = "auto", realtime: bool = False
                ) -> PyAVSource | NvdecSource | NvdecStreamSource | FFmpegNvdecSource:
    """A source for ``path``; with ``fallback``, a stream NVDEC refuses (codec, size) is decoded by
    FFmpeg instead, with a warning. On NVDEC a file is decoded by PyNvVideoCodec's SimpleDecoder
    (seekable, frames in batches) where it decodes the file exactly, and anything else (stream URLs,
    files it cannot take) by FFmpeg on NVDEC (:class:`FFmpegNvdecSource`, where PyAV can) or by FFmpeg's
    demuxer and PyNvVideoCodec packet by packet (:class:`NvdecStreamSource`): ``stream_decoder="auto"``
    takes FFmpeg for stream URLs and ``realtime`` files, their stand-ins (a camera then costs a few short
    holds of the GIL), and the packet path for other files, whose parts it decoded 3.6 times as fast
    (an open-GOP 1080p HEVC clip on an H100: 2,046 frames/s end to end against 563;
    ``vidpipe bench CLIP --stream-decoder ffmpeg|pynvvideocodec``). ``realtime`` files SimpleDecoder
    takes stay on it: one call per frame, where the packet path's Python per frame held 32 live cameras
    at 28.7 frames/s each on the H200 (30.0 before). SimpleDecoder cannot
    take files with leading pictures: it gave wrong frames for them (HEVC open GOPs, x265's default:
    mean difference 8-16 levels from FFmpeg's frames on those, 0.7 on every other frame and on the packet
    path's), nor files it cannot seek in exactly: of MPEG-TS files it counted every frame and gave none
    (H.264 with and without B-frames; MP4 and Matroska whole); raw elementary streams, which have no
    timestamps to seek by, go the same way (``tests/test_sources.py``)."""
    info = info or probe(path)  # one that cannot be read fails here, not as NVDEC's refusal
    if decoder == "nvdec":
        try:
            simple = not is_stream_url(path) and not (index := scan_packets(path)).leading and index.exact_seeks
            if stream_decoder == "auto":
                stream_decoder = "ffmpeg" if realtime or is_stream_url(path) else "pynvvideocodec"
            if not simple and stream_decoder == "ffmpeg" and ffmpeg_nvdec_available():
                try:
                    return FFmpegNvdecSource(path, device, max_frames=max_frames, info=info, runtime=runtime)
                except VidpipeError as e:  # PyNvVideoCodec decodes its packets instead
                    log.warning("%s; decoding each packet with PyNvVideoCodec instead", e)
            if not simple:
                return NvdecStreamSource(path, device, max_frames=max_frames, info=info, runtime=runtime)
            return NvdecSource(path, device, max_frames=max_frames, info=info, runtime=runtime, slot=slot)
        except VidpipeError as e:
            if not fallback:
                raise
            log.warning("%s; decoding it with FFmpeg on the CPU instead", e)
    return PyAVSource(path, device, max_frames=max_frames, info=info)
