"""How fast the simulator replays: 480 prompts x 1024 generated tokens, one method at a time.

    python benchmarks/sim_throughput.py [--prompts 480] [--new-tokens 1024] [--methods ar,sd,mirror,mirror+ss]

Prints, per method: the seconds to build the workload's step records, the seconds
to simulate them (SimPy run, hwmodels latencies memoised), the total, and the
simulated decoding steps per second of real time. Target: total <= 10 s.
With --files, the sd workload is also written as trace files and replayed from
them (reading and validating the JSONL included).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from refimpl.trace import write_trace
from simulator import AcceptanceModel, HardwareCosts, SimConfig, Task, Workload, load_traces, run_method
from simulator.simulate import shape_for
from simulator.workload import synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=480)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--methods", default="ar,sd,mirror,mirror+ss")
    parser.add_argument("--files", action="store_true", help="also replay sd from trace files")
    args = parser.parse_args()

    config = SimConfig()
    workload = Workload([Task("bench", args.prompts, args.prompt_tokens, args.new_tokens)],
                        AcceptanceModel(0.8, 0.7))
    costs = HardwareCosts(config)
    rows = []
    for method in args.methods.split(","):
        started = time.perf_counter()
        records = list(workload.records(method, shape_for(config)))
        built = time.perf_counter() - started
        result = run_method(method, records, costs, config.batch)
        total = time.perf_counter() - started
        steps = result.counts["steps"] + sum(1 for r in records if r and r[0].prefill)
        rows.append([method, steps, built, result.real_seconds, total, steps / total,
                     steps / result.real_seconds])
    if args.files:
        rows.append(_replay_files(workload, config, costs))
    print(f"{args.prompts} prompts x {args.new_tokens} generated tokens (prompt {args.prompt_tokens} tokens), "
          f"Mirror-SD testbed, batch 1")
    print(tabulate(rows, ["method", "steps", "build s", "simulate s", "total s", "steps/s (total)",
                          "steps/s (simulate)"], floatfmt=".2f", intfmt=","))


def _replay_files(workload: Workload, config: SimConfig, costs) -> list:
    """Write the sd traces to files, then time reading them back and replaying them."""
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, trace in enumerate(synthesize("sd", workload.tasks, workload.acceptance, shape_for(config))):
            paths.append(Path(folder) / f"{i}.jsonl")
            write_trace(paths[-1], trace.header, trace.records)
        started = time.perf_counter()
        replay = Workload(traces=load_traces(paths))
        records = list(replay.records("sd", shape_for(config)))
        built = time.perf_counter() - started
        result = run_method("sd", records, costs, config.batch)
        total = time.perf_counter() - started
    steps = sum(len(r) for r in records)
    return ["sd from files", steps, built, result.real_seconds, total, steps / total, steps / result.real_seconds]


if __name__ == "__main__":
    main()
