"""Per-method step costs on A100: the hf-eager-a100 fit, its leave-one-out and leave-one-source-out errors.

    python experiments/calibrate_methods.py          # print the tables
    python experiments/calibrate_methods.py --json

Data: hwmodels/data/measurements/hf_eager_a100.csv (autoregressive step times
and the Medusa-2 / EAGLE step-time ratios, each row naming its source; the
Spec-Bench leaderboard is not among them: it is kept as an independent check).
The fit's settings are experiments/calibrate_gpus.py's (set `hf_eager_a100`,
which writes the shipped calibration). Printed:

1. every point with its fit and leave-one-out error;
2. leave-one-source-out: refit without every row of one source (one paper's
   figure or table) and predict those rows, a held-out check across papers;
   for ratio rows the published speedup is also compared with tau / predicted ratio;
3. the price of verifying n rows, T(n) / T(1), and one step of each method by term.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from tabulate import tabulate

# Run from a checkout: import this repository's packages, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.calibrate_gpus import SETS  # noqa: E402
from hwmodels import forward_latency, get_device, step_parts  # noqa: E402
from hwmodels.calibration import calibrate, measurements_path, read_measurements  # noqa: E402

TABLE = "hf_eager_a100"
#: Published speedups behind the ratio rows (ratio = tau / speedup), by source text.
SPEEDUPS = {"medusa-tab: Vicuna-7B overhead 1.22": 2.83, "medusa-tab: Vicuna-13B overhead 1.23": 2.83,
            "medusa-tab: Vicuna-33B overhead 1.27": 2.35}


def sources(path) -> list[str]:
    """The `source` cell of every data row, in file order."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [row["source"] for row in csv.DictReader(lines)]


def published_speedup(source: str, measured_ratio: float) -> float | None:
    """The speedup a ratio row stands for: given for Medusa; tau / speedup written in EAGLE's source cell."""
    if source in SPEEDUPS:
        return SPEEDUPS[source]
    if source.startswith("eagle:"):
        tau, speedup = (float(x) for x in source.rsplit(" ", 3)[-3::2])
        return speedup
    return None


def leave_one_source_out(rows, tags, spec) -> list[dict]:
    out = []
    for tag in sorted(set(tags)):
        train = [r for r, t in zip(rows, tags) if t != tag]
        test = [r for r, t in zip(rows, tags) if t == tag]
        fit = calibrate(train, free=spec["free"], shared=spec["shared"], leave_one_out=False)
        device = get_device("a100-80gb@datasheet").with_params(**fit.params["a100-80gb"])
        check = calibrate(test, free=[], leave_one_out=False, devices={"a100-80gb": device})
        for r, predicted, error in zip(test, check.predicted, check.errors):
            out.append({"held_out": tag, "model": r.model, "method": r.method or "ar", "measured": r.seconds,
                        "predicted": float(predicted), "error": float(error)})
    return out


def cost_tables() -> tuple[list, list]:
    device = get_device("a100-80gb")
    ratios = []
    for model in ("vicuna-7b", "vicuna-13b", "vicuna-33b"):
        one = forward_latency(model, device, 1, 512).seconds
        ratios.append({"model": model, "T(1) ms": one * 1e3,
                       **{f"T({n})/T(1)": forward_latency(model, device, n, 512).seconds / one
                          for n in (8, 26, 64, 81)}})
    steps = []
    for method, rows, draft in (("ar", 1, ()), ("lookup", 5, ()), ("medusa", 64, ()),
                                ("eagle", 26, (4, 4, 8, 8, 3)), ("hydra", 64, (1, 4, 8, 8))):
        parts = step_parts(method, "vicuna-7b", device, rows, 512, draft_rows=draft)
        steps.append({"method": method, "rows": rows, **{f"{k} ms": v * 1e3 for k, v in parts.items()},
                      "total ms": sum(parts.values()) * 1e3})
    ar = steps[0]["total ms"]
    for row in steps:
        row["x ar"] = row["total ms"] / ar
    return ratios, steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    spec = SETS[TABLE]
    path = measurements_path(TABLE)
    rows, tags = read_measurements(path), sources(path)
    fit = calibrate(rows, free=spec["free"], shared=spec["shared"])
    points = [{"source": s, **{k: v for k, v in p.items() if k in ("model", "method", "ratio", "measured_s",
                                                                        "fitted_s", "error", "loo_error")}}
              for s, p in zip(tags, fit.table())]
    for p in points:
        speedup = published_speedup(p["source"], p["measured_s"]) if p["ratio"] else None
        if speedup:
            tau = p["measured_s"] * speedup
            p["published_speedup"], p["loo_speedup"] = speedup, tau / (p["measured_s"] * (1 + p["loo_error"]))
    held = leave_one_source_out(rows, [t.split(":")[0] for t in tags], spec)
    ratios, steps = cost_tables()
    report = {"fit": fit.summary(), "params": fit.params, "points": points, "leave_one_source_out": held,
              "verify_cost": ratios, "step_cost_vicuna7b": steps}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(tabulate(points, headers="keys", floatfmt=".4g"))
    s = fit.summary()
    print(f"\nfit: max |error| {s['max_abs_error']:.1%}, mean {s['mean_abs_error']:.1%}; "
          f"leave-one-out: max {s['max_abs_loo_error']:.1%}, mean {s['mean_abs_loo_error']:.1%}")
    print("params:", {k: float(f"{v:.4g}") for k, v in fit.params["a100-80gb"].items()})
    print("\nleave one source out (refit without it, predict it):")
    print(tabulate(held, headers="keys", floatfmt=".4g"))
    errors = np.abs([h["error"] for h in held])
    print(f"held out by source: median |error| {np.median(errors):.1%}, max {errors.max():.1%}")
    print("\nverification pass of n rows over 512 cached, a100-80gb (default calibration):")
    print(tabulate(ratios, headers="keys", floatfmt=".3f"))
    print("\none step of each method, vicuna-7b on a100-80gb, context 512:")
    print(tabulate(steps, headers="keys", floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
