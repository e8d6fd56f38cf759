"""Run methods over a workload on a configured system; collect the metrics of each.

The Python API for sweeps::

    from simulator import SimConfig, Workload, AcceptanceModel, SPEC_BENCH, simulate
    results = simulate(Workload([SPEC_BENCH["qa"]], AcceptanceModel(0.8, 0.7)),
                       SimConfig(gamma=5), methods=["sd", "mirror"])
    results["mirror"].speedup
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from refimpl.trace import mean_accepted_of

from .batching import batch_steps
from .config import SimConfig
from .costs import HardwareCosts
from .engine import DEVICES, Simulation, Span
from .errors import InputError
from .methods import METHODS
from .workload import Shape, Workload


@dataclass
class MethodResult:
    """One method's simulated run: wall time, tokens, device time, breakdown, timeline."""

    method: str
    seconds: float
    prefill_seconds: float
    counts: dict
    busy: dict
    breakdown: dict
    spans: list[Span] = field(repr=False, default_factory=list)
    real_seconds: float = 0.0
    speedup: float = float("nan")

    @property
    def tokens(self) -> int:
        return self.counts["tokens"]

    def metrics(self) -> dict:
        """The JSON-ready metrics (seconds, speedup over ar, rates, utilisation, breakdown)."""
        c = self.counts
        decode_seconds = self.seconds - self.prefill_seconds
        per_sequence_step = max(c["sequence_steps"], 1)
        return {
            "seconds": self.seconds,
            "speedup": self.speedup,
            "tokens": c["tokens"],
            "tokens_per_s": c["tokens"] / self.seconds if self.seconds else 0.0,
            "tpot_s": decode_seconds / c["decode_tokens"] if c["decode_tokens"] else 0.0,
            "prefill_s": self.prefill_seconds,
            "steps": c["steps"],
            "mean_accepted": mean_accepted_of(c["accepted"], c["sequence_steps"]),
            "mean_emitted": c["decode_tokens"] / per_sequence_step,
            "fallback_rate": c["misses"] / c["steps"] if self.method.startswith("mirror") and c["steps"] else 0.0,
            "utilisation": {d: (self.busy[d] / self.seconds if self.seconds else 0.0) for d in DEVICES},
            "breakdown_s": {k: v for k, v in self.breakdown.items() if v},
            "sim_steps_per_s": c["steps"] / self.real_seconds if self.real_seconds else 0.0,
        }


def shape_for(config: SimConfig) -> Shape:
    return Shape(gamma=config.gamma, kappa=config.kappa_used, tree_nodes=config.tree_nodes,
                 ss_tokens=config.ss_tokens, branches=config.branches)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"--methods: unknown method {method!r} (known: {', '.join(METHODS)})")


def run_method(method: str, prompts, costs, batch: int = 1, timeline_steps: int = 0,
               draft_on_target: bool = False) -> MethodResult:
    """Simulate one method over per-prompt step records (lists of StepRecord)."""
    _check_method(method)
    started = time.perf_counter()
    sim = Simulation(timeline_steps, draft_on_target)
    seconds = sim.run(METHODS[method](sim, batch_steps(prompts, batch), costs))
    return MethodResult(method, seconds, sim.prefill_seconds, dict(sim.counts), dict(sim.busy),
                        dict(sim.breakdown), sim.spans, time.perf_counter() - started)


def simulate(workload: Workload, config: SimConfig, methods=("ar", "sd", "mirror"), costs=None,
             timeline_steps: int = 0, progress=None) -> dict[str, MethodResult]:
    """Simulate `methods` (ar always, as the baseline) on one workload; results by method name.

    `costs` defaults to hwmodels' latencies for `config`; `progress(method)` is
    called before each method runs.
    """
    costs = costs if costs is not None else HardwareCosts(config)
    target_shape = getattr(costs, "target_shape", None)
    if target_shape is not None and target_shape.max_position_embeddings > 0:
        workload.check_context(target_shape.max_position_embeddings, target_shape.name)
    shape = shape_for(config)
    names = ["ar", *(m for m in dict.fromkeys(methods) if m != "ar")]
    for name in names:
        _check_method(name)          # all of them before the first long run
    results = {}
    for name in names:
        if progress is not None:
            progress(name)
        results[name] = run_method(name, workload.records(name, shape), costs, config.batch, timeline_steps,
                                   config.draft_on_target)
    for result in results.values():
        result.speedup = results["ar"].seconds / result.seconds if result.seconds else float("nan")
    return results
