"""Where a live camera's frame time goes on this machine, for each way of decoding a camera.

K stand-in cameras (``vidpipe.cameras.CameraServer``: the clip served over loopback HTTP as live
MPEG-TS at its frame rate) are read by vidpipe's decode pool (``FrameProducer``, as ``vidpipe detect``
reads them) with each stream decoder, and one consumer thread takes frames as the engine's thread
does (its turn: every ready frame, the device waited for once, the frames copied into a batch), with
no model. Per row: what the cameras got (frames/s per stream, frames dropped for newer ones), what it
cost (CPU per frame, cores busy, NVDEC), and what waiting looks like on this machine:

* thread wake-up: one thread sets an Event another waits on (idle machine), median / p99;
* sleep 1 ms overshoot while the cameras run: a thread coming back from a blocking call waits this
  long for the OS and then for the GIL (every decode call, copy and write is such a call);
* the camera server's lateness: packets it sent after their time (a figure of the server, not vidpipe);
* consumer turn: frames per turn, turn time.

Usage: python bench/live_probe.py CLIP [--cameras 16,48,64] [--seconds 12] [--decoders ffmpeg,pynvvideocodec]
(a GPU with NVDEC; PyAV built with CUDA for ``ffmpeg``). Prints a Markdown table; ``--json FILE`` too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time

import torch

from vidpipe.cameras import CameraServer
from vidpipe.engine import Chunk, FrameProducer, UnitEnd
from vidpipe.engine.decode import DONE
from vidpipe.gil import switch_interval
from vidpipe.profiling import GpuUtilization, HostCpu, machine_facts
from vidpipe.runtime import DeviceRuntime

WARM_S = 3.0  # each run's first seconds (probes, decoder start) are left out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1)))] if xs else float("nan")


def wake_latency(n: int = 2000) -> tuple[float, float]:
    """Median and p99 (us) from ``Event.set()`` on one thread to the waiting thread running."""
    ping, pong, stamps, out = threading.Event(), threading.Event(), [0.0], []

    def waiter() -> None:
        for _ in range(n):
            ping.wait()
            ping.clear()
            out.append(time.perf_counter() - stamps[0])
            pong.set()

    t = threading.Thread(target=waiter)
    t.start()
    for _ in range(n):
        time.sleep(0.0002)
        stamps[0] = time.perf_counter()
        ping.set()
        pong.wait()
        pong.clear()
    t.join()
    return 1e6 * statistics.median(out), 1e6 * pct(out, 0.99)


class Overshoot(threading.Thread):
    """Sleeps 1 ms again and again; records by how much each sleep overran (OS wake-up + the GIL)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop, self.late = threading.Event(), []

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            time.sleep(0.001)
            self.late.append(time.perf_counter() - t0 - 0.001)


