"""llama.cpp beside refimpl on the same GGUF file, and llama2.c's run.c on its source.

    python benchmarks/bench_llamacpp.py [--model PATH] [--prompts 4] [--new-tokens 128] [--repeat 3]

The llama2.c checkpoint --model (default stories15M) is converted with `convert --to gguf`
(F32, bit for bit); refimpl's ar and llama.cpp (llama-cpp-python, built from source:
the `llamacpp` extra) decode that one file, run.c (built by ../shared/anchors/llama2c/
build.sh) the source .bin, which holds the same weights. Each engine decodes every
prompt greedily for --new-tokens tokens (past EOS), on 1 and 2 threads; the rounds
alternate the engines and the best of --repeat totals is kept (the host is shared). Speed
is timed from the second generated token on (run.c's own "achieved tok/s", which also
counts the prompt's positions, decoded one at a time). llama.cpp is driven from Python
(refimpl.llamacpp: one llama_decode per token, its logits copied out, an argmax), as
refimpl's loop is. Also printed: the greedy agreement (oracle verdicts of llama.cpp's
tokens against refimpl's references), the max logit difference over prompt +
continuation, and /proc/loadavg before and after.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import build_llama2c  # noqa: E402  (run.c built by the anchor's build.sh)
from bench_ss import ANCHOR, CHECKPOINTS, PROMPTS  # noqa: E402

from refimpl import llamacpp  # noqa: E402
from refimpl.checkpoints import find_tokenizer, load_model  # noqa: E402
from refimpl.convert import convert  # noqa: E402
from refimpl.decoding import autoregressive, generate  # noqa: E402
from refimpl.oracle import compare, reference  # noqa: E402
from refimpl.sampling import SamplingSettings  # noqa: E402
from refimpl.tokenizer import BOS_ID, load_tokenizer  # noqa: E402

THREADS = (1, 2)
SETTINGS = SamplingSettings(ignore_eos=True)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def ours(model, prompts, new_tokens, threads):
    """(tokens timed, seconds, outputs) of refimpl's ar over the prompts."""
    numba.set_num_threads(threads)
    timed, seconds, outputs = 0, 0.0, []
    for ids in prompts:
        result = generate(autoregressive(model, ids, SETTINGS, new_tokens), ids)
        timed += len(result.tokens) - 1
        seconds += result.seconds - result.records[0].wall_s   # the prompt pass gave the first token
        outputs.append(list(result.tokens))
    return timed, seconds, outputs


def llama(llm, prompts, new_tokens):
    timed, seconds, outputs = 0, 0.0, []
    for ids in prompts:
        tokens, elapsed = llamacpp.timed_greedy(llm, ids, new_tokens)
        timed += len(tokens) - 1
        seconds += elapsed
        outputs.append(tokens)
    return timed, seconds, outputs


