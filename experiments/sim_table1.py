"""Mirror-SD Table 1 setting, simulated: Spec-Bench tasks on the 8 x M2 Ultra testbed, batch 1, γ = 7.

    python experiments/sim_table1.py [--acceptance 0.8] [--coverage 0.7] [--prompts-per-task 80]

Prints, per target (Qwen3-14B, Qwen3-32B) and task, the simulated speedups over
AR of vanilla SD, Mirror-SD without and with Speculative Streaming in the draft,
next to the paper's T = 0 numbers for Vanilla-SD and Mirror-SD (mirror-sd.md §8.1).
The acceptance and coverage are the simulator's stated defaults, one value for
every task, not fitted to the paper: per-task differences here come from prompt
and generation lengths only, so compare means and trends, not cells.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from tabulate import tabulate

from simulator import SPEC_BENCH, AcceptanceModel, SimConfig, Workload, simulate
from simulator.cli import DEFAULT_ACCEPTANCE, DEFAULT_COVERAGE

#: mirror-sd.md §8.1, T = 0: (Vanilla-SD, Mirror-SD) per task.
PAPER_T0 = {
    "qwen3-14b": {"translation": (2.34, 4.13), "summarization": (1.76, 3.07), "qa": (1.81, 3.18),
                  "math_reasoning": (2.80, 5.32), "rag": (2.02, 3.49), "multi_turn": (2.07, 3.70)},
    "qwen3-32b": {"translation": (2.74, 3.72), "summarization": (2.07, 3.14), "qa": (2.06, 3.04),
                  "math_reasoning": (3.33, 5.84), "rag": (2.33, 3.42), "multi_turn": (2.67, 3.59)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--acceptance", type=float, default=DEFAULT_ACCEPTANCE)
    parser.add_argument("--coverage", type=float, default=DEFAULT_COVERAGE)
    parser.add_argument("--prompts-per-task", type=int, default=80)
    args = parser.parse_args()

    model = AcceptanceModel(args.acceptance, args.coverage)
    for target, paper in PAPER_T0.items():
        config = SimConfig(target_model=target)
        rows = []
        for name, (paper_sd, paper_mirror) in paper.items():
            task = replace(SPEC_BENCH[name], prompts=args.prompts_per_task)
            results = simulate(Workload([task], model), config, ["sd", "mirror", "mirror+ss"])
            rows.append([name, results["sd"].speedup, results["mirror"].speedup, results["mirror+ss"].speedup,
                         paper_sd, paper_mirror])
        means = [sum(r[i] for r in rows) / len(rows) for i in range(1, 6)]
        rows.append(["mean", *means])
        print(f"\n{target} on 8 x M2 Ultra GPU, Qwen3-0.6B draft on 8 ANE; α={args.acceptance}, "
              f"Ω_8={args.coverage}, γ=7, κ=8, ℓe=N/2, batch 1")
        print(tabulate(rows, ["task", "sim sd", "sim mirror", "sim mirror+ss", "paper VSD", "paper Mirror-SD"],
                       floatfmt=".2f"))


if __name__ == "__main__":
    main()
