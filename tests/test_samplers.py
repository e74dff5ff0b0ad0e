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


def test_host_cpu_counts_a_busy_core():
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    with HostCpu(0.1) as cpu:
        time.sleep(0.5)
        idle = cpu.busy()
        thread = threading.Thread(target=spin)
        thread.start()
        t = time.perf_counter()
        time.sleep(1.0)
        stop.set()
        thread.join()
    assert cpu.busy(t) - idle > 0.5, (idle, cpu.busy(t))
