"""Deterministic cases equal the closed forms; the paper's properties hold (constant per-pass costs)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator import AcceptanceModel, ConstantCosts, SimConfig, Task, Workload, simulate

REL = 1e-9
TASK = Task("t", prompts=3, prompt_tokens=50, new_tokens=120)


def _run(costs, methods, alpha=0.7, coverage=1.0, gamma=5, prefill=False, tasks=(TASK,), seed=1):
    workload = Workload(list(tasks), AcceptanceModel(alpha, coverage), seed=seed, prefill=prefill)
    return simulate(workload, SimConfig(gamma=gamma), methods, costs=costs)


def test_sd_and_ar_equal_their_closed_forms():
    costs = ConstantCosts(target_prefix=0.004, target_suffix=0.006, draft_pass=0.0013)
    results = _run(costs, ["sd"])
    ar, sd = results["ar"], results["sd"]
    assert ar.tokens == sd.tokens == 3 * 120
    assert ar.seconds == pytest.approx(ar.tokens * 0.010, rel=REL)
    steps = sd.counts["steps"]
    assert sd.seconds == pytest.approx(steps * (0.010 + 5 * 0.0013), rel=REL)   # T_SD = T_target + T_draft
    assert sd.speedup == pytest.approx(ar.seconds / sd.seconds, rel=REL)


@pytest.mark.parametrize("suffix, draft_pass", [(0.006, 0.0005), (0.002, 0.0013)])
def test_mirror_equals_the_step_latency_law(suffix, draft_pass):
    """No fallbacks: T = T(1..ℓe) + T_rv + max(T(ℓe+1..N), T_draft) + T_rv, both regimes of the max."""
    costs = ConstantCosts(target_prefix=0.004, target_suffix=suffix, draft_pass=draft_pass, rendezvous=3e-5)
    mirror = _run(costs, ["mirror"], coverage=1.0)["mirror"]
    law = 0.004 + 3e-5 + max(suffix, 5 * draft_pass) + 3e-5
    assert mirror.counts["misses"] == 0
    assert mirror.seconds == pytest.approx(mirror.counts["steps"] * law, rel=REL)
    assert sum(mirror.breakdown.values()) == pytest.approx(mirror.seconds, rel=REL)


def test_mirror_fallbacks_add_an_exposed_rollout_each():
    costs = ConstantCosts(target_prefix=0.004, target_suffix=0.006, draft_pass=0.001, rendezvous=2e-5)
    mirror = _run(costs, ["mirror"], coverage=0.5)["mirror"]
    c = mirror.counts
    assert 0 < c["misses"] < c["steps"]
    law = 0.004 + 2e-5 + max(0.006, 5 * 0.001) + 2e-5
    # Every miss costs one exposed rollout before the next step; a miss on the very last step, none.
    exposed = mirror.breakdown["fallback_draft"] / (5 * 0.001)
    assert exposed == pytest.approx(round(exposed), abs=1e-6) and c["misses"] - 1 <= round(exposed) <= c["misses"]
    assert mirror.seconds == pytest.approx(c["steps"] * law + mirror.breakdown["fallback_draft"], rel=REL)


def test_prefill_is_serial_for_sd_and_overlapped_for_mirror():
    costs = ConstantCosts(target_prefix=0.004, target_suffix=0.006, draft_pass=0.001, rendezvous=2e-5)
    results = _run(costs, ["sd", "mirror"], prefill=True, coverage=1.0)
    sd, mirror = results["sd"], results["mirror"]
    assert sd.prefill_seconds == pytest.approx(3 * (0.010 + 0.001), rel=REL)
    # Mirror: target and draft prefill concurrently, then the first window is a fresh rollout.
    assert mirror.prefill_seconds == pytest.approx(3 * 0.010, rel=REL)
    assert mirror.breakdown["fallback_draft"] == pytest.approx(3 * 5 * 0.001, rel=REL)


def test_mirror_ss_has_fewer_draft_passes():
    costs = ConstantCosts(target_prefix=0.002, target_suffix=0.002, draft_pass=0.001)
    results = _run(costs, ["mirror", "mirror+ss"], gamma=7)
    mirror, mirror_ss = results["mirror"], results["mirror+ss"]
    steps = mirror.counts["steps"]
    assert mirror.seconds == pytest.approx(steps * (0.002 + 7 * 0.001), rel=REL)          # draft-bound
    assert mirror_ss.seconds == pytest.approx(steps * (0.002 + math.ceil(7 / 3) * 0.001), rel=REL)


positive = st.floats(1e-5, 1e-1, allow_nan=False)


@given(prefix=positive, suffix=positive, draft=positive, rv_fraction=st.floats(0, 0.999),
       alpha=st.floats(0, 0.95), gamma=st.integers(1, 8))
def test_mirror_never_slower_than_sd_when_rendezvous_is_cheap(prefix, suffix, draft, rv_fraction, alpha, gamma):
    """T_rv (both rendezvous) < min(T_suffix, T_draft) and coverage 1 => mirror <= sd (mirror-sd.md §5).

    This is a law of decode steps. With a prefill, Mirror-SD rolls out one window
    more than SD (the first, exposed), which a negligible suffix cannot earn back.
    """
    t_rv = rv_fraction * min(suffix, gamma * draft)
    costs = ConstantCosts(prefix, suffix, draft, rendezvous=t_rv / 2)
    task = Task("t", prompts=2, prompt_tokens=10, new_tokens=40)
    results = _run(costs, ["sd", "mirror"], alpha=alpha, gamma=gamma, tasks=[task])
    assert results["mirror"].seconds <= results["sd"].seconds * (1 + 1e-12)


@given(low=st.floats(0, 1), high=st.floats(0, 1), alpha=st.floats(0, 0.95), seed=st.integers(0, 2**16),
       draft=positive)
def test_more_coverage_never_hurts(low, high, alpha, seed, draft):
    low, high = min(low, high), max(low, high)
    costs = ConstantCosts(0.003, 0.004, draft, rendezvous=1e-5)
    task = Task("t", prompts=2, prompt_tokens=10, new_tokens=60)
    slow = _run(costs, ["mirror"], alpha=alpha, coverage=low, seed=seed, tasks=[task])["mirror"]
    fast = _run(costs, ["mirror"], alpha=alpha, coverage=high, seed=seed, tasks=[task])["mirror"]
    assert fast.counts["misses"] <= slow.counts["misses"]
    assert fast.seconds <= slow.seconds * (1 + 1e-12)


@given(scale=st.floats(0.01, 100), alpha=st.floats(0, 0.95))
def test_speedups_invariant_to_scaling_every_cost(scale, alpha):
    base = ConstantCosts(0.003, 0.005, 0.0007, rendezvous=2e-5, heads_pass=3e-4)
    scaled = ConstantCosts(*(scale * x for x in (0.003, 0.005, 0.0007, 2e-5, 3e-4)))
    methods = ["sd", "ss", "medusa", "eagle", "mirror", "mirror+ss"]
    a = _run(base, methods, alpha=alpha, coverage=0.6, prefill=True)
    b = _run(scaled, methods, alpha=alpha, coverage=0.6, prefill=True)
    for name in methods:
        assert b[name].speedup == pytest.approx(a[name].speedup, rel=1e-9)
        assert b[name].seconds == pytest.approx(scale * a[name].seconds, rel=1e-9)


def test_time_saved_per_step_matches_the_paper():
    """ΔT = T_SD − T_Mirror = min(Δ, T_draft) − T_rv per step (mirror-sd.md §5)."""
    for suffix, draft_pass in [(0.006, 0.0005), (0.002, 0.0013)]:
        costs = ConstantCosts(0.004, suffix, draft_pass, rendezvous=1e-5)
        results = _run(costs, ["sd", "mirror"], coverage=1.0)
        steps = results["sd"].counts["steps"]
        saved = (results["sd"].seconds - results["mirror"].seconds) / steps
        assert saved == pytest.approx(min(suffix, 5 * draft_pass) - 2e-5, rel=1e-9)
        assert np.isfinite(saved)


def test_no_device_group_is_ever_double_booked():
    costs = ConstantCosts(0.004, 0.003, 0.0009, rendezvous=2e-5, heads_pass=1e-4)
    workload = Workload([TASK], AcceptanceModel(0.7, 0.5), prefill=True)
    methods = ["sd", "ss", "medusa", "eagle", "mirror", "mirror+ss"]
    results = simulate(workload, SimConfig(gamma=5), methods, costs=costs, timeline_steps=10**6)
    for name, result in results.items():
        for device in ("target", "draft", "link"):
            spans = sorted((s.start, s.start + s.seconds) for s in result.spans if s.device == device)
            assert all(end <= next_start + 1e-12 for (_, end), (next_start, _) in zip(spans, spans[1:])), name
        busy = sum(s.seconds for s in result.spans if s.device == "target")
        assert busy == pytest.approx(result.busy["target"], rel=1e-9)


# ----- contended devices: device groups are SimPy resources ---------------------------------------
def test_work_on_a_busy_device_queues_first_come_first_served():
    from simulator.engine import Simulation

    sim = Simulation(timeline_steps=10)
    ends = {}

    def job(name, device, seconds):
        yield from sim.serial((device, "target", seconds))
        ends[name] = sim.env.now

    for name, device, seconds in [("a", "target", 0.003), ("b", "target", 0.002), ("c", "draft", 0.004)]:
        sim.env.process(job(name, device, seconds))
    sim.env.run()
    assert ends == {"a": 0.003, "b": 0.005, "c": 0.004}          # b waited for a; c had its own device
    assert sim.breakdown["queue"] == pytest.approx(0.003) and sim.busy["target"] == pytest.approx(0.005)


@pytest.mark.parametrize("suffix, draft_pass", [(0.006, 0.0005), (0.002, 0.0013)])
def test_mirror_with_the_draft_on_the_targets_devices_serialises(suffix, draft_pass):
    """Sharing one device group, the rollouts queue behind the suffix: T = prefix + rv + suffix + draft + rv."""
    costs = ConstantCosts(target_prefix=0.004, target_suffix=suffix, draft_pass=draft_pass, rendezvous=3e-5)
    workload = Workload([TASK], AcceptanceModel(0.7, 1.0), seed=1, prefill=False)
    shared = simulate(workload, SimConfig(gamma=5, draft_on_target=True), ["mirror", "sd"], costs=costs)
    mirror = shared["mirror"]
    law = 0.004 + 3e-5 + suffix + 5 * draft_pass + 3e-5
    assert mirror.seconds == pytest.approx(mirror.counts["steps"] * law, rel=REL)
    assert sum(mirror.breakdown.values()) == pytest.approx(mirror.seconds, rel=REL)
    # SD is serial anyway: sharing the devices changes nothing for it.
    own = simulate(workload, SimConfig(gamma=5), ["sd"], costs=costs)["sd"]
    assert shared["sd"].seconds == own.seconds and "queue" not in own.breakdown
