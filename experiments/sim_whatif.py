"""What-if sweeps on the Mirror-SD testbed (Qwen3-32B / Qwen3-0.6B, 8 x M2 Ultra GPU + ANE).

    python experiments/sim_whatif.py [--prompts-per-task 20]

1. Coverage Ω_8 of the early exit, from the one published measurement at N/2
   (24.2%, logit lens on Gemma-3-12B, mirror-sd.md §11.4) to full coverage.
2. Batch size, with κ and the SS streams following the paper's schedule (§8.4).
3. The design note's question: what if the NPU were twice as fast, the link half
   as fast, and κ = 4?
"""
from __future__ import annotations

import argparse
import dataclasses

import hwmodels
from tabulate import tabulate

from simulator import SPEC_BENCH, AcceptanceModel, Group, SimConfig, Workload, simulate
from simulator.cli import DEFAULT_ACCEPTANCE, DEFAULT_COVERAGE
from simulator.config import TESTBED

METHODS = ["sd", "mirror", "mirror+ss"]


def _speedups(workload: Workload, config: SimConfig) -> list[float]:
    results = simulate(workload, config, METHODS)
    return [results[m].speedup for m in METHODS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts-per-task", type=int, default=20)
    args = parser.parse_args()
    tasks = [dataclasses.replace(t, prompts=args.prompts_per_task) for t in SPEC_BENCH.values()]
    base = SimConfig()

    def workload(coverage=DEFAULT_COVERAGE):
        return Workload(tasks, AcceptanceModel(DEFAULT_ACCEPTANCE, coverage))

    print(f"Spec-Bench lengths, {len(tasks) * args.prompts_per_task} prompts, α={DEFAULT_ACCEPTANCE}, γ=7")
    rows = [[omega, *_speedups(workload(omega), base)] for omega in (0.242, 0.5, 0.62, 0.7, 0.78, 0.9, 1.0)]
    print("\n1. coverage Ω_8 (κ = 8, ℓe = N/2, batch 1)")
    print(tabulate(rows, ["Ω_8", *METHODS], floatfmt=".2f"))

    rows = []
    for batch in (1, 8, 16, 32, 64):
        config = dataclasses.replace(base, batch=batch)
        rows.append([batch, config.kappa_used, config.ss_tokens - 1, *_speedups(workload(), config)])
    print(f"\n2. batch size (Ω_8 = {DEFAULT_COVERAGE})")
    print(tabulate(rows, ["batch", "κ", "SS streams", *METHODS], floatfmt=".2f"))

    npu = hwmodels.get_device(base.draft.device)
    link = hwmodels.get_link(base.link or TESTBED["link"])
    variants = {
        "testbed": base,
        "NPU x2": dataclasses.replace(base, draft=Group(npu.scaled(2.0), base.draft.tp)),
        "link x0.5": dataclasses.replace(base, link=link.scaled(0.5)),
        "κ = 4": dataclasses.replace(base, kappa=4),
        "all three": dataclasses.replace(base, draft=Group(npu.scaled(2.0), base.draft.tp),
                                         link=link.scaled(0.5), kappa=4),
    }
    rows = [[name, *_speedups(workload(), config)] for name, config in variants.items()]
    print(f"\n3. what if (Ω_8 = {DEFAULT_COVERAGE} whatever κ: a lower κ would also lower Ω)")
    print(tabulate(rows, ["system", *METHODS], floatfmt=".2f"))


if __name__ == "__main__":
    main()
