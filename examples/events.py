"""A live run's events, read from the MQTT broker it publishes to: line crossings, zone counts, each
camera's state and status (run vidpipe with --mqtt mqtt://HOST:PORT/PREFIX).

Usage: python examples/events.py mqtt://localhost:1883/site [SECONDS]
"""

import json
import sys
import time
import urllib.parse

import paho.mqtt.client as mqtt

url = urllib.parse.urlsplit(sys.argv[1])
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else float("inf")
prefix = url.path.strip("/") or "vidpipe"


def on_message(client, userdata, message):
    _, camera, kind = message.topic.rsplit("/", 2)
    event = json.loads(message.payload)
    if kind == "crossing":
        print(f"{camera}: {event['class_name']} #{event['track_id']} crossed {event['line']} "
              f"({event['direction']}) at frame {event['frame']}", flush=True)
    elif kind == "state":
        print(f"{camera}: {event['state']} {event['reason']}".rstrip(), flush=True)
    elif kind == "status":
        print(f"{camera}: {event['fps']} frames/s, p99 {event['latency_p99_ms']} ms, {event['dropped']} dropped",
              flush=True)


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
client.on_message = on_message
client.connect(url.hostname, url.port or 1883)
client.subscribe(f"{prefix}/#", qos=1)
client.loop_start()
print(f"listening on {prefix}/#", flush=True)
try:
    time.sleep(seconds)
except KeyboardInterrupt:
    pass
client.loop_stop()
