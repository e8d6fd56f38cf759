"""Benchmark of the speculative methods on stories15M against autoregressive decoding.

    python benchmarks/bench_speculative.py [--model PATH] [--prompts 10] [--new-tokens 128]
        [--layers 3,4,5] [--gammas 1,2,3,4,5,6] [--tree-k 2] [--threads 1] [--json FILE]

Configurations: `ar`; `sd` with the target cut to its first k layers (each k of
--layers), every gamma of --gammas, as a chain and as a full tree with --tree-k
children per node (greedy, exact match); `lookup` (ngram 2) for every gamma.
Each runs every prompt for --new-tokens tokens; every output is checked equal to
ar's (the methods are lossless, so a mismatch is a bug and aborts). Columns:
tokens/s over all prompts, speedup over ar, mean accepted (tokens committed per
target pass, the bonus token included), target and draft passes. The fastest
configuration is printed last.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numba
from tabulate import tabulate

from refimpl.checkpoints import find_tokenizer, load_model
from refimpl.decoding import METHODS, generate
from refimpl.sampling import SamplingSettings
from refimpl.tokenizer import BOS_ID, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = Path(os.environ.get("MIRRORSTREAM_MODELS", str(ROOT.parent / "shared" / "checkpoints")))
PROMPTS = [
    "Once upon a time, there was a little girl named Lily.",
    "Tom and his dog Max went to the park.",
    "One day, a big bear came out of the forest.",
    "Sara had a red ball. She loved to play with it.",
    "The sun was shining and the birds were singing.",
    "Ben wanted to build a tall tower with his blocks.",
    "There was a small boat on the lake.",
    "Mom said, \"Let's bake a cake for Dad.\"",
    "The little cat was hungry and looked for food.",
    "Anna found a shiny key under the tree.",
    "Once upon a time, a kind old man lived in a small house.",
    "Tim liked to draw pictures of cars and trucks.",
]


def configurations(model, layers, gammas, tree_k):
    """(label, method name, params) of every configuration, ar first."""
    yield "ar", "ar", {}
    for k in layers:
        draft = model.first_layers(k)
        for shape, width in (("chain", 1), (f"tree k={tree_k}", tree_k)):
            for gamma in gammas:
                yield f"sd {k}L {shape}", "sd", dict(draft=draft, gamma=gamma, tree_k=width)
    for gamma in gammas:
        yield "lookup n=2", "lookup", dict(gamma=gamma, ngram=2)


def run(model, method, params, prompts, new_tokens, settings):
    """Totals over the prompts: seconds, tokens, target passes, draft passes, outputs."""
    seconds = tokens = target = draft = 0
    outputs = []
    for ids in prompts:
        result = generate(METHODS[method](model, ids, settings, new_tokens, **params), ids)
        seconds += result.seconds
        tokens += len(result.tokens)
        target += result.target_calls
        draft += result.draft_calls
        outputs.append(result.tokens)
    return seconds, tokens, target, draft, outputs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(CHECKPOINTS / "stories15M" / "stories15M.bin"))
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--layers", default="3,4,5")
    ap.add_argument("--gammas", default="1,2,3,4,5,6")
    ap.add_argument("--tree-k", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="numba threads (default 1: steadier on a shared machine)")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    numba.set_num_threads(args.threads)
    model = load_model(args.model)
    tokenizer = load_tokenizer(find_tokenizer(Path(args.model)), model.config.vocab_size)
    prompts = [[BOS_ID] + tokenizer.encode(text) for text in PROMPTS[:args.prompts]]
    settings = SamplingSettings()
    layers = [int(x) for x in args.layers.split(",")]
    gammas = [int(x) for x in args.gammas.split(",")]
    for label, method, params in configurations(model, layers[:1], [2], args.tree_k):   # compile, warm caches
        run(model, method, params, prompts[:1], 8, settings)

    rows, reference, ar_rate = [], None, None
    started = time.perf_counter()
    for label, method, params in configurations(model, layers, gammas, args.tree_k):
        seconds, tokens, target, draft, outputs = run(model, method, params, prompts, args.new_tokens, settings)
        if reference is None:
            reference = outputs
        elif outputs != reference:
            print(f"{label} gamma={params.get('gamma')}: output differs from ar (a bug)", file=sys.stderr)
            return 1
        rate = tokens / seconds
        ar_rate = ar_rate or rate
        rows.append({"config": label, "gamma": params.get("gamma", "-"), "tokens/s": round(rate, 1),
                     "speedup": round(rate / ar_rate, 2), "mean accepted": round(tokens / target, 2),
                     "target passes": target, "draft passes": draft})
        print(f"  {label} gamma={params.get('gamma', '-')}: {rate:.1f} tokens/s", file=sys.stderr, flush=True)
    print(f"stories15M, {len(prompts)} prompts x {args.new_tokens} new tokens, greedy, {args.threads} thread(s), "
          f"{time.perf_counter() - started:.0f} s in all")
    print(tabulate(rows, headers="keys"))
    best = max(rows, key=lambda r: r["tokens/s"])
    print(f"best: {best['config']} gamma={best['gamma']}: {best['tokens/s']} tokens/s, {best['speedup']}x ar, "
          f"{best['mean accepted']} tokens per target pass")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
