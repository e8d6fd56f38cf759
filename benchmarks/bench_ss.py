"""Benchmark of Speculative Streaming (and Medusa, sd) on stories15M against ar and run.c.

    python benchmarks/bench_ss.py [--quick] [--prompts 20] [--new-tokens 128] [--threads 1,2]
        [--streams FILE] [--streams-ns FILE,FILE] [--heads FILE] [--gammas 1,2,3,4] [--tree-k 1,2,3]
        [--full-grid] [--repeat 2] [--json FILE]

Every configuration runs every prompt (greedy) and must give ar's very tokens (a
mismatch aborts: the methods are lossless). Each configuration is timed --repeat times,
in interleaved rounds (every configuration once per round), and the best total is kept
(the machine is shared and its speed drifts). llama2.c's run.c (built from
../shared/anchors/llama2c with gcc, one thread) decodes the same prompts in the same run.

Tables: (1) per configuration: tokens/s, speedup over our ar and over run.c, mean
accepted tokens per target pass (bonus included), target passes, ms per step;
(2) ms per ss step by tree size (target rows), beside ar's ms per token: where the time goes.
--quick: 3 prompts x 48 tokens, a few configurations.
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
from collections import defaultdict
from pathlib import Path

import numba
from tabulate import tabulate

from refimpl.checkpoints import find_tokenizer, load_model
from refimpl.decoding import METHODS, generate
from refimpl.decoding.medusa import load_heads
from refimpl.sampling import SamplingSettings
from refimpl.streams import load_streams, shipped
from refimpl.tokenizer import BOS_ID, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = Path(os.environ.get("MIRRORSTREAM_MODELS", str(ROOT.parent / "shared" / "checkpoints")))
ANCHOR = Path(os.environ.get("MIRRORSTREAM_ANCHORS", str(CHECKPOINTS.parent / "anchors"))) / "llama2c"
PROMPTS = [
    "Once upon a time, there was a little girl named Lily.", "Tom and his dog Max went to the park.",
    "One day, a big bear came out of the forest.", "Sara had a red ball. She loved to play with it.",
    "The sun was shining and the birds were singing.", "Ben wanted to build a tall tower with his blocks.",
    "There was a small boat on the lake.", "Mom said, \"Let's bake a cake for Dad.\"",
    "The little cat was hungry and looked for food.", "Anna found a shiny key under the tree.",
    "Once upon a time, a kind old man lived in a small house.", "Tim liked to draw pictures of cars and trucks.",
    "A little bird sat on a branch.", "Max the dog loved to run in the garden.",
    "It was a rainy day, and Lucy stayed inside.", "The king had a big castle on a hill.",
    "Jack and Jill went up the hill to get water.", "There once was a frog who lived in a pond.",
    "Emma got a new doll for her birthday.", "The children played in the snow all day.",
]


def configurations(args, streams, heads, model, extra_streams=()):
    """(label, method, params) of every configuration, ar first. The sweep varies one factor
    at a time around the base ss configuration (deferred, gamma = max of --gammas, k = 1,
    no pruning): gamma, k (with and without pruning), the schedule, N_s (--streams-ns);
    --full-grid runs the cartesian product of gamma, k, pruning and schedule instead."""
    yield "ar", "ar", {}
    gammas = [int(g) for g in args.gammas.split(",")]
    ks = [int(k) for k in args.tree_k.split(",")]
    base = dict(gamma=max(gammas), tree_k=1, schedule="deferred", prune_threshold=0.0)
    if args.full_grid:
        grid = [dict(gamma=g, tree_k=k, schedule=schedule, prune_threshold=t) for schedule in ("deferred", "fused")
                for g in gammas for k in ks for t in ([0.0, args.prune] if k > 1 else [0.0])]
    else:
        grid = [dict(base, gamma=g) for g in gammas]
        grid += [dict(base, tree_k=k, prune_threshold=t) for k in ks if k > 1 for t in (0.0, args.prune)]
        grid += [dict(base, schedule="fused"), dict(base, schedule="fused", tree_k=max(ks))]
    grid = [params for i, params in enumerate(grid) if params not in grid[:i]]    # one row each
    for params in grid:
        yield ss_label(streams, params), "ss", dict(params, streams=streams)
    for other in extra_streams:       # each at its own number of streams
        params = dict(base, gamma=other.gamma)
        yield ss_label(other, params), "ss", dict(params, streams=other)
    if heads is not None:
        for gamma in gammas if args.full_grid else [max(gammas)]:
            for k in ks:
                yield f"medusa g={gamma} k={k}", "medusa", dict(heads=heads, gamma=gamma, tree_k=k)
    yield "sd 2L chain g=2", "sd", dict(draft=model.first_layers(2), gamma=2, tree_k=1)


def ss_label(streams, params) -> str:
    prune = f" prune={params['prune_threshold']}" if params["prune_threshold"] else ""
    return f"ss {params['schedule']} Ns={streams.n_layers} g={params['gamma']} k={params['tree_k']}{prune}"


# hidden size h and vocabulary v of the paper's models (speculative-streaming.md §1.6)
PAPER_MODELS = [("OPT-1.3B", 2048, 50272), ("Phi-1.5 (1.3B)", 2048, 51200), ("OpenLLaMA-7B", 4096, 32000),
                ("Phi-3-mini", 3072, 32064), ("Mistral-7B / Llama-2-7B", 4096, 32000)]


def parameter_rows(model, streams, heads):
    """Extra parameters: SS = gamma*h stream embeddings + a rank-8 pruning adapter (16h); the
    paper's tables count 4 streams (20h). Medusa-1 = K*(h^2 + h) with the shared classifier
    (ours), K*(h^2 + h*v) as the paper counts it (each head with its own classifier copy)."""
    h, v = model.config.dim, model.config.vocab_size
    ours_ss = streams.embeddings.size + streams.prune_down.size + streams.prune_up.size
    if streams.init_down is not None:     # the low-rank f_eta
        ours_ss += streams.init_down.size + streams.init_up.size
    eta = 0 if streams.init_down is None else streams.init_down.shape[2]
    rows = [{"model": f"stories15M (ours, gamma={streams.gamma}, eta={eta})", "SS": ours_ss,
             "Medusa-1 shared classifier": (heads.weights.size + heads.biases.size) if heads else streams.gamma * (h * h + h),
             "Medusa-1 own classifiers": streams.gamma * (h * h + h * v)}]
    for name, h, v in PAPER_MODELS:
        rows.append({"model": f"{name} (gamma=4)", "SS": 20 * h, "Medusa-1 shared classifier": 4 * (h * h + h),
                     "Medusa-1 own classifiers": 4 * (h * h + h * v)})
    for row in rows:
        row["ratio (own classifiers)"] = round(row["Medusa-1 own classifiers"] / row["SS"])
    return rows


def run(model, method, params, prompts, new_tokens):
    seconds, tokens, passes, outputs, per_size = 0.0, 0, 0, [], defaultdict(list)
    for ids in prompts:
        result = generate(METHODS[method](model, ids, SamplingSettings(), new_tokens, **params), ids)
        seconds += result.seconds
        tokens += len(result.tokens)
        passes += result.target_calls
        outputs.append(result.tokens)
        for r in result.records[1:]:
            per_size[r.target_tokens].append(r.wall_s)
    return seconds, tokens, passes, outputs, per_size


def run_c(model_path: Path, prompts_text, new_tokens: int) -> float | None:
    """run.c's tokens/s (one thread) over the prompts, or None without gcc or the anchor."""
    if not (ANCHOR / "run.c").is_file() or shutil.which("gcc") is None:
        return None
    out = Path(tempfile.mkdtemp(prefix="llama2c-"))
    subprocess.run(["gcc", "-Ofast", "-march=native", "-o", str(out / "run"), str(ANCHOR / "run.c"), "-lm"],
                   check=True, capture_output=True)
    tokenizer = model_path.parent / "tokenizer.bin"
    rates = []
    for text in prompts_text:
        proc = subprocess.run([str(out / "run"), str(model_path), "-z", str(tokenizer), "-t", "0", "-n",
                               str(new_tokens + 16), "-i", text], capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        match = re.search(r"achieved tok/s: ([0-9.]+)", proc.stderr)
        if match:
            rates.append(float(match.group(1)))
    shutil.rmtree(out, ignore_errors=True)
    return sum(rates) / len(rates) if rates else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(CHECKPOINTS / "stories15M" / "stories15M.bin"))
    ap.add_argument("--streams", help="streams file (default: the shipped one)")
    ap.add_argument("--streams-ns", metavar="FILES",
                    help="more streams files, comma-separated (e.g. trained with other --stream-layers N_s or "
                         "--streams): the base ss configuration with each, gamma = its number of streams")
    ap.add_argument("--heads", help="Medusa heads file (default: the shipped one, if any)")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--gammas", default="1,2,3", help="at most the streams trained (default 1,2,3)")
    ap.add_argument("--tree-k", default="1,2,3")
    ap.add_argument("--prune", type=float, default=0.05, help="the pruning threshold tried with k > 1")
    ap.add_argument("--full-grid", action="store_true", help="every gamma x k x pruning x schedule")
    ap.add_argument("--repeat", type=int, default=2, help="timings per configuration; the best is kept")
    ap.add_argument("--threads", default="1",
                    help="numba thread counts, comma-separated (default 1): the first runs every configuration, "
                         "the others ar and the fastest ss, medusa and sd of the first")
    ap.add_argument("--quick", action="store_true", help="3 prompts x 48 tokens, gamma 3, k 1-2, once")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens, args.gammas, args.tree_k, args.repeat = 3, 48, "3", "1,2", 1
    thread_counts = [int(t) for t in args.threads.split(",")]
    model_path = Path(args.model)
    model = load_model(model_path)
    tokenizer = load_tokenizer(find_tokenizer(model_path), model.config.vocab_size)
    texts = PROMPTS[:args.prompts]
    prompts = [[BOS_ID] + tokenizer.encode(t) for t in texts]
    streams = load_streams(args.streams or shipped(model, "streams"), model)
    extra = [load_streams(f, model) for f in args.streams_ns.split(",")] if args.streams_ns else []
    heads = None
    try:
        heads = load_heads(args.heads or shipped(model, "heads"), model)
    except Exception as error:   # no heads: the table simply has no Medusa rows
        print(f"(no Medusa rows: {error})", file=sys.stderr)
    configs = list(configurations(args, streams, heads, model, extra))
    for _, method, params in configs:      # compile and warm up
        run(model, method, params, prompts[:1], 8)

    started = time.perf_counter()
    runc = run_c(model_path, texts, args.new_tokens)
    tables, reference, base_sizes = {}, None, None
    max_gamma = max(int(g) for g in args.gammas.split(","))
    for threads in thread_counts:
        numba.set_num_threads(threads)
        if threads != thread_counts[0]:
            configs = [configs[0]] + fastest_per_method(tables[thread_counts[0]], configs)
        rows, ar_rate, best = [], None, {}
        for _ in range(args.repeat):       # interleaved: every configuration once per round, the host drifts
            for label, method, params in configs:
                outcome = run(model, method, params, prompts, args.new_tokens)
                if label not in best or outcome[0] < best[label][0]:
                    best[label] = outcome
        for label, method, params in configs:
            seconds, tokens, passes, outputs, per_size = best[label]
            if reference is None:
                reference = outputs
            elif outputs != reference:
                print(f"{label}: output differs from ar (a bug)", file=sys.stderr)
                return 1
            rate = tokens / seconds
            ar_rate = ar_rate or rate
            if base_sizes is None and method == "ss" and params["gamma"] == max_gamma and params["tree_k"] == 1:
                base_sizes = (label, per_size, ar_rate)
            rows.append({"config": label, "tokens/s": round(rate, 1), "x ar": round(rate / ar_rate, 2),
                         "x run.c": round(rate / runc, 2) if runc else "-",
                         "mean accepted": round(tokens / passes, 2), "target passes": passes,
                         "ms/step": round(1000 * seconds / passes, 2)})
            print(f"  {threads} thread(s) {label}: {rate:.1f} tokens/s", file=sys.stderr, flush=True)
        tables[threads] = rows
    print(f"stories15M, {len(prompts)} prompts x {args.new_tokens} new tokens, greedy, best of {args.repeat}, "
          f"{time.perf_counter() - started:.0f} s in all, load {os.getloadavg()[0]:.1f}; "
          + (f"run.c (1 thread): {runc:.1f} tokens/s" if runc else "run.c: not built"))
    for threads, rows in tables.items():
        print(f"\n{threads} numba thread(s)")
        print(tabulate(rows, headers="keys"))
        best = max(rows[1:], key=lambda r: r["tokens/s"])
        print(f"best: {best['config']}: {best['tokens/s']} tokens/s, {best['x ar']}x ar, {best['x run.c']}x run.c, "
              f"{best['mean accepted']} tokens per target pass")
    if base_sizes:
        label, per_size, ar_rate = base_sizes
        ar_ms = 1000 / ar_rate
        size_rows = [{"tree rows": n, "steps": len(v), "ms/step": round(1000 * sum(v) / len(v), 2),
                      "x ar's ms/token": round(1000 * sum(v) / len(v) / ar_ms, 2)} for n, v in sorted(per_size.items())]
        print(f"\nper-step time by tree size ({label}, {thread_counts[0]} thread(s)); ar: {ar_ms:.2f} ms per token")
        print(tabulate(size_rows, headers="keys"))
    print("\nextra parameters")
    print(tabulate(parameter_rows(model, streams, heads), headers="keys", intfmt=","))
    if args.json:
        Path(args.json).write_text(json.dumps({"tables": tables, "run_c": runc}, indent=1))
    return 0


def fastest_per_method(rows, configs):
    """The fastest configuration of each method but ar in a finished table, in table order."""
    best = {}
    for row, config in zip(rows[1:], configs[1:]):
        method = config[1]
        if method not in best or row["tokens/s"] > best[method][0]:
            best[method] = (row["tokens/s"], config)
    return [config for _, config in best.values()]


if __name__ == "__main__":
    sys.exit(main())
