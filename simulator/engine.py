"""The SimPy engine: device groups, a link, and the bookkeeping of who was busy when.

A method (see `simulator.methods`) is a SimPy process that walks through the
steps of a workload and spends simulated time on the target group, the draft
group and the link between them through the helpers here. Each helper is a
generator to be driven with ``yield from``; a run of back-to-back segments on
one process is a single timeout (the segments are still recorded one by one),
which keeps the event count per step small.

Two tallies come out of a run:

- `busy`: seconds each device group was busy (utilisation = busy / wall time);
- `breakdown`: the wall time split along the critical path, by what the
  method was waiting for (it sums to the wall time): `target` (whole passes),
  `target_prefix` / `target_suffix` (Mirror-SD's layers 1..ℓe / ℓe+1..N),
  `draft` (serial draft passes, or the part of Mirror-SD's rollouts that
  outlasts the suffix), `rendezvous`, `fallback_draft` (fresh rollouts after a
  coverage miss) and `heads` (Medusa heads / EAGLE draft passes).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import simpy

DEVICES = ("target", "draft", "link")

@dataclass(slots=True)
class Span:
    """One segment of device time, for the timeline."""

    device: str
    label: str
    start: float
    seconds: float
    step: int


class Simulation:
    """One method's run: a SimPy environment plus the tallies and the (optional) timeline."""

    def __init__(self, timeline_steps: int = 0):
        self.env = simpy.Environment()
        self.busy = dict.fromkeys(DEVICES, 0.0)
        self.breakdown: dict[str, float] = defaultdict(float)
        self.spans: list[Span] = []
        self.timeline_steps = timeline_steps
        self.step = 0
        self.prefill_seconds = 0.0
        self.counts = dict.fromkeys(("steps", "sequence_steps", "tokens", "decode_tokens", "proposed",
                                     "accepted", "misses"), 0)

    def steps(self, steps):
        """Hand the method its steps one by one; note the step index and the time spent in prefills."""
        counts = self.counts
        for self.step, step in enumerate(steps):
            start = self.env.now
            yield step
            counts["tokens"] += step.emitted
            if step.prefill:
                self.prefill_seconds += self.env.now - start
                continue
            counts["steps"] += 1
            counts["sequence_steps"] += step.batch
            counts["decode_tokens"] += step.emitted
            counts["proposed"] += step.proposed
            counts["accepted"] += step.accepted
            counts["misses"] += not step.coverage_hit

    def _record(self, device: str, label: str, start: float, seconds: float) -> None:
        self.busy[device] += seconds
        if self.step < self.timeline_steps:
            self.spans.append(Span(device, label, start, seconds, self.step))

    def serial(self, *segments: tuple[str, str, float]):
        """Occupy devices one after another, on the critical path: (device, category, seconds)..."""
        start = self.env.now
        total = 0.0
        for device, category, seconds in segments:
            self._record(device, category, start + total, seconds)
            self.breakdown[category] += seconds
            total += seconds
        yield self.env.timeout(total)

    def background(self, device: str, label: str, seconds: float):
        """Occupy a device off the critical path (run it as its own process)."""
        self._record(device, label, self.env.now, seconds)
        yield self.env.timeout(seconds)

    def wait(self, event, category: str):
        """Wait for a concurrent process; the time spent waiting is charged to `category`."""
        start = self.env.now
        yield event
        self.breakdown[category] += self.env.now - start

    def run(self, process) -> float:
        """Run a method process to its end; return the simulated wall time."""
        self.env.process(process)
        self.env.run()
        return self.env.now
