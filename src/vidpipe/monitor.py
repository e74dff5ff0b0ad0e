"""What a run reports while it goes on: per source, its state, its figures, its events and its latest
annotated frame, handed to the MQTT events, the Prometheus metrics and the live view.

In, from the engine (its decode threads and its writer's thread): :meth:`Monitor.state` (a source
connected, lost, reconnected, given up; a packet that could not be decoded), :meth:`Monitor.frames`
(a result's frames: indices, capture times and latencies, detections as JSON Lines text, zone counts,
line crossings), :meth:`Monitor.preview` (a JPEG of a frame with its detections drawn, for the sources
:meth:`Monitor.wants_preview` asks for, a few a second) and :meth:`Monitor.ended`. Out:
:class:`~vidpipe.events.Events` messages (``crossing``, ``zones`` when they change, ``state``, a
``status`` every ``STATUS_S``, ``detections`` when asked), :class:`~vidpipe.metrics.Metrics`
counters, and for :class:`~vidpipe.view.View` :meth:`Monitor.cameras` and :meth:`Monitor.jpeg`.
Sources are named by ``name_of`` (their outputs' names: no credentials). Thread-safe; no torch.

A run on several processes reports through a :class:`Relay` in each worker, whose calls reach the
parent's Monitor as picklable messages (:meth:`Monitor.relayed`): one set of events, metrics and view
for every camera, whichever process runs it.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .inputs import redact

STATUS_S = 5.0  # a source's status message, at most this often
WINDOW_S = 10.0  # frames/s and p99 latency are of the last WINDOW_S seconds
PREVIEW_FPS = 2.0  # annotated frames a source shows a second, at most ...
PREVIEWS_PER_S = 32.0  # ... and all sources together (each costs a draw and a JPEG encode)
QUEUES_S = 1.0  # a worker's queue depths reach the parent at most this often


@dataclass
class _Source:
    name: str
    state: str = "starting"
    frames: int = 0
    dropped: int = 0
    last_index: int | None = None
    recent: collections.deque = field(default_factory=collections.deque)  # (time.time() written, latency s)
    status_at: float = 0.0
    preview_at: float = 0.0
    jpeg: bytes | None = None
    jpeg_frame: int | None = None
    lines: dict | None = None
    zones: dict | None = None


class Monitor:
    """See the module docstring. ``events``, ``metrics``: where what happens goes (None: nowhere);
    ``detections``: publish each frame's detections too (``--mqtt-detections``)."""

    def __init__(self, name_of: Callable[[str], str], events=None, metrics=None, detections: bool = False,
                 previews: bool = False) -> None:
        self.name_of, self.events, self.metrics, self.detections = name_of, events, metrics, detections
        self.previews = previews  # a view shows the sources' frames: the engine draws a few a second
        self.previews_per_s = PREVIEWS_PER_S
        self._lock = threading.Lock()
        self._sources: dict[str, _Source] = {}
        self._by_name: dict[str, str] = {}
        self._depths: dict[tuple[int, str], float] = {}  # (worker, queue) -> its depth, relayed

    def _source(self, source: str) -> _Source:
        s = self._sources.get(source)
        if s is None:
            s = self._sources[source] = _Source(self.name_of(source))
            self._by_name[s.name] = source
        return s

    def _publish(self, s: _Source, kind: str, payload: dict) -> None:
        if self.events is not None:
            self.events.publish(s.name, kind, payload)

    # from the engine ------------------------------------------------------------------------------
    def watch_queue(self, name: str, depth: Callable[[], float]) -> None:
        """A queue of the run whose depth the metrics report."""
        if self.metrics is not None:
            self.metrics.watch_queue(name, depth)

    def state(self, source: str, state: str, reason: str = "") -> None:
        """``state``: connected, lost, reconnected, given up, ended, or decode_error (a packet)."""
        with self._lock:
            s = self._source(source)
            if state == "decode_error":
                if self.metrics is not None:
                    self.metrics.decode_errors.labels(s.name).inc()
                return
            s.state = state
            if state == "lost" and self.metrics is not None:
                self.metrics.reconnects.labels(s.name).inc()
            self._publish(s, "state", {"video": redact(source), "state": state, "reason": redact(reason),
                                       "at": round(time.time(), 3)})

    def frames(self, source: str, indices: list[int], times: list[float], captured: list[float] | None,
               latency: list[float] | None, text: str | None = None, counted: list[dict] | None = None,
               crossings: list[list[dict]] | None = None) -> None:
        """One result's frames (``text``: their JSON Lines, for ``--mqtt-detections``; with lines and
        zones, per frame ``counted``, the analytics' counts, and ``crossings``, the tracks that crossed a
        line in that frame: line, track_id, class_id, class_name, direction)."""
        now = time.time()
        with self._lock:
            s = self._source(source)
            if s.state in ("starting", "lost", "reconnected"):
                s.state = "running"
            gap = 0 if s.last_index is None else max(0, indices[0] - s.last_index - 1)
            s.dropped += gap
            s.frames += len(indices)
            s.last_index = indices[-1]
            for lat in latency if latency is not None else [None] * len(indices):
                s.recent.append((now, lat))
            while s.recent and s.recent[0][0] < now - WINDOW_S:
                s.recent.popleft()
            if self.metrics is not None:
                self.metrics.frames.labels(s.name).inc(len(indices))
                if gap:
                    self.metrics.dropped.labels(s.name).inc(gap)
                for lat in latency if latency is not None else ():
                    self.metrics.latency.labels(s.name).observe(lat)
            video = redact(source)
            for i, (frame, t) in enumerate(zip(indices, times)):
                at = {"video": video, "frame": frame, "time": round(t, 6)}
                if captured is not None:
                    at["captured_at"] = round(captured[i], 6)
                for crossing in crossings[i] if crossings is not None else ():
                    self._publish(s, "crossing", {**at, **crossing})
                if counted is None:
                    continue
                s.lines = counted[i].get("lines", s.lines)
                if "zones" in counted[i] and counted[i]["zones"] != s.zones:
                    s.zones = counted[i]["zones"]
                    self._publish(s, "zones", {**at, "zones": s.zones})
            if text is not None and self.detections:
                for line in text.splitlines():
                    self._publish(s, "detections", json.loads(line))
            if now - s.status_at >= STATUS_S:
                s.status_at = now
                self._publish(s, "status", self._status(s))

    def wants_preview(self, source: str) -> bool:
        """Whether the engine should draw this source's next frame for the view (a few a second)."""
        now = time.monotonic()
        with self._lock:
            s = self._source(source)
            rate = min(PREVIEW_FPS, self.previews_per_s / max(len(self._sources), 1))
            if now - s.preview_at < 1.0 / rate:
                return False
            s.preview_at = now
            return True

    def preview(self, source: str, frame: int, jpeg: bytes) -> None:
        with self._lock:
            s = self._source(source)
            s.jpeg, s.jpeg_frame = jpeg, frame

    def ended(self, source: str, error: str | None) -> None:
        with self._lock:
            s = self._source(source)
            s.state = "given up" if error else "ended"
            self._publish(s, "state", {"video": redact(source), "state": s.state, "reason": redact(error or ""),
                                       "at": round(time.time(), 3)})
            self._publish(s, "status", self._status(s))

    # from the workers of a run on several processes -------------------------------------------
    def relayed(self, worker: int, message: tuple) -> None:
        """A :class:`Relay`'s message from process ``worker``: its engine's call, made here."""
        method, args = message
        if method == "queues":
            for name, depth in args[0].items():
                key = (worker, name)
                if key not in self._depths and self.metrics is not None:
                    self.metrics.watch_queue(f"{name} (process {worker})", lambda k=key: self._depths[k])
                self._depths[key] = depth
        elif method in ("state", "frames", "preview", "ended"):
            getattr(self, method)(*args)

    # for the view ----------------------------------------------------------------------------------
    def _status(self, s: _Source) -> dict:
        lat = sorted(x for _, x in s.recent if x is not None)
        span = (s.recent[-1][0] - s.recent[0][0]) if len(s.recent) > 1 else 0.0
        return {"name": s.name, "state": s.state, "frames": s.frames, "dropped": s.dropped,
                "fps": round((len(s.recent) - 1) / span, 2) if span > 0 else 0.0,
                "latency_p99_ms": round(1e3 * lat[int(0.99 * (len(lat) - 1))], 1) if lat else 0.0,
                "frame": s.jpeg_frame, "lines": s.lines, "zones": s.zones}

    def cameras(self) -> list[dict]:
        with self._lock:
            return [self._status(s) for s in self._sources.values() if s.state not in ("ended", "removed")]

    def jpeg(self, name: str) -> bytes | None:
        with self._lock:
            source = self._by_name.get(name)
            return None if source is None else self._sources[source].jpeg

    def source_of(self, name: str) -> str | None:
        """The source shown as ``name`` (the view removes cameras by name: URLs may hold credentials)."""
        with self._lock:
            return self._by_name.get(name)


