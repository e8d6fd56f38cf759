"""Replaying refimpl's own traces: ss, medusa and mirror steps priced as refimpl runs them.

The expected times are built here from the trace's fields and the roofline's formula
(hwmodels.latency's module docstring), not by calling the simulator's cost functions, so
that a step priced with the wrong rows, layers or classifier fails.
"""
from __future__ import annotations

import dataclasses

import hwmodels
import pytest

from refimpl.trace import StepRecord, TraceHeader, write_trace
from simulator import AcceptanceModel, Group, SimConfig, Workload, simulate
from simulator.costs import shared_bus
from simulator.errors import InputError
from simulator.workload import drafting_of, load_traces, traces_drafting, traces_rollout

TARGET = hwmodels.get_model("stories15m")
#: A CPU-like device whose every term is non-zero, fixed (no micro-benchmark): fp32 weights.
DEVICE = dataclasses.replace(
    hwmodels.get_device("a100-80gb"), key="cpu-like", peak_flops={"fp32": 9e10}, memory_bandwidth=3e10, overlap=0.3, compute_efficiency=0.8,
    memory_efficiency=0.9, dot_overhead_s=3e-9, score_overhead_s=5e-9, layer_overhead_s=2e-6,
    pass_overhead_s=1e-5, step_overhead_s=5e-5, tree_row_overhead_s=1e-5, draft_pass_overhead_s=3e-6, tp_link=None)
LINK = hwmodels.Link(key="none", name="same core", alpha_s=0.0, beta_s_per_byte=1e-15)
SHORTLIST = 501


def _roofline(device, flops, nbytes, dots) -> float:
    """One component's time, from hwmodels.latency's formula."""
    c = flops / (device.peak_flops["fp32"] * device.compute_efficiency) + dots * device.dot_overhead_s
    m = nbytes / (device.memory_bandwidth * device.memory_efficiency)
    return max(c, m) + (1 - device.overlap) * min(c, m)


def _dense(device, weights: list[tuple[int, int]], tokens: int) -> float:
    """Matmuls (in, out) on `tokens` rows, fp32: 2 FLOP per multiply-add, weights read once."""
    params = sum(i * o for i, o in weights)
    return _roofline(device, 2 * tokens * params, 4 * params + 4 * tokens * sum(i + o for i, o in weights),
                     tokens * sum(o for _, o in weights))


def _trace(tmp_path, method, params, records, prompt=4, draft=None):
    path = tmp_path / f"{method}.jsonl"
    prefill = StepRecord(context=0, target_tokens=prompt, draft_passes=0, draft_tokens_per_pass=0, proposed=0,
                         accepted=0, emitted=1, prefill=True)
    write_trace(path, TraceHeader(method=method, params=params, target="stories15m", draft=draft,
                                  prompt_tokens=prompt), [prefill, *records])
    return load_traces([str(path)])


def _steps(prompt: int, rows: int, draft_passes: int, per_pass, accepted: list[int]) -> list[StepRecord]:
    records, context = [], prompt
    for a in accepted:
        records.append(StepRecord(context=context, target_tokens=rows, draft_passes=draft_passes,
                                  draft_tokens_per_pass=per_pass, proposed=rows - 1, accepted=a, emitted=a + 1))
        context += a + 1
    return records


def _simulate(traces, method, **config):
    config = SimConfig(target_model=TARGET, draft_model=config.pop("draft_model", TARGET),
                       target=Group(DEVICE), draft=Group(DEVICE), link=LINK, dtype="fp32",
                       drafting=traces_drafting(traces), rollout=traces_rollout(traces), **config)
    return simulate(Workload(traces=traces, acceptance=AcceptanceModel()), config, [method])[method]


def _verify(rows: int, context: int) -> float:
    return hwmodels.forward_latency(TARGET, DEVICE, rows, context, dtype="fp32").seconds


def _host(rows: int) -> float:
    return DEVICE.step_overhead_s + DEVICE.tree_row_overhead_s * rows


def test_an_ss_step_is_its_verification_and_the_stream_rows_through_the_last_layers_and_the_shortlist(tmp_path):
    gamma, layers = 3, 2
    records = _steps(4, gamma + 1, 1, gamma, [0, 2, 3, 1, 0, 3])
    traces = _trace(tmp_path, "ss", {"gamma": gamma, "schedule": "deferred", "stream_layers": layers,
                                     "draft_vocab": SHORTLIST}, records)
    h = TARGET.hidden_size
    expected = _verify(4, 0)                               # the prefill
    for r in records:
        streams = hwmodels.forward_latency(TARGET, DEVICE, gamma, r.context, dtype="fp32",
                                           layers=(TARGET.n_layers - layers, TARGET.n_layers),
                                           classifier=False).seconds
        shortlist = _dense(DEVICE, [(h, SHORTLIST)], gamma)
        expected += (_verify(r.target_tokens, r.context) + streams + shortlist + DEVICE.draft_pass_overhead_s
                     + _host(r.target_tokens))
    assert _simulate(traces, "ss").seconds == pytest.approx(expected, rel=1e-9)


