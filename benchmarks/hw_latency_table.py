"""Print modelled forward-pass latencies for the Mirror-SD setting on every catalog device.

    python benchmarks/hw_latency_table.py [--context 1024] [--json]

Rows: the target (Qwen3-32B, Megatron TP 8) verifying a window of γ + 1 = 8
tokens, split at the early exit ℓe = N/2 as Mirror-SD times it; the draft
(Qwen3-0.6B, SPD sharding over 8 devices) decoding 8 branches of one token;
and one plain decode step (n = 1). Devices that cannot hold the model or lack
the dtype are skipped with the reason.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tabulate import tabulate


# Run from a checkout: import this repository's packages, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwmodels import InputError, forward_latency, get_device, get_model, known_devices


def rows_for(device_name: str, context: int) -> dict:
    device = get_device(device_name)
    dtype = "fp16" if device.supports("fp16") else "fp32"
    target, draft = get_model("qwen3-32b"), get_model("qwen3-0.6b")
    tp = 8 if device.tp_link is not None else 1
    device.check_fits(target, dtype, tp=tp, context=context)
    half = target.n_layers // 2
    first = forward_latency(target, device, 8, context, tp=tp, dtype=dtype, layers=(0, half), classifier=True)
    rest = forward_latency(target, device, 8, context, tp=tp, dtype=dtype, layers=(half, target.n_layers))
    decode = forward_latency(target, device, 1, context, tp=tp, dtype=dtype)
    draft_step = forward_latency(draft, device, 1, context, batch=8, tp=tp, dtype=dtype, sharding="spd")
    return {"device": device.key, "dtype": dtype, "tp": tp,
            "target 1..ℓe + exit head (ms)": first.seconds * 1e3, "target ℓe..N (ms)": rest.seconds * 1e3,
            "target decode n=1 (ms)": decode.seconds * 1e3, "bound": decode.bound,
            "draft step, 8 branches, SPD (ms)": draft_step.seconds * 1e3}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows, skipped = [], []
    for name in known_devices():
        if name == "cpu":
            continue
        try:
            rows.append(rows_for(name, args.context))
        except InputError as exc:
            skipped.append({"device": name, "reason": str(exc)})
    if args.json:
        json.dump({"rows": rows, "skipped": skipped}, sys.stdout, indent=2)
        print()
        return 0
    print(tabulate(rows, headers="keys", floatfmt=".3f"))
    for item in skipped:
        print(f"skipped {item['device']}: {item['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
