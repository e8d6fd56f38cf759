"""The SimPy engine: device groups, a link, and the bookkeeping of who was busy when.

A method (see `simulator.methods`) is a SimPy process that walks through the
steps of a workload and spends simulated time on the target group, the draft
group and the link between them through the helpers here. Each helper is a
generator to be driven with ``yield from``.

Every device group (and the link) is a resource of capacity one (`Device`): a
group runs one (batched) pass at a time, and work asked of a busy group queues
first come, first served, the wait charged to the breakdown's `queue`. Since
every hold's length is known when it is asked for, the queue is kept as the
time the device falls free: the same schedule as a SimPy `Resource`, with one
timeout per segment instead of a request, a timeout and a release. With
`draft_on_target` the draft runs on the target's own devices (one resource for
both), so Mirror-SD's rollouts queue behind the target's suffix layers. A
segment asked of a free group starts at once, so where nothing overlaps the
timing is exactly the unqueued schedule (the closed forms hold exactly).

Two tallies come out of a run:

- `busy`: seconds each device group was busy (utilisation = busy / wall time);
- `breakdown`: the wall time split along the critical path, by what the
  method was waiting for (it sums to the wall time): `target` (whole passes),
  `target_prefix` / `target_suffix` (Mirror-SD's layers 1..ℓe / ℓe+1..N),
  `draft` (serial draft passes, or the part of Mirror-SD's rollouts that
  outlasts the suffix), `rendezvous`, `fallback_draft` (fresh rollouts after a
  coverage miss), `heads` (Medusa heads / EAGLE draft passes) and `queue`
  (waiting for a busy device group).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import simpy

DEVICES = ("target", "draft", "link")

class Device:
    """A first-come-first-served resource of capacity one, kept as the time it falls free."""

    __slots__ = ("free_at",)

    def __init__(self):
        self.free_at = 0.0

    def reserve(self, now: float, seconds: float) -> float:
        """Queue a hold of `seconds` asked for at `now`; return when it starts."""
        start = self.free_at if self.free_at > now else now
        self.free_at = start + seconds
        return start


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

    def __init__(self, timeline_steps: int = 0, draft_on_target: bool = False):
        self.env = simpy.Environment()
        target = Device()
        self.resources = {"target": target, "draft": target if draft_on_target else Device(), "link": Device()}
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

    def _occupy(self, device: str, label: str, seconds: float, category: str | None):
        """Hold `device` for `seconds` once it is free; on the critical path if `category` is given."""
        now = self.env.now
        start = self.resources[device].reserve(now, seconds)
        if category is not None:
            if start > now:
                self.breakdown["queue"] += start - now
            self.breakdown[category] += seconds
        self._record(device, label, start, seconds)
        yield self.env.timeout(start - now + seconds)

    def serial(self, *segments: tuple[str, str, float]):
        """Occupy devices one after another, on the critical path: (device, category, seconds)..."""
        for device, category, seconds in segments:
            yield from self._occupy(device, category, seconds, category)

    def background(self, device: str, label: str, seconds: float):
        """Occupy a device off the critical path (run it as its own process)."""
        yield from self._occupy(device, label, seconds, None)

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