class Relay(Monitor):
    """A worker process's monitor: its engine's calls sent on by ``send(message)`` to the parent's
    :class:`Monitor` (:meth:`Monitor.relayed`), with the JSON Lines text only when the parent publishes
    detections, and its queue depths at most every QUEUES_S. Previews are chosen here, at ``share`` of
    the parent's rate (the worker's part of the processes)."""

    def __init__(self, send: Callable[[tuple], None], detections: bool, previews: bool, share: float) -> None:
        super().__init__(str, detections=detections, previews=previews)
        self.previews_per_s = PREVIEWS_PER_S * share
        self._send = send
        self._queues: dict[str, Callable[[], float]] = {}
        self._queues_at = 0.0

    def watch_queue(self, name: str, depth: Callable[[], float]) -> None:
        self._queues[name] = depth

    def state(self, source: str, state: str, reason: str = "") -> None:
        self._send(("state", (source, state, reason)))

    def frames(self, source: str, indices: list[int], times: list[float], captured: list[float] | None,
               latency: list[float] | None, text: str | None = None, counted: list[dict] | None = None,
               crossings: list[list[dict]] | None = None) -> None:
        self._send(("frames", (source, indices, times, captured, latency, text if self.detections else None,
                               counted, crossings)))
        now = time.monotonic()
        if self._queues and now - self._queues_at >= QUEUES_S:
            self._queues_at = now
            self._send(("queues", ({name: depth() for name, depth in self._queues.items()},)))

    def preview(self, source: str, frame: int, jpeg: bytes) -> None:
        self._send(("preview", (source, frame, jpeg)))

    def ended(self, source: str, error: str | None) -> None:
        self._send(("ended", (source, error)))
