"""This machine's CPU as a device, measured by a short numpy micro-benchmark.

Memory bandwidth: the best of a few `np.copyto` passes over a 64 MiB fp32 array
(read + write bytes counted). FMA rate: the best of a few 512x512 fp32 matmuls
(2 FLOP per multiply-add), which run on the BLAS numpy links to, on all threads.
The benchmark takes well under a second and runs once per process.
"""
from __future__ import annotations

import functools
import os
import platform
import time

import numpy as np

from .devices import Device

DEFAULTS_SOURCE = "assumption: CPU defaults before calibration against refimpl"


def _best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth(nbytes: int = 64 << 20, repeats: int = 5) -> float:
    """Bytes/s of a streaming copy (read + write)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    return 2 * src.nbytes / _best_seconds(lambda: np.copyto(dst, src), repeats)


def measure_fma_rate(n: int = 512, repeats: int = 5) -> float:
    """fp32 FLOP/s of a square matmul (2 n^3 FLOP)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    return 2 * n ** 3 / _best_seconds(lambda: a @ b, repeats)


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
        layer_overhead_s=0.0, memory_usable_fraction=0.9,
        sources={"peak_flops.fp32": f"{stamp}: 512x512 fp32 matmul", "memory_bandwidth": f"{stamp}: 64 MiB copy",
                 "memory_capacity": "os.sysconf physical pages", "compute_efficiency": DEFAULTS_SOURCE,
                 "memory_efficiency": DEFAULTS_SOURCE, "overlap": DEFAULTS_SOURCE,
                 "pass_overhead_s": DEFAULTS_SOURCE, "layer_overhead_s": DEFAULTS_SOURCE,
                 "memory_usable_fraction": DEFAULTS_SOURCE},
        aliases=("this-cpu", "host-cpu"),
    )