def run_c(executables, source: Path, tokenizer: Path, texts, prompts, new_tokens, threads):
    """run.c over the prompts: (positions timed, seconds, None) from its "achieved tok/s"."""
    single, omp = executables
    timed, seconds = 0, 0.0
    for text, ids in zip(texts, prompts):
        steps = len(ids) + new_tokens
        proc = subprocess.run([str(single if threads == 1 else omp), str(source), "-z", str(tokenizer), "-t", "0",
                               "-n", str(steps), "-i", text], capture_output=True, text=True, check=True,
                              env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        rate = float(re.search(r"achieved tok/s: ([0-9.]+)", proc.stderr).group(1))
        timed += steps - 1
        seconds += (steps - 1) / rate
    return timed, seconds, None


def agreement(model, llm, prompts, new_tokens) -> tuple[dict, int, int, float]:
    """Oracle verdict counts of llama.cpp's greedy tokens, identical tokens / compared, and
    the max |logit difference| over prompt + our continuation."""
    counts, same, total, worst = {"equal": 0, "near-tie": 0, "diverged": 0}, 0, 0, 0.0
    numba.set_num_threads(1)
    for ids in prompts:
        ref = reference(model, ids, SETTINGS, new_tokens)
        theirs = llamacpp.candidate(llm, ids, new_tokens)
        counts[compare(ref, theirs).status] += 1
        same += sum(a == b for a, b in zip(ref["tokens"], theirs["tokens"]))
        total += len(ref["tokens"])
        fed = ids + ref["tokens"][:-1]
        logits = model.forward(fed, np.arange(len(fed)), model.new_cache(len(fed)))
        worst = max(worst, float(np.abs(llamacpp.logits(llm, fed) - logits).max()))
    return counts, same, total, worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(CHECKPOINTS / "stories15M" / "stories15M.bin"),
                    help="llama2.c checkpoint (converted to GGUF here)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best total per engine is kept")
    args = ap.parse_args(argv)
    reason = llamacpp.missing_reason()
    if reason:
        print(f"bench_llamacpp: {reason}", file=sys.stderr)
        return 2
    source = Path(args.model)
    started, load_before = time.perf_counter(), loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-llamacpp-") as tmp:
        path = convert(source, Path(tmp) / f"{source.stem}.gguf", "gguf")
        model = load_model(path)
        n_ctx = model.config.seq_len
        tokenizer = find_tokenizer(source)
        texts = PROMPTS[:args.prompts]
        prompts = [[BOS_ID] + load_tokenizer(tokenizer, model.config.vocab_size).encode(t) for t in texts]
        if max(map(len, prompts)) + args.new_tokens > n_ctx:
            print(f"bench_llamacpp: --new-tokens {args.new_tokens}: prompt + new tokens exceed the context of "
                  f"{n_ctx}", file=sys.stderr)
            return 2
        llms = {t: llamacpp.open_gguf(path, n_ctx=n_ctx, threads=t) for t in THREADS}
        llama2c = build_llama2c(ANCHOR, Path(tmp) / "llama2c")
        llama2c_tokenizer = source.parent / "tokenizer.bin"
        engines = {}
        for t in THREADS:
            engines[f"refimpl ar|{t}"] = lambda t=t: ours(model, prompts, args.new_tokens, t)
            engines[f"llama.cpp|{t}"] = lambda t=t: llama(llms[t], prompts, args.new_tokens)
            if llama2c and llama2c_tokenizer.is_file():
                engines[f"run.c|{t}"] = lambda t=t: run_c(llama2c, source, llama2c_tokenizer, texts, prompts,
                                                          args.new_tokens, t)
        for t in THREADS:   # compile and warm up
            ours(model, prompts[:1], 8, t)
            llama(llms[t], prompts[:1], 8)
        best, outputs = {}, {}
        for _ in range(args.repeat):
            for name, fn in engines.items():
                timed, seconds, out = fn()
                rate = timed / seconds
                best[name] = max(best.get(name, 0.0), rate)
                if out is not None:
                    outputs.setdefault(name, out)
        counts, same, total, worst = agreement(model, llms[1], prompts, args.new_tokens)
    rows = []
    for name, rate in best.items():
        engine, threads = name.split("|")
        rows.append({"engine": engine, "threads": int(threads), "tokens/s": round(rate, 1),
                     "x refimpl ar": round(rate / best[f"refimpl ar|{threads}"], 2)})
    rows.sort(key=lambda r: (r["threads"], r["engine"]))
    same_output = all(outputs[f"llama.cpp|{t}"] == outputs[f"refimpl ar|{t}"] for t in THREADS)
    print(f"{path.name} (F32 GGUF from {source.name}; run.c decodes {source.name}), {len(prompts)} prompts x "
          f"{args.new_tokens} new tokens, greedy, best of {args.repeat}, {time.perf_counter() - started:.0f} s; "
          f"loadavg before {load_before}, after {loadavg()}")
    print(tabulate(rows, headers="keys"))
    print(f"greedy agreement, llama.cpp vs refimpl (oracle): {counts['equal']} equal, {counts['near-tie']} near-tie, "
          f"{counts['diverged']} diverged; identical tokens {same}/{total}; timed runs identical on 1 and 2 threads: "
          f"{same_output}; max |logit difference| over prompt + continuation {worst:.2g}")
    return 0 if counts["diverged"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