def test_ss_stream_rows_cost_a_fraction_of_a_pass_and_grow_with_layers_and_vocabulary(tmp_path):
    """Negative controls of the pricing: the full classifier, or every layer, would cost more."""
    records = _steps(4, 4, 1, 3, [1, 2, 0, 3])
    seconds = {}
    for layers, vocab in ((2, SHORTLIST), (2, TARGET.vocab_size), (6, SHORTLIST)):
        traces = _trace(tmp_path, "ss", {"gamma": 3, "stream_layers": layers, "draft_vocab": vocab}, records)
        seconds[layers, vocab] = _simulate(traces, "ss").seconds
    assert seconds[2, SHORTLIST] < seconds[2, TARGET.vocab_size]
    assert seconds[2, SHORTLIST] < seconds[6, SHORTLIST]


def test_fused_stream_rows_ride_in_the_verification_pass_for_less_than_their_own_pass(tmp_path):
    records = _steps(4, 4, 1, 12, [1, 2, 0, 3])
    times = {}
    for schedule in ("deferred", "fused"):
        traces = _trace(tmp_path, "ss", {"gamma": 3, "stream_layers": 2, "draft_vocab": SHORTLIST,
                                         "schedule": schedule}, records)
        times[schedule] = _simulate(traces, "ss").seconds
    assert times["fused"] < times["deferred"]


def test_a_medusa_step_is_its_verification_and_k_heads_on_one_row_through_the_shared_shortlist(tmp_path):
    k = 3
    records = _steps(4, k + 1, 1, k, [3, 0, 1, 2, 2])
    traces = _trace(tmp_path, "medusa", {"gamma": k, "draft_vocab": SHORTLIST}, records)
    h = TARGET.hidden_size
    heads = _dense(DEVICE, [(h, h)] * k, 1) + _dense(DEVICE, [(h, SHORTLIST)], k) + DEVICE.draft_pass_overhead_s
    expected = _verify(4, 0) + sum(_verify(r.target_tokens, r.context) + heads + _host(r.target_tokens)
                                   for r in records)
    assert _simulate(traces, "medusa").seconds == pytest.approx(expected, rel=1e-9)


def test_traces_without_draft_vocab_keep_the_papers_layouts(tmp_path):
    """Older traces (and hand-written ones) lack draft_vocab: Medusa's heads are priced on every
    verified row with their own classifiers, which costs more than refimpl's layout."""
    records = _steps(4, 4, 1, 3, [3, 0, 1, 2])
    old = _trace(tmp_path, "medusa", {"gamma": 3}, records)
    assert drafting_of(old[0].header) is None
    new = _trace(tmp_path, "medusa", {"gamma": 3, "draft_vocab": SHORTLIST}, records)
    assert _simulate(old, "medusa").seconds > _simulate(new, "medusa").seconds


@pytest.mark.parametrize("params, fault", [({"gamma": 3, "draft_vocab": 0, "stream_layers": 2}, "draft_vocab"),
                                           ({"gamma": 3, "draft_vocab": 501, "stream_layers": 9}, "stream_layers"),
                                           ({"gamma": 3, "draft_vocab": 501}, "stream_layers"),
                                           ({"gamma": 3, "draft_vocab": 501, "stream_layers": 2,
                                             "schedule": "later"}, "schedule")])
def test_bad_drafting_params_name_the_field(tmp_path, params, fault):
    traces = _trace(tmp_path, "ss", params, _steps(4, 4, 1, 3, [0]))
    with pytest.raises(InputError, match=fault):
        drafting_of(traces[0].header, "t.jsonl")


def _mirror_trace(tmp_path, params, window=4, branches=8, passes=3):
    records, context = [], 4
    for a, hit in ((0, False), (3, True), (1, True), (2, False), (3, True)):
        records.append(StepRecord(context=context, target_tokens=window, draft_passes=passes,
                                  draft_tokens_per_pass=1, proposed=window - 1, accepted=a, emitted=a + 1,
                                  branches=branches, coverage_hit=hit))
        context += a + 1
    draft = {"name": "first2", "hidden_size": 288, "intermediate_size": 768, "num_hidden_layers": 2,
             "num_attention_heads": 6, "num_key_value_heads": 6, "vocab_size": 32000}
    return _trace(tmp_path, "mirror", {"gamma": passes, "exit_layer": 3, "kappa": 2, **params}, records, 4, draft)


