"""Decoding methods as SimPy processes: how each schedules the target, the draft and the link.

Every method is a generator ``method(sim, steps, costs)`` that walks the batched
steps of a workload (`simulator.batching.Step`) and asks `costs` (see
`simulator.costs`) how long each pass takes on the modelled hardware.
"""
from __future__ import annotations

from .batching import Step
from .engine import Simulation


def _draft_seconds(costs, step: Step, branches: int = 1, window: int = 0) -> float:
    """One rollout: the step's draft passes, for `branches` continuations of every sequence
    (hanging off a `window` of target rows: Mirror-SD's branch rollouts)."""
    return costs.rollout(step.draft_rows, step.context, step.batch, branches, window=window)


def ar(sim: Simulation, steps, costs):
    """Autoregressive decoding: one full target pass per step."""
    for step in sim.steps(steps):
        yield from sim.serial(("target", "target", costs.target(step.rows, step.context, step.batch)))


def sd(sim: Simulation, steps, costs):
    """Vanilla speculative decoding: the draft's passes, then one target verification pass, then host work."""
    for step in sim.steps(steps):
        yield from sim.serial(("draft", "draft", _draft_seconds(costs, step)),
                              ("target", "target", costs.target(step.rows, step.context, step.batch)),
                              *_host(costs, "sd", step))


def lookup(sim: Simulation, steps, costs):
    """Prompt lookup decoding: n-grams matched on the host, then one target verification pass."""
    for step in sim.steps(steps):
        yield from sim.serial(("target", "target", costs.target(step.rows, step.context, step.batch)),
                              *_host(costs, "lookup", step))


def _host(costs, method: str, step: Step) -> tuple:
    """The host work of a speculative step as a segment, or none (a prefill is an autoregressive pass)."""
    seconds = 0.0 if step.prefill else costs.host(method, step)
    return (("target", "host", seconds),) if seconds else ()


def ss(sim: Simulation, steps, costs):
    """Speculative Streaming. The paper's layout: one fused verify-and-draft target pass over the
    tree, the streams inside its rows. Replaying refimpl's traces (`costs.drafting`): the record's
    stream rows too (deferred: a pass of their own after the verdict; fused: extra rows of the
    verification pass), on the target's device, and the step's host work."""
    if getattr(costs, "drafting", None) is None:
        yield from ar(sim, steps, costs)
        return
    fused = costs.drafting.schedule == "fused"
    for step in sim.steps(steps):
        streams = sum(costs.stream(rows, step.context, step.batch, step.rows if fused else 0)
                      for rows in step.draft_rows)
        yield from sim.serial(("target", "draft", streams),
                              ("target", "target", costs.target(step.rows, step.context, step.batch)),
                              *_host(costs, "ss", step))


def _with_heads(kind: str):
    def method(sim: Simulation, steps, costs):
        drafting = getattr(costs, "drafting", None)
        for step in sim.steps(steps):
            if kind == "medusa" and getattr(drafting, "method", None) != "medusa":
                # the paper's layout: the heads read the hidden state of every verified row
                passes = (step.rows,) if step.draft_rows and not step.prefill else ()
            else:    # refimpl's Medusa: one pass of the K heads on the last committed row
                passes = step.draft_rows
            heads = sum(costs.heads(kind, rows, step.context, step.batch) for rows in passes)
            yield from sim.serial(("target", "heads", heads),
                                  ("target", "target", costs.target(step.rows, step.context, step.batch)),
                                  *_host(costs, kind, step))
    method.__name__ = kind
    method.__doc__ = (f"{kind.capitalize()}: the drafting {kind} passes on the target's devices, one target pass, "
                      f"host work.")
    return method


medusa = _with_heads("medusa")
eagle = _with_heads("eagle")
hydra = _with_heads("hydra")


def mirror(sim: Simulation, steps, costs):
    """Mirror-SD: draft rollouts overlap the target's suffix layers between two rendezvous.

    Per decode step: target layers 1..ℓe, the step's host work (the early exit's top-κ
    and log-probs, verification's bookkeeping), rendezvous 1 (top-κ ids + log-probs to
    the draft), then concurrently the target's layers ℓe+1..N and the draft's
    branch rollouts, then rendezvous 2 ((A, c) back to the draft). If the
    correction was covered the next window is ready; otherwise (fallback) a fresh
    rollout runs on the critical path before the next step. Where the two groups share a
    memory (`SimConfig.memory_contention`), the suffix and the rollouts slow each other
    (`costs.side_by_side`).
    """
    env = sim.env
    window_ready = True
    for step in sim.steps(steps):
        if step.prefill:
            yield from _prefill(sim, step, costs)
            window_ready = False            # the first window needs a fresh rollout
            continue
        if not window_ready:
            yield from sim.serial(("draft", "fallback_draft", _draft_seconds(costs, step)))
        yield from sim.serial(("target", "target_prefix", costs.target(step.rows, step.context, step.batch,
                                                                       part="prefix")),
                              *_host(costs, "mirror", step),
                              ("link", "rendezvous", costs.early_exit_message(step)))
        suffix, rollout_seconds = costs.side_by_side(step, step.branches)
        rollout = env.process(sim.background("draft", "draft", rollout_seconds))
        yield from sim.serial(("target", "target_suffix", suffix))
        yield from sim.wait(rollout, "draft")
        yield from sim.serial(("link", "rendezvous", costs.verdict_message(step)))
        window_ready = step.coverage_hit


def _prefill(sim: Simulation, step: Step, costs):
    """The prompt's prefill: target and draft process the prompt concurrently."""
    draft = sim.env.process(sim.background("draft", "draft", _draft_seconds(costs, step)))
    yield from sim.serial(("target", "target", costs.target(step.rows, step.context, step.batch)))
    yield from sim.wait(draft, "draft")


#: Method name -> process. `mirror+ss` is `mirror` on records whose draft passes emit several tokens.
METHODS = {"ar": ar, "sd": sd, "ss": ss, "medusa": medusa, "eagle": eagle, "hydra": hydra, "lookup": lookup,
           "mirror": mirror, "mirror+ss": mirror}
