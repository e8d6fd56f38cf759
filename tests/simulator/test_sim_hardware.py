"""With hwmodels' latencies: the simulator equals the closed forms, and the properties hold."""
from __future__ import annotations

import dataclasses

import hwmodels
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import AcceptanceModel, Group, HardwareCosts, SimConfig, Task, Workload, simulate
from simulator.config import TESTBED
from simulator.costs import CANDIDATE_BYTES, VERDICT_BYTES
from simulator.errors import InputError
from simulator.simulate import shape_for

REL = 1e-9
TASK = Task("t", prompts=2, prompt_tokens=40, new_tokens=60)
CONFIG = SimConfig()          # the Mirror-SD testbed


def _workload(coverage=1.0, prefill=False, alpha=0.75, seed=3):
    return Workload([TASK], AcceptanceModel(alpha, coverage), seed=seed, prefill=prefill)


def _fwd(model, device, group, rows, context, batch=1, **kwargs):
    return hwmodels.forward_latency(model, device, rows, context, batch=batch, tp=group.tp, **kwargs).seconds


def test_mirror_equals_the_step_latency_law_on_the_testbed():
    """T = T(1..ℓe) + T_rv + max(T(ℓe+1..N), T_draft) + T_rv per step, from hwmodels directly."""
    workload = _workload(coverage=1.0)
    mirror = simulate(workload, CONFIG, ["mirror+ss"])["mirror+ss"]
    n_layers = hwmodels.get_model("qwen3-32b").n_layers
    exit_layer = n_layers // 2
    expected = 0.0
    for records in workload.records("mirror+ss", shape_for(CONFIG)):
        for r in records:
            prefix = _fwd("qwen3-32b", "m2-ultra-gpu", CONFIG.target, r.target_tokens, r.context,
                          layers=(0, exit_layer), classifier=True)
            suffix = _fwd("qwen3-32b", "m2-ultra-gpu", CONFIG.target, r.target_tokens, r.context,
                          layers=(exit_layer, n_layers), classifier=True)
            draft = sum(_fwd("qwen3-0.6b", "m2-ultra-ane", CONFIG.draft, rows * r.branches, r.context,
                             sharding="spd") for rows in r.draft_token_list())
            rv1 = hwmodels.link_latency("m2-ultra-unified", r.target_tokens * 8 * CANDIDATE_BYTES)
            rv2 = hwmodels.link_latency("m2-ultra-unified", VERDICT_BYTES)
            expected += prefix + rv1 + max(suffix, draft) + rv2
    assert mirror.counts["misses"] == 0
    assert mirror.seconds == pytest.approx(expected, rel=REL)


def test_sd_and_ar_equal_their_closed_forms_on_the_testbed():
    workload = _workload(prefill=True)
    results = simulate(workload, CONFIG, ["sd"])
    shape = shape_for(CONFIG)
    for method, result in results.items():
        expected = 0.0
        for records in workload.records(method, shape):
            for r in records:
                target = _fwd("qwen3-32b", "m2-ultra-gpu", CONFIG.target, r.target_tokens, r.context)
                draft = sum(_fwd("qwen3-0.6b", "m2-ultra-ane", CONFIG.draft, rows, r.context, sharding="spd")
                            for rows in r.draft_token_list())
                expected += target + draft                 # T_SD = T_target + T_draft (AR: no draft)
        assert result.seconds == pytest.approx(expected, rel=REL), method


def _scaled(config: SimConfig, factor: float) -> SimConfig:
    return dataclasses.replace(
        config,
        target=Group(hwmodels.get_device(config.target.device).scaled(factor), config.target.tp),
        draft=Group(hwmodels.get_device(config.draft.device).scaled(factor), config.draft.tp),
        link=hwmodels.get_link(config.link or TESTBED["link"]).scaled(factor))


@settings(max_examples=5)
@given(factor=st.floats(0.05, 20))
def test_speedups_invariant_to_scaling_all_device_rates(factor):
    methods = ["sd", "ss", "eagle", "mirror", "mirror+ss"]
    workload = _workload(coverage=0.6, prefill=True)
    base = simulate(workload, CONFIG, methods)
    scaled = simulate(workload, _scaled(CONFIG, factor), methods)
    for name in base:
        assert scaled[name].speedup == pytest.approx(base[name].speedup, rel=1e-9)
        assert scaled[name].seconds == pytest.approx(base[name].seconds / factor, rel=1e-9)


@settings(max_examples=8)
@given(low=st.floats(0, 1), high=st.floats(0, 1), seed=st.integers(0, 1000))
def test_more_coverage_never_hurts_on_the_testbed(low, high, seed):
    low, high = sorted((low, high))
    costs = HardwareCosts(CONFIG)
    slow = simulate(_workload(low, seed=seed), CONFIG, ["mirror"], costs=costs)["mirror"]
    fast = simulate(_workload(high, seed=seed), CONFIG, ["mirror"], costs=costs)["mirror"]
    assert fast.seconds <= slow.seconds * (1 + 1e-12)


def test_mirror_beats_sd_on_the_testbed_when_the_rendezvous_is_cheap():
    """One rollout per step (as in SD), full coverage: T_rv < min(suffix, draft) holds, so mirror <= sd."""
    config = dataclasses.replace(CONFIG, branches=1)
    results = simulate(_workload(coverage=1.0), config, ["sd", "mirror"])
    assert results["mirror"].seconds < results["sd"].seconds


def test_kappa_and_costs_follow_the_batch():
    assert SimConfig(batch=1).kappa_used == 8 and SimConfig(batch=16).kappa_used == 4
    assert SimConfig(batch=32).kappa_used == 2 and SimConfig(batch=64).kappa_used == 1
    costs = HardwareCosts(SimConfig(batch=64))
    assert costs.target(8, 500, 64) > costs.target(8, 500, 1)
    workload = Workload([Task("t", 4, 40, 40)], AcceptanceModel(0.7, 0.8))
    one = simulate(workload, SimConfig(batch=1), ["mirror"])
    four = simulate(workload, SimConfig(batch=4), ["mirror"])
    assert four["ar"].seconds < one["ar"].seconds          # 4 sequences share each batched pass
    assert four["mirror"].tokens == one["mirror"].tokens


@pytest.mark.parametrize("changes, message", [
    (dict(kappa=10**7), "--kappa"),
    (dict(exit_layer=64), "--exit-layer"),
    (dict(dtype="bf16", draft_dtype="bf16"), "--draft-hw: device m2-ultra-ane does not support bf16"),
    (dict(target=Group("rtx-4090", tp=1), link="pcie-4"), "--target-hw: model qwen3-32b"),
    (dict(target=Group("rtx-4090", tp=1), link=None), "--link: name the link between rtx-4090 and m2-ultra-ane"),
    (dict(target=Group("m2-ultra-gpu", tp=3)), "--tp: 3 does not divide the 64 attention heads of qwen3-32b"),
    (dict(target=Group("m2-ultra-gpu", tp=16, count=16)), None),
])
def test_bad_systems_are_input_errors(changes, message):
    if message is None:                         # TP 16 replicates qwen3-32b's 8 KV heads: allowed
        HardwareCosts(dataclasses.replace(CONFIG, **changes))
        return
    with pytest.raises(InputError, match=message):
        HardwareCosts(dataclasses.replace(CONFIG, **changes))
