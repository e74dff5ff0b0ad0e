"""Events to an MQTT broker: what a live run sees, as messages where deployments read them.

In: ``--mqtt mqtt://[user:pass@]host[:port]/prefix`` and, from :class:`~vidpipe.monitor.Monitor`,
``publish(source name, kind, payload dict)``. Out: JSON messages on topics ``prefix/<source>/<kind>``
at QoS 1 through the paho-mqtt client (``pip install "vidpipe[service]"``), its network loop on a
thread of its own.

A broker that is down or slow never stalls detection: publishing only queues a message (at most
``QUEUE`` waiting; past that a message is dropped and counted, :attr:`Events.dropped`), and the client
reconnects with back-off (1 s doubling to 60 s) on its own thread. The broker's password is the
client's alone: it appears in no topic, payload or log line.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass

from .errors import VidpipeError

log = logging.getLogger(__name__)

QUEUE = 10_000  # messages waiting for the broker, at most (~1 minute of 16 cameras' status and crossings)


@dataclass(frozen=True)
class Broker:
    """An ``--mqtt`` URL: host, port, topic prefix, and the credentials kept for the client only."""

    host: str
    port: int
    prefix: str
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> Broker:
        u = urllib.parse.urlsplit(url)
        if u.scheme != "mqtt" or not u.hostname:
            raise VidpipeError("--mqtt: expected mqtt://[user:password@]host[:port]/prefix, e.g. "
                               "mqtt://localhost:1883/vidpipe")
        try:
            port = u.port or 1883
        except ValueError:
            raise VidpipeError("--mqtt: the port must be a number from 1 to 65535") from None
        prefix = u.path.strip("/") or "vidpipe"
        if any(c in prefix for c in "#+") or not prefix.isprintable():
            raise VidpipeError("--mqtt: the topic prefix may not hold MQTT wildcards (# +)")
        return cls(u.hostname, port, prefix, urllib.parse.unquote(u.username) if u.username else None,
                   urllib.parse.unquote(u.password) if u.password else None)


class Events:
    """Publishes a live run's events to one broker; see the module docstring."""

    def __init__(self, broker: Broker) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise VidpipeError('--mqtt needs paho-mqtt: pip install "vidpipe[service]"') from None
        self.broker = broker
        self.dropped = 0  # messages refused: the queue was full (the broker down or slow)
        self.sent = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
        if broker.username is not None:
            self.client.username_pw_set(broker.username, broker.password)
        self.client.max_queued_messages_set(QUEUE)
        self.client.reconnect_delay_set(min_delay=1, max_delay=60)
        self.client.on_connect = lambda *a: log.info("--mqtt: connected to %s:%d", broker.host, broker.port)
        self.client.connect_async(broker.host, broker.port, keepalive=30)
        self.client.loop_start()

    def publish(self, source: str, kind: str, payload: dict) -> None:
        """``payload`` as JSON on ``prefix/<source>/<kind>`` (QoS 1); never blocks."""
        topic = f"{self.broker.prefix}/{source}/{kind}"
        info = self.client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1)
        with self._lock:
            if info.rc == 0:
                self.sent += 1
                self._last = info
            else:  # MQTT_ERR_QUEUE_SIZE: the queue is full
                self.dropped += 1

    _last = None  # the newest message queued: at close, delivered means the queue is (QoS 1, in order)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout`` s: a broker that is down gets no more), then disconnect."""
        deadline = time.monotonic() + timeout
        while self._last is not None and not self._last.is_published() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.client.disconnect()
        self.client.loop_stop()
