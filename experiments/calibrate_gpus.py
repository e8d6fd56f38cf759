"""Fit the shipped GPU calibrations to the published measurements and print the errors.

    python experiments/calibrate_gpus.py            # print fit and leave-one-out tables
    python experiments/calibrate_gpus.py --write    # also rewrite hwmodels/data/calibrations/*.json

Each set below names its measurement table (hwmodels/data/measurements/), the
parameters fitted per device (`free`) and jointly (`shared`), the calibration
name per device, and where the numbers come from. Everything else keeps the
catalog's literature defaults (`DEVICE@datasheet`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tabulate import tabulate


# Run from a checkout: import this repository's packages, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwmodels.calibration import calibrate, measurements_path, read_measurements
from hwmodels.paths import DATA_DIR

SETS = {
    "hf_eager_a100": {
        "names": {"a100-80gb": "hf-eager-a100"},
        # memory_efficiency stays at its datasheet default (0.8): free, it trades against the per-block
        # launch cost (both grow with model size) and pins itself at 1. compute_efficiency stays at 0.7:
        # below the compute bound a pass costs memory + (1 - overlap) x compute, so only
        # (1 - overlap) / compute_efficiency is identified, and overlap carries it.
        "free": ["layer_overhead_s", "pass_overhead_s", "overlap",
                 "step_overhead_s", "tree_row_overhead_s", "draft_pass_overhead_s"],
        "shared": [],
        "source": "batch-1 fp16 decoding on A100 with the papers' PyTorch eager implementations: autoregressive "
                  "steps of Vicuna/Llama-2 7B, 13B, 33B (Medusa arXiv 2401.10774; Sequoia arXiv 2402.12374) and "
                  "the step-time ratios of Medusa-2 (Medusa arXiv 2401.10774) and EAGLE (arXiv 2401.15077) "
                  "(data/measurements/hf_eager_a100.csv)",
    },
    "llamacpp_rtx3090": {
        "names": {"rtx-3090": "llamacpp-rtx3090"},
        "free": ["memory_efficiency", "overlap", "pass_overhead_s"],
        "shared": [],
        "source": "llama.cpp (CUDA) on one RTX 3090, Llama-3 8B F16/BF16, forward passes of 1-16 rows (llama-bench "
                  "pp512 by micro-batch; ggml-org/llama.cpp pull requests #14262 and #15131)",
    },
    "specdecode_bench_llama31_8b_h100": {
        "names": {"h100-sxm": "specdecode-bench-llama31-8b-h100"},
        # pass_overhead_s stays at its default: free, it pushes memory_efficiency past 1 (to 1.04).
        "free": ["compute_efficiency", "memory_efficiency", "overlap"],
        "shared": [],
        "source": "vLLM Llama-3.1-8B bf16 on one H100, the linear step-time fit published by SpecDecode-Bench "
                  "(arXiv 2601.11580; SpecDecode-Bench/simulator predictor.py) evaluated on a 36-point grid, "
                  "batch 1-32, 1-8 tokens, context 128-4096 (peers.md A.3)",
    },
    "tgi_codellama34b": {
        "names": {"a100-80gb": "tgi-codellama34b-a100", "h100-sxm": "tgi-codellama34b-h100"},
        "free": ["pass_overhead_s"],
        "shared": ["link_alpha_s"],
        "source": "TGI CodeLlama-34B per-token decode latency at TP 1/2/4 on A100-80G and H100 "
                  "(huggingface/text-generation-inference issue #1315; peers.md A.4)",
    },
    "fastertransformer_13b": {
        "names": {"a100-40gb": "fastertransformer-13b-a100"},
        "free": ["memory_efficiency", "layer_overhead_s", "link_beta_s_per_byte"],
        "shared": [],
        "source": "FasterTransformer 13B GPT prefill (512 tokens) and decode at TP 1/2 on A100 40GB "
                  "(kipply, Transformer Inference Arithmetic; cli99/llm-analysis examples/fastertransformer; peers.md A.2)",
    },
}


def fit_set(name: str, spec: dict):
    rows = read_measurements(measurements_path(name))
    return calibrate(rows, free=spec["free"], shared=spec["shared"])


def calibration_files(name: str, spec: dict, result) -> dict:
    """{calibration name: JSON-able dict} for each device of the set."""
    table = result.table()
    files = {}
    for device, cal_name in spec["names"].items():
        points = [row for row in table if row["device"] == device]
        err = np.abs([p["error"] for p in points])
        loo = np.abs([p["loo_error"] for p in points])
        files[cal_name] = {
            "device": device,
            "measurements": f"measurements/{name}.csv",
            "free": spec["free"], "shared": spec["shared"],
            "params": result.params[device],
            "source": spec["source"],
            "fit": {"points": len(points), "max_abs_error": float(err.max()),
                    "max_abs_loo_error": float(np.nanmax(loo)), "mean_abs_loo_error": float(np.nanmean(loo))},
            "reproduce": "python experiments/calibrate_gpus.py --write",
        }
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the shipped calibration files")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    report = {}
    for name, spec in SETS.items():
        result = fit_set(name, spec)
        report[name] = {"summary": result.summary(), "params": result.params, "points": result.table()}
        if args.write:
            for cal_name, content in calibration_files(name, spec, result).items():
                path = DATA_DIR / "calibrations" / f"{cal_name}.json"
                path.write_text(json.dumps(content, indent=2) + "\n")
        if not args.json:
            print(f"\n## {name}: free {spec['free']}, shared {spec['shared']}")
            print(tabulate([{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}
                            for row in result.table()], headers="keys"))
            s = result.summary()
            print(f"fit: max |error| {s['max_abs_error']:.1%}; leave-one-out: max {s['max_abs_loo_error']:.1%}, "
                  f"mean {s['mean_abs_loo_error']:.1%}")
            print("params:", {d: {k: float(f"{v:.4g}") for k, v in p.items()} for d, p in result.params.items()})
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