def test_a_tree_rollout_re_runs_the_window_and_every_branch_so_far(tmp_path):
    """refimpl's rollout: pass k runs window + k x branches rows, logits for the branches only."""
    draft = dataclasses.replace(TARGET, name="first2", n_layers=2)
    tree = _mirror_trace(tmp_path, {"rollout": "tree"})
    batched = _mirror_trace(tmp_path, {})
    assert traces_rollout(tree) == "tree" and traces_rollout(batched) == "batched"
    results = {}
    for name, traces in (("tree", tree), ("batched", batched)):
        results[name] = _simulate(traces, "mirror", draft_model=draft, exit_layer=3, kappa=2,
                                  draft_on_target=True).busy["draft"]
    h, v = TARGET.hidden_size, TARGET.vocab_size
    expected = 0.0        # (the prefill record has no draft pass)
    ready = False
    for r in tree[0].records[1:]:
        if not ready:       # a fresh chain: one-row passes of the whole draft
            expected += r.draft_passes * hwmodels.forward_latency(draft, DEVICE, 1, r.context, dtype="fp32").seconds
        for k in range(1, r.draft_passes + 1):
            blocks = hwmodels.forward_latency(draft, DEVICE, r.target_tokens + k * r.branches, r.context,
                                              dtype="fp32", classifier=False).seconds
            expected += blocks + _dense(DEVICE, [(h, v)], r.branches)
        ready = r.coverage_hit
    assert results["tree"] == pytest.approx(expected, rel=1e-9)
    assert results["tree"] > results["batched"]


def test_two_jobs_on_a_shared_bus():
    assert shared_bus(3.0, 2.0, 5.0, 1.0, 1.0) == (3.0, 5.0)           # independent memories
    a, b = shared_bus(2.0, 2.0, 2.0, 2.0, 2.0)                         # memory-bound alike: half speed each
    assert a == pytest.approx(4.0) and b == pytest.approx(4.0)
    a, b = shared_bus(2.0, 0.0, 3.0, 3.0, 2.0)                         # a computes: it does not slow
    assert a == pytest.approx(2.0) and b == pytest.approx(2.0 + (3.0 - 1.0))
    a, b = shared_bus(1.0, 1.0, 4.0, 4.0, 2.0)                         # b finishes alone at full speed
    assert a == pytest.approx(2.0) and b == pytest.approx(5.0)
    a, b = shared_bus(2.0, 0.0, 3.0, 0.0, 1.5, compute_contention=2.0)  # no free core: compute shares too
    assert a == pytest.approx(4.0) and b == pytest.approx(5.0)
    a, b = shared_bus(2.0, 0.0, 3.0, 0.0, 3.0)                         # the bus alone slows no computing
    assert (a, b) == (2.0, 3.0)


def test_overlapped_mirror_replays_between_independent_devices_and_one_core(tmp_path):
    """--overlap traces: the draft on a second device; sharing the memory bus costs time, but
    never more than running everything on one core."""
    draft = dataclasses.replace(TARGET, name="first2", n_layers=2)
    traces = _mirror_trace(tmp_path, {"rollout": "tree", "overlap": True})
    times = {}
    for name, config in (("serial", {"draft_on_target": True}), ("free", {}),
                         ("shared", {"memory_contention": 1.8}), ("worse", {"memory_contention": 3.0})):
        times[name] = _simulate(traces, "mirror", draft_model=draft, exit_layer=3, kappa=2, **config).seconds
    assert times["free"] < times["shared"] < times["worse"] < times["serial"]
    with pytest.raises(InputError, match="memory-contention"):
        SimConfig(memory_contention=0.5)


def test_refimpl_records_what_the_replay_needs(tmp_path, capsys):
    """generate --trace on stories15M: ss and medusa traces name their shortlist and stream
    layers, mirror traces their tree rollout, and the simulator reads them."""
    from conftest import checkpoint_file
    from mirrorstream.cli import main

    model = checkpoint_file("stories15M/stories15M.bin")
    found = {}
    for method, options in (("ss", []), ("medusa", []), ("mirror", ["--draft-layers", "2", "--gamma", "2"])):
        path = tmp_path / f"{method}.jsonl"
        assert main(["generate", "--model", str(model), "--prompt", "Once", "--max-new-tokens", "6", "--threads",
                     "1", "--method", method, *options, "--trace", str(path), "--json"]) == 0
        capsys.readouterr()
        found[method] = load_traces([str(path)])
    from refimpl.checkpoints import load_model
    from refimpl.decoding.medusa import load_heads
    from refimpl.streams import load_streams, shipped
    target = load_model(model)
    streams, heads = load_streams(shipped(target, "streams"), target), load_heads(shipped(target, "heads"), target)
    ss, medusa = drafting_of(found["ss"][0].header), drafting_of(found["medusa"][0].header)
    assert (ss.method, ss.vocab, ss.stream_layers, ss.schedule) == ("ss", len(streams.vocabulary), streams.n_layers,
                                                                     "fused")     # the CLI's default
    assert (medusa.method, medusa.vocab, medusa.gamma) == ("medusa", len(heads.vocabulary), heads.gamma)
    assert traces_rollout(found["mirror"]) == "tree"
