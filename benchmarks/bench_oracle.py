"""Speed and memory of `oracle reference` on a Qwen3-0.6B-shaped model with random weights (fp32).

    python benchmarks/bench_oracle.py [--prompts 2] [--prompt-tokens 32] [--new-tokens 16] [--threads N]
        [--shape qwen3-0.6b|small]

The shape is Qwen3-0.6B's config.json (hidden 1024, 28 layers, 16 query / 8 KV
heads of 128, per-head q/k RMSNorm, intermediate 3072, vocab 151936, tied embeddings).
Weights are random normal, scaled so the logits are far from uniform. Reported:
packing time; prefill and decode tokens/s of plain decoding; tokens/s of the whole
reference generation (decoding plus one scoring pass for the per-token top-5
logits and log-probs); the weights streamed per token and the process's peak
resident memory.
"""
from __future__ import annotations

import argparse
import resource
import time

import numba
import numpy as np
from tabulate import tabulate

from refimpl.decoding import autoregressive, generate
from refimpl.model import Model, ModelConfig
from refimpl.oracle import reference
from refimpl.sampling import SamplingSettings

SHAPES = {
    "qwen3-0.6b": ModelConfig(dim=1024, hidden_dim=3072, n_layers=28, n_heads=16, n_kv_heads=8, vocab_size=151936,
                              seq_len=4096, shared_classifier=True, norm_eps=1e-6, rope_theta=1e6,
                              head_size=128, qk_norm=True, arch="qwen3", stop_at_bos=False),
    "small": ModelConfig(dim=256, hidden_dim=768, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=8192,
                         seq_len=512, shared_classifier=True),
}


def random_model(config: ModelConfig, seed: int = 0) -> Model:
    rng = np.random.default_rng(seed)
    c = config

    def normal(*shape, scale):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)

    def layers(rows, cols):
        return [normal(rows, cols, scale=cols ** -0.5) for _ in range(c.n_layers)]

    weights = {"token_embedding": normal(c.vocab_size, c.dim, scale=0.2),
               "attn_norm": [np.ones(c.dim, np.float32)] * c.n_layers,
               "ffn_norm": [np.ones(c.dim, np.float32)] * c.n_layers,
               "wq": layers(c.q_dim, c.dim), "wk": layers(c.kv_dim, c.dim), "wv": layers(c.kv_dim, c.dim),
               "wo": layers(c.dim, c.q_dim), "w1": layers(c.hidden_dim, c.dim), "w3": layers(c.hidden_dim, c.dim),
               "w2": layers(c.dim, c.hidden_dim), "final_norm": np.full(c.dim, 2.0, np.float32)}
    if c.qk_norm:
        weights["q_norm"] = weights["k_norm"] = [np.ones(c.head_dim, np.float32)] * c.n_layers
    return Model.from_dense(config, weights, name="random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    config = SHAPES[args.shape]
    start = time.perf_counter()
    model = random_model(config)
    load_s = time.perf_counter() - start
    model.forward([0], [0], model.new_cache(2))  # compile / load the kernels
    rng = np.random.default_rng(1)
    settings = SamplingSettings(ignore_eos=True)
    rows = []
    for i in range(args.prompts):
        prompt = rng.integers(0, config.vocab_size, args.prompt_tokens).tolist()
        run = generate(autoregressive(model, prompt, settings, args.new_tokens), prompt)
        prefill_s = run.records[0].wall_s
        decode_s = sum(r.wall_s for r in run.records[1:])
        start = time.perf_counter()
        ref = reference(model, prompt, settings, args.new_tokens, str(i))
        total_s = time.perf_counter() - start
        assert ref["tokens"] == run.tokens
        rows.append([i, len(prompt), len(ref["tokens"]), f"{len(prompt) / prefill_s:.1f}",
                     f"{(len(run.tokens) - 1) / decode_s:.2f}", f"{len(ref['tokens']) / total_s:.2f}",
                     f"{min(t[0][1] - t[1][1] for t in ref['top5']):.3g}"])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.shape}: {config.parameter_count() / 1e6:.0f}M parameters, weights streamed per token "
          f"{model.weight_bytes() / 1e6:.0f} MB, packing {load_s:.1f} s, peak RSS {peak_mb:.0f} MB, "
          f"{numba.get_num_threads()} threads")
    print(tabulate(rows, headers=["prompt", "prompt tokens", "new tokens", "prefill tok/s", "decode tok/s",
                                  "reference tok/s (all)", "min top-2 margin"]))


if __name__ == "__main__":
    main()
