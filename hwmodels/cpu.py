"""This machine's CPU as a device, measured by a short numpy micro-benchmark.

Memory bandwidth: the best fp32 matrix-vector product over a 64 MiB matrix
(the bytes of the matrix, read once: the access pattern of a decode step), on
all the threads of the BLAS numpy links to. FMA rate: the best 512x512 fp32 matmul (2 FLOP per
multiply-add), which runs on the BLAS numpy links to, on all threads. Each is
repeated for about a quarter of a second and the best pass kept: on a shared
machine a single pass can lose whole scheduler quanta. The benchmark runs
once per process (about half a second).
"""
from __future__ import annotations

import functools
import os
import platform
import time

import numpy as np

from .hardware import STEP_FIELDS, Device

DEFAULTS_SOURCE = "assumption: CPU defaults before calibration against refimpl"
CPU_CALIBRATION = "cpu-refimpl"  # the default calibration of `cpu`, when shipped


def best_seconds(fn, budget_s: float, min_repeats: int = 5) -> float:
    """Best time of fn() over at least `min_repeats` calls and about `budget_s` seconds."""
    best, spent, calls = float("inf"), 0.0, 0
    while calls < min_repeats or spent < budget_s:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    return best


def measure_bandwidth(side: int = 4096, budget_s: float = 0.3) -> float:
    """Bytes/s streamed by a matrix-vector product (the matrix is read once)."""
    matrix = np.ones((side, side), dtype=np.float32)
    vector = np.ones(side, dtype=np.float32)
    matrix @ vector
    return matrix.nbytes / best_seconds(lambda: matrix @ vector, budget_s)


def measure_stream_flops(streams: int, n: int = 512, seconds: float = 0.5) -> float:
    """fp32 FLOP/s each of `streams` threads computes while all run n x n matmuls at once (one
    pair of matrices each) for `seconds`: with a single-threaded BLAS, what cores get each when
    other jobs share them (a throughput, not a best pass)."""
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32))
             for _ in range(streams)]
    return concurrent_rate([lambda a=a, b=b: a @ b for a, b in pairs], 2 * n ** 3, seconds)


def concurrent_rate(jobs, units: float, seconds: float) -> float:
    """`units` per call of each job, per second and per job, with every job looping on its own
    thread for `seconds`."""
    import threading

    counts, done = [0] * len(jobs), threading.Event()
    ready = threading.Barrier(len(jobs) + 1)

    def loop(i: int) -> None:
        jobs[i]()
        ready.wait()
        while not done.is_set():
            jobs[i]()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    done.set()
    for thread in threads:
        thread.join()
    return sum(counts) * units / (time.perf_counter() - started) / len(jobs)


def measure_fma_rate(n: int = 512, budget_s: float = 0.25) -> float:
    """fp32 FLOP/s of a square matmul (2 n^3 FLOP)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    return 2 * n ** 3 / best_seconds(lambda: a @ b, budget_s)


def _memory_capacity() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8e9


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def measurement() -> dict:
    """The micro-benchmark's figures (cached for the process)."""
    return {"bandwidth": measure_bandwidth(), "fma": measure_fma_rate(), "threads": os.cpu_count() or 1,
            "cpu": _cpu_name(), "capacity": _memory_capacity()}


def cpu_device() -> Device:
    """This CPU: measured fp32 FMA rate and bandwidth, literature-free defaults for the rest."""
    m = measurement()
    stamp = f"measured on this machine ({m['cpu']}, {m['threads']} threads) by hwmodels.cpu"
    return Device(
        key="cpu", name=f"this CPU: {m['cpu']}", kind="cpu",
        peak_flops={"fp32": m["fma"]}, memory_bandwidth=m["bandwidth"], memory_capacity=m["capacity"],
        compute_efficiency=1.0, memory_efficiency=1.0, overlap=1.0, pass_overhead_s=0.0,
        layer_overhead_s=0.0, dot_overhead_s=0.0, score_overhead_s=0.0,
        memory_usable_fraction=0.9,
        sources={"peak_flops.fp32": f"{stamp}: 512x512 fp32 matmul", "memory_bandwidth": f"{stamp}: 64 MiB fp32 matrix-vector product",
                 "memory_capacity": "os.sysconf physical pages", "compute_efficiency": DEFAULTS_SOURCE,
                 "memory_efficiency": DEFAULTS_SOURCE, "overlap": DEFAULTS_SOURCE,
                 "pass_overhead_s": DEFAULTS_SOURCE, "layer_overhead_s": DEFAULTS_SOURCE,
                 "dot_overhead_s": DEFAULTS_SOURCE, "score_overhead_s": DEFAULTS_SOURCE,
                 "memory_usable_fraction": DEFAULTS_SOURCE, "row_block": DEFAULTS_SOURCE,
                 **{name: DEFAULTS_SOURCE for name in STEP_FIELDS}},
        aliases=("this-cpu", "host-cpu"),
    )
