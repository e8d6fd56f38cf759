"""Mirror-SD on stories15M: early-exit coverage, fallback and acceptance, and the measured overlap.

    python benchmarks/bench_mirror.py [--quick] [--model PATH] [--prompts 6] [--new-tokens 96]
        [--repeats 3] [--threads 2] [--timing K,GAMMA,KAPPA,EXIT] [--draft-streams FILE] [--json FILE]

Three tables (greedy decoding; every output is checked equal to ar's, a mismatch aborts):

1. coverage Ω_κ(ℓe) = P(target token ∈ early-exit top-κ): ar's continuations of the
   prompts are run once through the target with its stream tapped after every layer;
   at each generated position the target's own head on the layer-ℓe stream gives the
   top-κ, checked against the token the target committed there;
2. per configuration (draft = the target's first k layers, ℓe, κ, γ): mean accepted
   (tokens per target pass, bonus included), fallback frequency (steps whose next
   window had to be rolled out afresh), exit hits (the committed token after the
   accepted prefix was among the κ candidates), branches and draft rows per step;
3. wall time side by side on --threads numba threads: ar, sd with the same draft and
   γ and mirror without --overlap (each on --threads and on one numba thread), mirror
   with --overlap (two Python threads, one numba thread each), interleaved and repeated --repeats times,
   best kept (the machine is shared; absolute figures swing); the per-step split into
   target prefix (layers 1..ℓe + early-exit head), suffix (the rest + verification),
   draft (branch rollouts), waiting (the target idle at the second rendezvous) and
   fallback, from the best mirror runs' traces.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np
from tabulate import tabulate

from refimpl.checkpoints import find_tokenizer, load_model
from refimpl.decoding import METHODS, generate
from refimpl.sampling import SamplingSettings
from refimpl.streams import load_streams
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
    "The little cat was hungry and looked for food.",
]
KAPPAS = (1, 2, 4, 8, 16)
PARTS = ("prefix", "suffix", "draft", "wait", "fallback")


def coverage(model, sequences, n_prompt, kappas, layers) -> dict:
    """{(κ, ℓe): fraction of generated positions whose token is in the layer-ℓe top-κ}."""
    hits = {(k, l): 0 for k in kappas for l in layers}
    total = 0
    for ids, prompt_len in zip(sequences, n_prompt):
        positions = np.arange(len(ids))
        hidden = model.embed(np.asarray(ids))
        tapped = model.run_layers(hidden, positions, model.new_cache(), taps=tuple(layers))
        rows = slice(prompt_len - 1, len(ids) - 1)       # the rows that predicted a generated token
        truth = np.asarray(ids[prompt_len:])
        total += len(truth)
        for l in layers:
            logits = model.head(tapped[l][rows])
            order = np.argsort(-logits, axis=1, kind="stable")[:, :max(kappas)]
            for k in kappas:
                hits[(k, l)] += int((order[:, :k] == truth[:, None]).any(axis=1).sum())
    return {key: value / max(total, 1) for key, value in hits.items()}


def run(model, method, params, prompts, new_tokens, threads=None):
    """Totals over the prompts: seconds, tokens, outputs, records (on `threads` numba threads)."""
    seconds, tokens, outputs, records = 0.0, 0, [], []
    before = numba.get_num_threads()
    numba.set_num_threads(threads or before)
    for ids in prompts:
        result = generate(METHODS[method](model, ids, SamplingSettings(), new_tokens, **params), ids)
        seconds += result.seconds
        tokens += len(result.tokens)
        outputs.append(result.tokens)
        records += [r for r in result.records if not r.prefill]
    numba.set_num_threads(before)
    return seconds, tokens, outputs, records


def statistics(records) -> dict:
    """Mean accepted, fallback frequency, exit hits, branches and draft rows per step."""
    steps = records[:-1] or records          # the last step's next window is never needed
    n = max(len(steps), 1)
    return {"mean accepted": round(sum(r.accepted + 1 for r in records) / max(len(records), 1), 2),
            "fallback freq": round(sum(not r.coverage_hit for r in steps) / n, 3),
            "exit hit": round(sum(bool(r.exit_hit) for r in steps) / n, 3),
            "branches/step": round(sum(r.branches or 0 for r in steps) / n, 1),
            "draft passes/step": round(sum(r.draft_passes for r in steps) / n, 2)}


def split_ms(records) -> dict:
    """Mean milliseconds per step of each part of wall_parts."""
    n = max(len(records), 1)
    return {part: round(1e3 * sum(r.wall_parts.get(part, 0.0) for r in records) / n, 2) for part in PARTS}


def check(label, outputs, reference) -> None:
    if outputs != reference:
        print(f"{label}: output differs from ar (a bug)", file=sys.stderr)
        sys.exit(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(CHECKPOINTS / "stories15M" / "stories15M.bin"))
    ap.add_argument("--quick", action="store_true", help="1 prompt x 32 tokens, two configurations, 2 repeats")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="numba threads (default 2; --overlap needs 2)")
    ap.add_argument("--timing", default="1,3,1,3", metavar="K,GAMMA,KAPPA,EXIT",
                    help="the timed configuration: draft layers, gamma, kappa, exit layer (default 1,3,1,3)")
    ap.add_argument("--draft-streams", metavar="FILE",
                    help="also time the timed configuration with these streams on its draft (trained with "
                         "train-streams --layers K for the K of --timing)")
    ap.add_argument("--timing-only", action="store_true", help="skip the coverage and per-configuration tables")
    ap.add_argument("--json", metavar="FILE", help="also write the tables as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens, args.repeats = 1, 32, min(args.repeats, 2)
    numba.set_num_threads(args.threads)
    model = load_model(args.model)
    tokenizer = load_tokenizer(find_tokenizer(Path(args.model)), model.config.vocab_size)
    prompts = [[BOS_ID] + tokenizer.encode(text) for text in PROMPTS[:args.prompts]]
    n_layers = model.config.n_layers
    started = time.perf_counter()

    _, _, reference, _ = run(model, "ar", {}, prompts, args.new_tokens)
    layers = list(range(1, n_layers))
    omega = {} if args.timing_only else coverage(model, [p + out for p, out in zip(prompts, reference)],
                                                 [len(p) for p in prompts], KAPPAS, layers)
    cover_rows = [{"exit layer": l, **{f"Ω_{k}": round(omega[(k, l)], 3) for k in KAPPAS}} for l in layers if omega]

    configs = [(1, 3, 3, 1), (1, 3, 3, 4), (2, 3, 3, 1), (2, 3, 3, 4), (2, 3, 1, 4), (2, 3, 5, 4),
               (2, 2, 3, 8), (4, 3, 3, 4)]
    if args.quick:
        configs = [(1, 3, 3, 1), (2, 3, 3, 4)]
    if args.timing_only:
        configs = []
    stat_rows = []
    for k, gamma, exit_layer, kappa in configs:
        params = dict(draft=model.first_layers(k), gamma=gamma, exit_layer=exit_layer, kappa=kappa)
        _, _, outputs, records = run(model, "mirror", params, prompts, args.new_tokens)
        check(f"mirror {params}", outputs, reference)
        stat_rows.append({"draft layers": k, "gamma": gamma, "exit layer": exit_layer, "kappa": kappa,
                          **statistics(records)})
        print(f"  stats k={k} gamma={gamma} exit={exit_layer} kappa={kappa} done", file=sys.stderr, flush=True)

    k, gamma, kappa, exit_layer = (int(x) for x in args.timing.split(","))
    draft = model.first_layers(k)
    mirror = dict(draft=draft, gamma=gamma, exit_layer=exit_layer, kappa=kappa)
    timed = [("ar", "ar", {}, None), ("ar, 1 thread", "ar", {}, 1),
             (f"sd {k}L", "sd", dict(draft=draft, gamma=gamma), None),
             (f"sd {k}L, 1 thread", "sd", dict(draft=draft, gamma=gamma), 1),
             ("mirror", "mirror", mirror, None), ("mirror, 1 thread", "mirror", mirror, 1),
             ("mirror --overlap", "mirror", dict(mirror, overlap=True), None)]
    if args.draft_streams:
        streaming = dict(mirror, draft_streams=load_streams(args.draft_streams, draft))
        timed += [("mirror streams", "mirror", streaming, None), ("mirror streams, 1 thread", "mirror", streaming, 1),
                  ("mirror streams --overlap", "mirror", dict(streaming, overlap=True), None)]
    best, best_records = {}, {}
    for _ in range(args.repeats):                     # interleaved: each repeat runs them all side by side
        for label, method, params, threads in timed:
            seconds, tokens, outputs, records = run(model, method, params, prompts, args.new_tokens, threads)
            check(label, outputs, reference)
            if seconds < best.get(label, (np.inf,))[0]:
                best[label], best_records[label] = (seconds, tokens), records
    ar_s = min(best["ar"][0], best["ar, 1 thread"][0])     # vs ar: against ar's faster thread count
    time_rows = []
    for label, *_ in timed:
        seconds, tokens = best[label]
        row = {"method": label, "seconds": round(seconds, 2), "tokens/s": round(tokens / seconds, 1),
               "vs ar": round(ar_s / seconds, 2)}
        if label.startswith("mirror"):
            row.update(split_ms(best_records[label]))
        time_rows.append(row)
    serial, overlap = best["mirror"][0], best["mirror --overlap"][0]
    serial = min(serial, best["mirror, 1 thread"][0])     # the faster schedule without overlap

    print(f"stories15M, {len(prompts)} prompts x {args.new_tokens} new tokens, greedy; "
          f"{time.perf_counter() - started:.0f} s in all")
    print("\nearly-exit coverage Ω_κ(ℓe) (target's own head on the layer-ℓe stream)")
    print(tabulate(cover_rows, headers="keys"))
    print("\nmirror per configuration (draft = the target's first k layers)")
    print(tabulate(stat_rows, headers="keys"))
    print(f"\nwall time, {args.threads} numba threads, best of {args.repeats} interleaved repeats; timed: draft {k} "
          f"layer(s), gamma {gamma}, kappa {kappa}, exit layer {exit_layer}; per-step parts in ms")
    print(tabulate(time_rows, headers="keys"))
    print(f"overlap speedup over the same configuration without it (the faster of {args.threads} threads and 1): "
          f"{serial / overlap:.2f}x")
    if args.draft_streams:
        streamed = min(best["mirror streams"][0], best["mirror streams, 1 thread"][0])
        print(f"with the streaming draft: overlap speedup {streamed / best['mirror streams --overlap'][0]:.2f}x; "
              f"streams vs plain draft (no overlap) {serial / streamed:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"coverage": cover_rows, "configs": stat_rows, "timing": time_rows,
                                               "overlap_speedup": serial / overlap}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
