"""Benchmark of the reference model on stories15M: decoding speed beside llama2.c's run.c,
and verification cost.

    python benchmarks/bench_model.py [--model PATH] [--tokenizer PATH] [--llama2c DIR]
                                     [--rounds 5] [--json]

Prints four tables:
1. first-use numba compile time (fresh cache dir) and the time of a second process;
2. this machine's read bandwidth and the matmul kernel's multiply-add rate, per thread count;
3. autoregressive tokens/s with 1 and 2 threads, ours and run.c's (built from --llama2c with
   its build.sh) timed alternately in the same run, best of --rounds each, the ratio of the
   bests (target >= 1.0), each side's worst/best spread (how noisy the machine was) and,
   on one thread, the ratio of forward passes per CPU second;
4. the verification cost curve: one forward pass of n = 1..9, 16, 32, 64 new tokens over a 128-token
   cached context, best of 10 (wall time; on one thread also this thread's CPU time), its
   ratio to n = 1 (targets on one thread: n=4 <= 1.3, n=8 <= 1.8), and the floor
   max(weight bytes / bandwidth, multiply-adds / multiply-add rate) with that floor's own
   ratio to n = 1's.
Both speeds are timed from the second position on (run.c's own "achieved tok/s").
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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
DEFAULT_LLAMA2C = Path(DEFAULT_MODEL).parent / "anchors" / "llama2c"  # beside the checkpoints folder
STEPS = 256  # positions per decoding run, run.c's default


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


def best_of(fn, reps: int, clock=time.perf_counter) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = clock()
        fn()
        times.append(clock() - start)
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


def build_llama2c(source: Path, out: Path) -> tuple[Path, Path] | None:
    """run.c built by its build.sh: (single-thread, OpenMP) executables, or None if it cannot be."""
    script = source / "build.sh"
    if not script.is_file() or shutil.which("gcc") is None:
        return None
    subprocess.run(["bash", str(script), str(out)], check=True, capture_output=True)
    return out / "run", out / "runomp"


def llama2c_tokens_per_s(executables, model_path: str, tokenizer: str, threads: int) -> tuple[float, float]:
    """run.c's own "achieved tok/s" for STEPS greedy steps from "Once upon a time", and its
    forward passes per CPU second (all STEPS passes; start-up included)."""
    single, omp = executables
    exe = single if threads == 1 else omp
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    before = os.times()
    run = subprocess.run([str(exe), model_path, "-z", tokenizer, "-t", "0", "-n", str(STEPS), "-i", "Once upon a time"],
                         env=env, capture_output=True, text=True, check=True)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return float(re.search(r"achieved tok/s: ([0-9.]+)", run.stderr).group(1)), STEPS / cpu


def our_tokens_per_s(model, threads: int) -> tuple[float, float]:
    """Greedy decoding of STEPS positions from BOS, timed from the second position on, like
    run.c; and forward passes per CPU second (all of them)."""
    numba.set_num_threads(threads)
    cpu = time.process_time()
    result = generate(autoregressive(model, [1], SamplingSettings(ignore_eos=True), STEPS - 1), [1])
    cpu = time.process_time() - cpu
    timed = result.seconds - result.records[0].wall_s  # drop the first pass (the prompt's)
    return (len(result.tokens) - 1) / timed, result.target_calls / cpu


def decode_speed(model, threads: int, rounds: int, llama2c, model_path: str, tokenizer: str | None) -> dict:
    """Ours and run.c's tokens/s, timed alternately, best of `rounds` each. On one thread also
    the ratio of forward passes per CPU second, which a host crowded by other processes
    disturbs less than wall time (it still shares the memory bus and the caches)."""
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(our_tokens_per_s(model, threads))
        if llama2c and tokenizer:
            theirs.append(llama2c_tokens_per_s(llama2c, model_path, tokenizer, threads))
    wall = [w for w, _ in ours]
    row = {"threads": threads, "ours_tok_s": max(wall), "ours_spread": min(wall) / max(wall),
           "weight_gb_per_s": model.weight_bytes() * max(wall) / 1e9}
    if theirs:
        their_wall = [w for w, _ in theirs]
        row.update(run_c_tok_s=max(their_wall), run_c_spread=min(their_wall) / max(their_wall),
                   ratio=max(wall) / max(their_wall))
        if threads == 1:
            row["cpu_ratio"] = max(c for _, c in ours) / max(c for _, c in theirs)
    return row


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
    for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 32, 64):
        tokens, positions = np.ones(n, dtype=np.int64), np.arange(context, context + n)
        seconds = best_of(lambda: model.forward(tokens, positions, cache, commit=False), 10)
        floor = max(model.weight_bytes() / (rates["read_gb_per_s"] * 1e9),
                    multiply_adds(model, n, context) / (rates["kernel_gmac_per_s"] * 1e9))
        row = {"threads": threads, "n": n, "ms": seconds * 1e3, "floor_ms": floor * 1e3}
        if threads == 1:  # this thread's CPU time: what a crowded host's preemptions do not inflate
            row["cpu_ms"] = 1e3 * best_of(lambda: model.forward(tokens, positions, cache, commit=False), 10,
                                          time.thread_time)
        rows.append(row)
    for row in rows:
        row["ratio_to_n1"] = row["ms"] / rows[0]["ms"]
        if "cpu_ms" in row:
            row["cpu_ratio_to_n1"] = row["cpu_ms"] / rows[0]["cpu_ms"]
        row["floor_ratio"] = row["floor_ms"] / rows[0]["floor_ms"]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(Path(DEFAULT_MODEL) / "stories15M" / "stories15M.bin"))
    parser.add_argument("--tokenizer", help="llama2.c tokenizer.bin for run.c (default: beside --model)")
    parser.add_argument("--llama2c", default=str(DEFAULT_LLAMA2C), help="folder with run.c and build.sh")
    parser.add_argument("--rounds", type=int, default=5, help="decoding runs per side and thread count (default 5)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not Path(args.model).is_file():
        print(f"bench_model: --model {args.model}: file not found", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print(f"bench_model: --rounds {args.rounds}: must be at least 1", file=sys.stderr)
        return 2
    tokenizer = args.tokenizer or str(Path(args.model).parent / "tokenizer.bin")
    tokenizer = tokenizer if Path(tokenizer).is_file() else None
    compiled = compile_times(args.model)
    model = load_model(args.model)
    model.forward([1], [0], model.new_cache(2))
    thread_counts = [t for t in (1, 2) if t <= numba.config.NUMBA_NUM_THREADS]
    rates = {t: machine_rates(t) for t in thread_counts}
    with tempfile.TemporaryDirectory() as build_dir:
        llama2c = build_llama2c(Path(args.llama2c), Path(build_dir))
        if llama2c is None or tokenizer is None:
            print("bench_model: run.c not timed (no build.sh or gcc, or no tokenizer.bin)", file=sys.stderr)
        speeds = [decode_speed(model, t, args.rounds, llama2c, args.model, tokenizer) for t in thread_counts]
    curves = [row for t in thread_counts for row in verification_curve(model, t, rates[t])]
    if args.json:
        print(json.dumps({"compile": compiled, "machine": list(rates.values()), "decode": speeds,
                          "verification": curves}))
        return 0
    print(tabulate([compiled], headers="keys", floatfmt=".2f"), end="\n\n")
    print(tabulate(list(rates.values()), headers="keys", floatfmt=".1f"), end="\n\n")
    print(tabulate(speeds, headers="keys", floatfmt=".2f"), end="\n\n")
    print(tabulate(curves, headers="keys", floatfmt=".2f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
