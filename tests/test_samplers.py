"""The live suite's host samplers see what they claim: a child process's memory counted with this
one's, and a busy core counted as busy."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from vidpipe.profiling import HostCpu, HostMemory, peak

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_host_memory_counts_the_processes_it_started():
    with HostMemory(0.1) as memory:
        time.sleep(0.35)
        alone = peak(memory.samples)
        child = subprocess.Popen([sys.executable, "-c", "import sys, time; x = b'1' * (200 << 20); "
                                  "print(flush=True); time.sleep(1.5)"], stdout=subprocess.PIPE)
        child.stdout.readline()  # its 200 MB are written
        t = time.perf_counter()
        time.sleep(0.35)
        child.wait()
    assert alone is not None and peak(memory.samples, t) - alone > 150 << 20


def test_host_cpu_counts_at_least_this_process_busy():
    """The whole host's busy cores over a window are at least this process's own CPU use over it (a
    spinning thread): other work on the machine only adds to the reading, so this holds on a busy
    machine as on an idle one."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    with HostCpu(0.1) as cpu:
        time.sleep(0.3)
        thread = threading.Thread(target=spin)
        thread.start()
        t0, c0 = time.perf_counter(), time.process_time()
        time.sleep(1.5)
        t1, c1 = time.perf_counter(), time.process_time()
        stop.set()
        thread.join()
    own = (c1 - c0) / (t1 - t0)  # cores this process kept busy: ~1 with the spinning thread
    inside = [x for x in cpu.samples if t0 <= x[0] <= t1]
    span = inside[-1][0] - inside[0][0]  # the samples' window, inside the process's
    assert own > 0.05 and cpu.busy(t0, t1) >= 0.8 * own * span / (t1 - t0), (own, cpu.busy(t0, t1))
