"""Does a decode thread get the GIL back? PyNvVideoCodec decodes one frame per call (the live path)
and 16 (the file path) while another thread runs pure Python, counting; each figure beside the same
decode alone. PyNvVideoCodec lets go of the GIL while it decodes, and then waits to get it back
behind the counting thread, up to Python's switch interval each time (on an H200: 504 -> 41 frames/s
at one frame per call, at Python's 5 ms).
Usage: python bench/nvdec_gil.py VIDEO [--interval-ms 5]  (a GPU with PyNvVideoCodec)"""

import argparse
import sys
import threading
import time

import torch

from vidpipe.sources import NvdecSource


def decode(path: str, per_call: int, seconds: float) -> int:
    """Frames decoded in ``seconds``, ``per_call`` per decoder call, the file started over at its end."""
    src, n, t0 = NvdecSource(path, "cuda"), 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for batch in src.batches(per_call):
            n += len(batch)
            if time.perf_counter() - t0 >= seconds:
                break
    return n


def beside_python(path: str, per_call: int, seconds: float) -> tuple[float, float]:
    """Frames/s decoded while a thread counts in pure Python, and that thread's counts/s."""
    stop, count = threading.Event(), [0]

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    thread = threading.Thread(target=spin)
    thread.start()
    t0 = time.perf_counter()
    n = decode(path, per_call, seconds) if per_call else time.sleep(seconds) or 0
    stop.set()
    thread.join()
    dt = time.perf_counter() - t0
    return n / dt, count[0] / dt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("video")
    p.add_argument("--interval-ms", type=float, default=5.0, help="sys.setswitchinterval, in ms (Python's: 5)")
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args()
    sys.setswitchinterval(a.interval_ms / 1000)
    torch.cuda.init()
    decode(a.video, 1, 0.5)  # the decoder and CUDA loaded
    _, alone = beside_python(a.video, 0, 2.0)
    print(f"switch interval {a.interval_ms:g} ms; counting thread alone: {alone:,.0f}/s")
    for per_call in (1, 16):
        fps, counts = beside_python(a.video, per_call, a.seconds)
        t0 = time.perf_counter()
        solo = decode(a.video, per_call, a.seconds) / (time.perf_counter() - t0)
        print(f"{per_call} frame(s) per call: {solo:,.0f} frames/s alone, {fps:,.0f} beside the counting thread "
              f"(which kept {counts / alone:.2f} of its rate)")


if __name__ == "__main__":
    main()
