"""Prometheus metrics of a run: per source, per process, per GPU, served for a scraper.

In: ``--metrics [HOST:]PORT`` and, from :class:`~vidpipe.monitor.Monitor`, each source's frames,
drops, latencies, reconnects and decode errors, plus the process's queue depths (callables read at
each scrape). Out: an HTTP endpoint (prometheus_client's own server, ``pip install "vidpipe[service]"``)
on 127.0.0.1 unless a host is given, serving:

- ``vidpipe_frames_total{source}``, ``vidpipe_dropped_frames_total{source}`` (``--live-policy latest``),
  ``vidpipe_latency_seconds{source}`` (histogram, capture to written), ``vidpipe_reconnects_total{source}``,
  ``vidpipe_decode_errors_total{source}`` (packets that could not be decoded);
- ``vidpipe_queue_depth{queue}`` (decoded items waiting for the engine, results waiting for the writer);
- ``vidpipe_gpu_utilization_ratio{gpu}``, ``vidpipe_nvdec_utilization_ratio{gpu}`` (NVML, sampled every
  ``SAMPLE_S``; absent without NVML);
- ``vidpipe_events_dropped`` (MQTT messages dropped so far while the broker was down or slow).

Sources are named as their outputs are (never with a URL's credentials).
"""

from __future__ import annotations

import threading
from typing import Callable

from .errors import VidpipeError

SAMPLE_S = 1.0  # GPU and NVDEC utilisation sampled this often
# Capture-to-written latency buckets, s: a live frame's is tens of ms, a camera falling behind's seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


def listen_address(text: str, flag: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); the host is 127.0.0.1 unless given."""
    host, _, port = text.rpartition(":")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise VidpipeError(f"{flag} {text}: expected PORT or HOST:PORT with a port from 1 to 65535")
    return host.strip("[]") or "127.0.0.1", int(port)


class Metrics:
    """A registry of the run's metrics and its HTTP server; see the module docstring."""

    def __init__(self, host: str, port: int, queues: dict[str, Callable[[], float]] | None = None) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise VidpipeError('--metrics needs prometheus-client: pip install "vidpipe[service]"') from None
        self.registry = registry = prom.CollectorRegistry()
        self.frames = prom.Counter("vidpipe_frames", "Frames detected and written", ["source"], registry=registry)
        self.dropped = prom.Counter("vidpipe_dropped_frames", "Live frames dropped for newer ones (--live-policy "
                                    "latest)", ["source"], registry=registry)
        self.latency = prom.Histogram("vidpipe_latency_seconds", "From a live frame's capture to its result "
                                      "written", ["source"], buckets=LATENCY_BUCKETS, registry=registry)
        self.reconnects = prom.Counter("vidpipe_reconnects", "Connections lost and reopened", ["source"],
                                       registry=registry)
        self.decode_errors = prom.Counter("vidpipe_decode_errors", "Packets that could not be decoded", ["source"],
                                          registry=registry)
        self.events_dropped = prom.Gauge("vidpipe_events_dropped", "MQTT messages dropped so far (broker down or "
                                         "slow)", registry=registry)
        self.queue = prom.Gauge("vidpipe_queue_depth", "Items waiting in the run's queues", ["queue"],
                                registry=registry)
        for name, depth in (queues or {}).items():
            self.queue.labels(name).set_function(depth)
        self.gpu = prom.Gauge("vidpipe_gpu_utilization_ratio", "GPU busy (NVML)", ["gpu"], registry=registry)
        self.nvdec = prom.Gauge("vidpipe_nvdec_utilization_ratio", "NVDEC busy (NVML)", ["gpu"], registry=registry)
        try:
            self.server, self._thread = prom.start_http_server(port, addr=host, registry=registry)
        except OSError as e:
            raise VidpipeError(f"--metrics {host}:{port}: cannot listen there ({e.strerror or e})") from None
        self._stop = threading.Event()
        threading.Thread(target=self._sample, name="vidpipe-metrics", daemon=True).start()

    def watch_queue(self, name: str, depth: Callable[[], float]) -> None:
        self.queue.labels(name).set_function(depth)

    def _sample(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # noqa: BLE001 - no NVML (a CPU machine): no GPU metrics
            return
        while not self._stop.wait(SAMPLE_S):
            for i, h in enumerate(handles):
                self.gpu.labels(str(i)).set(pynvml.nvmlDeviceGetUtilizationRates(h).gpu / 100)
                self.nvdec.labels(str(i)).set(pynvml.nvmlDeviceGetDecoderUtilization(h)[0] / 100)

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
