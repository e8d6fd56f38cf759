"""Synthetic workloads follow their acceptance models; traces replay exactly; batching pads."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl.trace import StepRecord, write_trace
from simulator import AcceptanceModel, ConstantCosts, SimConfig, Task, Workload, load_traces, simulate
from simulator.batching import batch_steps
from simulator.errors import InputError
from simulator.workload import Shape, shape_records, synthesize, synthesize_outcomes


def _z(samples: np.ndarray, expected: float) -> float:
    return (samples.mean() - expected) / (samples.std(ddof=1) / np.sqrt(samples.size))


@pytest.mark.parametrize("alpha, gamma", [(0.8, 7), (0.6, 4), (0.9, 3)])
def test_iid_acceptance_gives_leviathans_tokens_per_step(alpha, gamma):
    outcomes = synthesize_outcomes(AcceptanceModel(alpha), gamma, budget=100_000, seed=5, prompt=0)
    per_step = (outcomes.accepted + 1)[:-1].astype(float)       # the last step is cut at the budget
    leviathan = (1 - alpha ** (gamma + 1)) / (1 - alpha)
    assert abs(_z(per_step, leviathan)) < 4
    # Negative control: the same samples reject a wrong law (the window without the bonus token).
    wrong = (1 - alpha ** gamma) / (1 - alpha)
    assert abs(_z(per_step, wrong)) > 4


def test_simulated_mean_emitted_matches_leviathan():
    costs = ConstantCosts(0.01, 0.01, 0.001)
    workload = Workload([Task("t", 4, 16, 8000)], AcceptanceModel(0.75), seed=2, prefill=False)
    result = simulate(workload, SimConfig(gamma=5), ["sd"], costs=costs)["sd"]
    sd = result.metrics()
    expected = (1 - 0.75 ** 6) / 0.25
    n = sd["steps"]
    assert abs(sd["mean_emitted"] - expected) < 4 * 1.8 / np.sqrt(n) + 4 / n   # sampling error + 4 cut steps
    # mean_accepted counts the bonus token (refimpl.trace's one definition): emitted, but for cut steps.
    assert sd["mean_accepted"] == pytest.approx(sd["mean_emitted"], abs=4 * 5 / n)
    assert sd["mean_accepted"] == (result.counts["accepted"] + n) / n
    assert abs(sd["mean_accepted"] - expected) < 4 * 1.8 / np.sqrt(n)


def test_position_profile_expectation():
    alphas = (0.9, 0.8, 0.5, 0.3)
    outcomes = synthesize_outcomes(AcceptanceModel(alphas), 4, budget=80_000, seed=1, prompt=3)
    expected = 1 + sum(np.prod(alphas[:j]) for j in range(1, 5))
    assert abs(_z((outcomes.accepted + 1)[:-1].astype(float), expected)) < 4
    # Depth frequencies: P(A >= j) = prod(alpha_1..alpha_j).
    for j in range(1, 5):
        assert np.mean(outcomes.accepted >= j) == pytest.approx(np.prod(alphas[:j]), abs=0.01)


def test_coverage_hits_by_rejection_depth_and_coupling():
    gamma = 3
    profile = (0.9, 0.6, 0.4, 0.2)
    outcomes = synthesize_outcomes(AcceptanceModel(0.5, profile), gamma, budget=60_000, seed=0, prompt=0)
    for depth, omega in enumerate(profile):
        hits = outcomes.coverage_hit[outcomes.accepted == depth]
        assert hits.mean() == pytest.approx(omega, abs=4 * np.sqrt(omega * (1 - omega) / hits.size) + 1e-9)
    more = synthesize_outcomes(AcceptanceModel(0.5, 0.95), gamma, budget=60_000, seed=0, prompt=0)
    assert np.array_equal(more.accepted, outcomes.accepted)        # coverage never changes acceptance
    assert np.all(more.coverage_hit | ~synthesize_outcomes(AcceptanceModel(0.5, 0.2), gamma, 60_000, 0,
                                                          0).coverage_hit)


@given(alpha=st.floats(0, 1), gamma=st.integers(0, 9), new_tokens=st.integers(1, 300), prefill=st.booleans())
def test_synthetic_prompts_generate_exactly_their_tokens(alpha, gamma, new_tokens, prefill):
    task = Task("t", prompts=2, prompt_tokens=20, new_tokens=new_tokens)
    for method in ("ar", "sd", "ss", "medusa", "eagle", "mirror", "mirror+ss"):
        for trace in synthesize(method, [task], AcceptanceModel(alpha), Shape(gamma=gamma), prefill=prefill):
            records = trace.records
            assert sum(r.emitted for r in records) == new_tokens
            decode = [r for r in records if not r.prefill]
            context = 20
            for r in decode:                      # KV context grows by what each step committed
                assert r.context == context and 1 <= r.emitted <= r.accepted + 1
                context += r.emitted


def test_shapes_per_method():
    outcomes = synthesize_outcomes(AcceptanceModel(0.7, 0.5), 7, budget=50, seed=0, prompt=0)
    shape = Shape(gamma=7, kappa=8, ss_tokens=3)
    sd = shape_records("sd", 10, outcomes, shape, prefill=False)[0]
    assert (sd.target_tokens, sd.draft_passes, sd.draft_token_list()) == (8, 7, [1] * 7)
    mirror = shape_records("mirror+ss", 10, outcomes, shape, prefill=True)
    assert mirror[0].prefill and mirror[0].target_tokens == 10 and mirror[0].draft_passes == 1
    assert (mirror[1].draft_passes, mirror[1].draft_token_list(), mirror[1].branches) == (3, [3, 3, 3], 64)
    assert shape_records("ss", 10, outcomes, Shape(tree_nodes=40), prefill=False)[0].target_tokens == 40


def _write_traces(tmp_path, method: str, n: int = 3) -> list[str]:
    task = Task("t", prompts=n, prompt_tokens=30, new_tokens=90)
    paths = []
    for i, trace in enumerate(synthesize(method, [task], AcceptanceModel(0.7, 0.6), Shape(gamma=5), seed=4)):
        path = tmp_path / f"{method}-{i}.jsonl"
        write_trace(path, trace.header, trace.records)
        paths.append(str(path))
    return paths


def test_replaying_written_traces_equals_the_synthetic_run(tmp_path):
    costs = ConstantCosts(0.004, 0.005, 0.0009, rendezvous=1e-5)
    config = SimConfig(gamma=5)
    synthetic = Workload([Task("t", 3, 30, 90)], AcceptanceModel(0.7, 0.6), seed=4)
    direct = simulate(synthetic, config, ["mirror"], costs=costs)
    replayed = simulate(Workload(traces=load_traces(_write_traces(tmp_path, "mirror")), seed=4),
                        config, ["mirror"], costs=costs)
    for name in ("ar", "mirror"):
        assert replayed[name].seconds == direct[name].seconds
        assert replayed[name].counts == direct[name].counts


def test_mirror_traces_without_coverage_draw_it_like_the_synthetic_run(tmp_path):
    costs = ConstantCosts(0.004, 0.005, 0.0009, rendezvous=1e-5)
    paths = _write_traces(tmp_path, "mirror")
    for path in paths:                       # strip what a recorder might not know
        lines = open(path).read().splitlines()
        stripped = [lines[0]] + [json.dumps({k: v for k, v in json.loads(line).items()
                                             if k not in ("coverage_hit", "branches")}) for line in lines[1:]]
        open(path, "w").write("\n".join(stripped) + "\n")
    replayed = simulate(Workload(traces=load_traces(paths), acceptance=AcceptanceModel(coverage=0.6), seed=4),
                        SimConfig(gamma=5), ["mirror"], costs=costs)
    direct = simulate(Workload([Task("t", 3, 30, 90)], AcceptanceModel(0.7, 0.6), seed=4), SimConfig(gamma=5),
                      ["mirror"], costs=costs)
    assert replayed["mirror"].seconds == direct["mirror"].seconds
    assert replayed["mirror"].counts == direct["mirror"].counts


def test_sd_trace_replays_as_mirror_with_the_same_acceptance(tmp_path):
    costs = ConstantCosts(0.004, 0.005, 0.0009, rendezvous=1e-5)
    traces = load_traces(_write_traces(tmp_path, "sd"))
    results = simulate(Workload(traces=traces, acceptance=AcceptanceModel(coverage=1.0)), SimConfig(gamma=5),
                       ["sd", "mirror", "mirror+ss"], costs=costs)
    assert results["sd"].counts["accepted"] == results["mirror"].counts["accepted"]
    assert results["mirror"].counts["misses"] == 0 and results["mirror"].seconds < results["sd"].seconds


def test_tree_trace_does_not_replay_as_a_chain_method(tmp_path):
    traces = load_traces(_write_traces(tmp_path, "ss", n=1))
    with pytest.raises(InputError, match="a 'ss' trace replays as ar, ss, not as 'sd'"):
        simulate(Workload(traces=traces), SimConfig(), ["sd"], costs=ConstantCosts(1, 1, 1))


def test_batching_pads_to_the_widest_member():
    a = [StepRecord(10, 4, 2, [1, 2], 3, 1, 2, branches=8, coverage_hit=True)]
    b = [StepRecord(15, 3, 3, 1, 3, 3, 4, branches=8, coverage_hit=False),
         StepRecord(19, 4, 3, 1, 3, 0, 1, branches=8, coverage_hit=True)]
    steps = list(batch_steps([a, b], batch=2))
    assert len(steps) == 2
    first, second = steps
    assert (first.batch, first.context, first.rows, first.draft_rows, first.coverage_hit) == (2, 15, 4, (1, 2, 1),
                                                                                               False)
    assert (first.emitted, first.accepted) == (6, 4)
    assert (second.batch, second.context) == (1, 19)


def test_acceptance_outside_unit_interval_is_an_input_error():
    with pytest.raises(InputError, match="--acceptance"):
        AcceptanceModel(1.5)
    with pytest.raises(InputError, match="--coverage"):
        AcceptanceModel(0.5, (0.3, -0.1))
