"""Print modelled forward-pass latencies for the Mirror-SD setting on every catalog device.

    python benchmarks/hw_latency_table.py [--context 1024] [--json]

Rows: the target (Qwen3-32B, Megatron TP 8) verifying a window of γ + 1 = 8
tokens, split at the early exit ℓe = N/2 as Mirror-SD times it; the draft
(Qwen3-0.6B, SPD sharding over 8 devices) decoding 8 branches of one token;
and one plain decode step (n = 1). Devices that cannot hold the model or lack
the dtype are skipped with the reason.

A second table prices speculative steps on the GPUs, Vicuna-7B at batch 1
(`hwmodels.steps`): the verification pass of n rows over T(1), and one step of
Medusa (64-row tree), EAGLE (26 rows, 5 draft passes) and lookup (5 rows) over
an autoregressive step, with each device's default calibration.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tabulate import tabulate


# Run from a checkout: import this repository's packages, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwmodels import InputError, forward_latency, get_device, get_model, known_devices, step_seconds

STEP_GPUS = ("a100-40gb", "a100-80gb", "h100-sxm", "h200", "rtx-3090", "rtx-4090")


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


def step_row(device_name: str, context: int) -> dict:
    device = get_device(device_name)
    one = forward_latency("vicuna-7b", device, 1, context).seconds
    row = {"device": device.key, "calibration": device.calibration or "datasheet", "T(1) ms": one * 1e3}
    row.update({f"T({n})/T(1)": forward_latency("vicuna-7b", device, n, context).seconds / one for n in (8, 26, 64)})
    for method, rows, passes in (("medusa", 64, ()), ("eagle", 26, (4, 4, 8, 8, 3)), ("lookup", 5, ())):
        row[f"{method} step / ar"] = step_seconds(method, "vicuna-7b", device, rows, context, draft_rows=passes) / one
    return row


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
    steps = [step_row(name, args.context) for name in STEP_GPUS]
    if args.json:
        json.dump({"rows": rows, "skipped": skipped, "steps": steps}, sys.stdout, indent=2)
        print()
        return 0
    print(tabulate(rows, headers="keys", floatfmt=".3f"))
    for item in skipped:
        print(f"skipped {item['device']}: {item['reason']}")
    print(f"\nspeculative steps, vicuna-7b, batch 1, context {args.context}:")
    print(tabulate(steps, headers="keys", floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