def probe(urls: list[str], decoder: str, seconds: float, device: torch.device) -> dict:
    """One row: ``urls`` read with ``decoder`` (a stream decoder on NVDEC, or ``pyav`` on the CPU)."""
    runtime = DeviceRuntime(device)
    producer = FrameProducer(urls, "pyav" if decoder == "pyav" else "nvdec", device, 64, runtime=runtime,
                             stream_decoder=decoder)
    compute = torch.cuda.Stream(device) if device.type == "cuda" else None
    h = w = 0
    buf = None
    got: dict[int, list[tuple[float, int]]] = {}  # unit seq -> (captured, frame index) of each frame taken
    latency, turns, turn_s = [], [], []  # latency: (captured, seconds until taken)
    canary, cpu, util = Overshoot(), HostCpu(), GpuUtilization()
    t0, wall0 = time.perf_counter(), time.time()
    c0 = f0 = None  # process CPU time and frames taken when the warm-up ended
    with switch_interval(0.0005), cpu, util:
        canary.start()
        row = 0
        while time.perf_counter() - t0 < seconds:
            items = producer.get_many(timeout=0.05)
            if items is DONE:
                break
            start = time.perf_counter()
            chunks = [i for i in items if isinstance(i, Chunk)]
            for stream in {c.batch.stream for c in chunks} - {None}:
                compute.wait_stream(stream)
            now = time.time()
            with torch.cuda.stream(compute) if compute is not None else contextlib.nullcontext():
                for c in chunks:
                    frames = c.batch.frames
                    if buf is None or frames.shape[-2:] != (h, w):
                        h, w = frames.shape[-2:]
                        buf = torch.empty(64, 3, h, w, dtype=torch.uint8, device=device)
                    n = min(len(frames), 64 - row)
                    if compute is not None:
                        frames.record_stream(compute)
                    buf[row:row + n].copy_(frames[:n])
                    row = (row + n) % 64
                    got.setdefault(c.unit.seq, []).extend(zip(c.batch.captured or [now] * n, c.batch.indices))
                    latency += [(t, now - t) for t in c.batch.captured or ()]
                    producer.free(c.admitted)
            for i in items:
                if isinstance(i, UnitEnd):
                    producer.release()
            if chunks:
                turns.append(len(chunks))
                turn_s.append(time.perf_counter() - start)
            if c0 is None and time.perf_counter() - t0 >= WARM_S:
                c0, f0 = time.process_time(), sum(map(len, got.values()))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        canary.stop.set()
        elapsed, cpu_s = time.perf_counter() - t0, time.process_time() - (c0 or 0.0)
    producer.close()
    runtime.close()
    t_warm = wall0 + WARM_S
    rates, dropped, frames = [], 0, 0
    for seq, xs in got.items():
        steady = [(c, i) for c, i in xs if c >= t_warm]
        frames += len(xs)
        if len(steady) > 1:
            rates.append((len(steady) - 1) / (steady[-1][0] - steady[0][0]))
            dropped += steady[-1][1] - steady[0][1] + 1 - len(steady)
    nvdec = [v for xs in util.decoder.values() for t, v in xs if t >= t0 + WARM_S]
    steady_latency = [x for c, x in latency if c >= t_warm]
    return {
        "decoder": decoder, "cameras": len(urls), "streams_seen": len(got),
        "fps_min": min(rates, default=0.0), "fps_median": statistics.median(rates) if rates else 0.0,
        "dropped_steady": dropped / max(dropped + sum(len(x) for x in got.values()), 1),
        "take_latency_p50_ms": 1e3 * pct(steady_latency, 0.5), "take_latency_p99_ms": 1e3 * pct(steady_latency, 0.99),
        "cpu_us_per_frame": 1e6 * cpu_s / max(frames - (f0 or 0), 1), "cores_busy": cpu.busy(t0 + WARM_S),
        "nvdec_pct": statistics.median(nvdec) if nvdec else None,
        "overshoot_p50_us": 1e6 * pct(canary.late, 0.5), "overshoot_p99_us": 1e6 * pct(canary.late, 0.99),
        "frames_per_turn": statistics.mean(turns) if turns else 0.0, "turn_ms_p99": 1e3 * pct(turn_s, 0.99),
        "seconds": elapsed, "frames_taken": frames,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("clip")
    p.add_argument("--cameras", default="16,48,64")
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--decoders", default="ffmpeg,pynvvideocodec")
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cuda", help="cuda, or cpu (decoder pyav: a check of the probe itself)")
    a = p.parse_args()
    device = torch.device(a.device)
    facts = machine_facts(device)
    wake = wake_latency()
    print(f"machine: {facts}\nthread wake-up (Event, idle): median {wake[0]:.0f} us, p99 {wake[1]:.0f} us", flush=True)
    rows = []
    with CameraServer(a.clip) as server:
        for k in (int(x) for x in a.cameras.split(",")):
            for decoder in a.decoders.split(","):
                before = server.stats()
                row = probe([server.url(i) for i in range(k)], decoder, a.seconds, device)
                after = server.stats()
                row["server_late_p99_ms"] = after["late_p99_ms"]
                row["server_late_max_ms"] = after["late_max_ms"]
                row["server_packets"] = after["packets"] - before["packets"]
                # Frames that reached the consumer per packet the server sent (one frame each): below 1, frames
                # were lost or are still on their way (in socket buffers, in a decoder that lags).
                row["taken_per_sent"] = row["frames_taken"] / max(row["server_packets"], 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    cols = ["decoder", "cameras", "fps_min", "fps_median", "dropped_steady", "take_latency_p99_ms", "cpu_us_per_frame",
            "cores_busy", "nvdec_pct", "overshoot_p50_us", "overshoot_p99_us", "frames_per_turn", "turn_ms_p99",
            "server_late_p99_ms", "taken_per_sent"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": facts, "wake_us": wake, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
