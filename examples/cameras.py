"""Cameras added and removed while a run goes on, from Python: one LiveSources set, one output each.

Stand-in cameras: VIDEO served as live streams over loopback HTTP (vidpipe.cameras.CameraServer);
with real cameras, put their rtsp:// URLs in the set instead.
Usage: python examples/cameras.py VIDEO OUTDIR
"""

import sys
import threading
import time
from pathlib import Path

from vidpipe import Config, Detector
from vidpipe.cameras import CameraServer
from vidpipe.engine import LiveSources, run
from vidpipe.sinks import open_sink

def main() -> None:
    video, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    detector = Detector(Config(weights="random"))

    with CameraServer(video) as server:
        first, second = server.url(1), server.url(2)
        cams = LiveSources([first])  # or LiveSources.watch("cams.txt"), a file followed as it changes

        def sink(info):
            name = info.path.rsplit("/", 1)[-1].removesuffix(".ts")
            return open_sink("jsonl", out / f"{name}.jsonl", info.path, info.width, info.height, detector.classes)

        def operator():  # any thread may change the set
            time.sleep(3)
            cams.add(second)  # starts within a second
            time.sleep(3)
            cams.remove(first)  # closed, its output finished, while the other runs on
            time.sleep(2)
            cams.close()  # every source closed: run() returns

        threading.Thread(target=operator).start()
        report = run(detector, cams, sink)

    for end in report.videos:
        print(f"{end.path}: {end.decoded} frames, {end.dropped} dropped to stay current")
    print(sorted(p.name for p in out.glob("*.jsonl")))


if __name__ == "__main__":  # the camera server starts a process: spawned, it imports this file
    main()
