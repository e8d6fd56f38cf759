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

    def _hold(self, device: str, segments, critical: bool):
        """Hold `device` once it is free, for back-to-back (device, label, seconds) segments on it;
        return the one timeout that ends the hold. On the critical path, the segments' time is
        charged to their labels and a wait for the device to `queue`."""
        now = self.env.now
        resource = self.resources[device]
        total = 0.0
        for segment in segments:
            total += segment[2]
        start = resource.free_at if resource.free_at > now else now
        resource.free_at = start + total
        self.busy[device] += total
        if critical:
            breakdown = self.breakdown
            if start > now:
                breakdown["queue"] += start - now
            for _, label, seconds in segments:
                breakdown[label] += seconds
        if self.step < self.timeline_steps:
            at = start
            for _, label, seconds in segments:
                self.spans.append(Span(device, label, at, seconds, self.step))
                at += seconds
        return self.env.timeout(start + total - now)

    def serial(self, *segments: tuple[str, str, float]):
        """Occupy devices one after another, on the critical path: (device, category, seconds)...
        Consecutive segments on one device are one hold of it (the process keeps the device)."""
        if len(segments) == 1:
            yield self._hold(segments[0][0], segments, True)
            return
        i, n = 0, len(segments)
        while i < n:
            device = segments[i][0]
            j = i + 1
            while j < n and segments[j][0] == device:
                j += 1
            yield self._hold(device, segments[i:j], True)
            i = j

    def background(self, device: str, label: str, seconds: float):
        """Occupy a device off the critical path (run it as its own process)."""
        yield self._hold(device, ((device, label, seconds),), False)

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
