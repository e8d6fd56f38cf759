"""Benchmark of the reference model on stories15M: decoding speed and verification cost.

    python benchmarks/bench_model.py [--model PATH] [--tokens 200] [--json]

Prints four tables:
1. first-use numba compile time (fresh cache dir) and the time of a second process;
2. this machine's single-thread read bandwidth and the matmul kernel's multiply-add rate;
3. autoregressive tokens/s and achieved weight bandwidth with 1 and 2 threads;
4. the verification cost curve: one forward pass of n = 1..64 new tokens over a
   128-token cached context, its ratio to n = 1, and the floor
   max(weight bytes / bandwidth, multiply-adds / multiply-add rate).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange
from tabulate import tabulate

from refimpl import kernels
from refimpl.checkpoints import load_model
from refimpl.decoding import autoregressive, generate
from refimpl.sampling import SamplingSettings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = os.environ.get("MIRRORSTREAM_MODELS", str(ROOT.parent / "shared" / "checkpoints"))


@njit(fastmath=True, cache=True)
def _sum(row):
    total = np.float32(0.0)
    for i in range(row.shape[0]):
        total += row[i]
    return total


@njit(parallel=True, cache=True)
def _read_all(chunks):
    """Sum every element of a (chunks, n) array; threads split the chunks."""
    sums = np.zeros(chunks.shape[0], dtype=np.float32)
    for c in prange(chunks.shape[0]):
        sums[c] = _sum(chunks[c])
    return sums.sum()


def best_of(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def compile_times(model_path: str) -> dict:
    """Seconds to load + first forward in a fresh process, with an empty and then a warm numba cache."""
    code = ("import time; t=time.perf_counter(); from refimpl.checkpoints import load_model; "
            f"m=load_model({model_path!r}); m.forward([1],[0],m.new_cache(2)); print(time.perf_counter()-t)")
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        runs = [float(subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                                     text=True).stdout) for _ in range(2)]
    return {"first_process_s": runs[0], "second_process_s": runs[1]}


def machine_rates(threads: int) -> dict:
    """Read bandwidth (256 MiB array) and the kernel's multiply-add rate (cache-resident), per thread count."""
    numba.set_num_threads(threads)
    big = np.ones((64, 2**20), dtype=np.float32)
    bandwidth = big.nbytes / best_of(lambda: _read_all(big), 5)
    weight = kernels.pack_linear(np.random.default_rng(0).standard_normal((768, 288), dtype=np.float32))
    x = np.ones((64, 288), dtype=np.float32)
    out = np.empty((64, kernels.padded_width(768)), dtype=np.float32)
    mac_rate = 64 * 768 * 288 / best_of(lambda: kernels.matmul(x, weight, out), 20)
    return {"threads": threads, "read_gb_per_s": bandwidth / 1e9, "kernel_gmac_per_s": mac_rate / 1e9}


def decode_speed(model, threads: int, n_tokens: int) -> dict:
    numba.set_num_threads(threads)
    settings = SamplingSettings()
    best = None
    for _ in range(3):
        result = generate(autoregressive(model, [1], settings, n_tokens), [1])
        best = result if best is None or result.seconds < best.seconds else best
    per_s = len(best.tokens) / best.seconds
    return {"threads": threads, "tokens": len(best.tokens), "tokens_per_s": per_s,
            "weight_gb_per_s": model.weight_bytes() * best.target_calls / best.seconds / 1e9}


def multiply_adds(model, n: int, context: int) -> float:
    c = model.config
    linear = c.n_layers * (2 * c.dim * c.dim + 2 * c.dim * c.kv_dim + 3 * c.dim * c.hidden_dim) + c.vocab_size * c.dim
    attention = c.n_layers * c.n_heads * 2 * c.head_dim * (context + n)
    return n * (linear + attention)


def verification_curve(model, threads: int, rates: dict, context: int = 128) -> list[dict]:
    numba.set_num_threads(threads)
    cache = model.new_cache()
    model.forward(np.ones(context, dtype=np.int64), np.arange(context), cache)
    rows = []
    for n in (1, 2, 4, 8, 16, 32, 64):
        tokens, positions = np.ones(n, dtype=np.int64), np.arange(context, context + n)
        seconds = best_of(lambda: model.forward(tokens, positions, cache, commit=False), 10)
        floor = max(model.weight_bytes() / (rates["read_gb_per_s"] * 1e9),
                    multiply_adds(model, n, context) / (rates["kernel_gmac_per_s"] * 1e9))
        rows.append({"threads": threads, "n": n, "ms": seconds * 1e3, "floor_ms": floor * 1e3})
    for row in rows:
        row["ratio_to_n1"] = row["ms"] / rows[0]["ms"]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(Path(DEFAULT_MODEL) / "stories15M" / "stories15M.bin"))
    parser.add_argument("--tokens", type=int, default=200, help="tokens per decoding run (default 200)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not Path(args.model).is_file():
        print(f"bench_model: --model {args.model}: file not found", file=sys.stderr)
        return 2
    compiled = compile_times(args.model)
    model = load_model(args.model)
    model.forward([1], [0], model.new_cache(2))
    thread_counts = [t for t in (1, 2) if t <= numba.config.NUMBA_NUM_THREADS]
    rates = {t: machine_rates(t) for t in thread_counts}
    speeds = [decode_speed(model, t, args.tokens) for t in thread_counts]
    curves = [row for t in thread_counts for row in verification_curve(model, t, rates[t])]
    if args.json:
        print(json.dumps({"compile": compiled, "machine": list(rates.values()), "decode": speeds,
                          "verification": curves}))
        return 0
    print(tabulate([compiled], headers="keys", floatfmt=".2f"), end="\n\n")
    print(tabulate(list(rates.values()), headers="keys", floatfmt=".1f"), end="\n\n")
    print(tabulate(speeds, headers="keys", floatfmt=".1f"), end="\n\n")
    print(tabulate(curves, headers="keys", floatfmt=".2f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
