"""Mirror-SD is lossless: exact match against the target's own tokens gives `ar`'s very tokens
(greedy and sampled) for random tiny models, drafts, κ, ℓe, γ and branch limits; the early exit
is the target's own head on the layer-ℓe stream; branch rollouts equal fresh draft chains; a
covered correction reuses its branch; bad input is one line."""
import threading
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refimpl.decoding.mirror import DraftState, check_overlap, early_exit, mirror, select_branches
from refimpl.decoding.speculative import Proposal, target_pass
from refimpl.errors import InputError
from refimpl.model import Model, ModelConfig
from refimpl.sampling import SamplingSettings
from refimpl.streams import deferred_streams, model_identity, random_streams
from refimpl.testing import assert_same_as_ar, decode, random_model, random_weights
from refimpl.trace import validate_record
from refimpl.trees import TokenTree
from refimpl.verify import top_children

pytestmark = pytest.mark.usefixtures("one_thread")

settings_strategy = st.builds(SamplingSettings, temperature=st.sampled_from([0.0, 0.0, 0.7, 1.0]),
                              top_k=st.sampled_from([0, 0, 3]), top_p=st.sampled_from([1.0, 1.0, 0.8]),
                              seed=st.integers(0, 2**32))


@st.composite
def configs(draw):
    """Small shapes with at least two layers (ℓe in 1..N-1)."""
    n_kv_heads = draw(st.integers(1, 2))
    n_heads = n_kv_heads * draw(st.integers(1, 2))
    head_dim = 2 * draw(st.integers(1, 5))
    return ModelConfig(dim=n_heads * head_dim, hidden_dim=draw(st.integers(3, 40)),
                       n_layers=draw(st.integers(2, 4)), n_heads=n_heads, n_kv_heads=n_kv_heads,
                       vocab_size=draw(st.integers(5, 70)), seq_len=draw(st.integers(24, 96)),
                       shared_classifier=draw(st.booleans()))


@st.composite
def cases(draw):
    """A target, a draft (its first layers, another model, or itself), a prompt, settings, params."""
    config = draw(configs())
    target = random_model(config, draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["cut", "other", "same"]))
    if kind == "cut":
        draft = target.first_layers(draw(st.integers(1, config.n_layers)))
    elif kind == "other":
        other = ModelConfig(dim=8, hidden_dim=16, n_layers=1, n_heads=2, n_kv_heads=1,
                            vocab_size=config.vocab_size, seq_len=draw(st.integers(8, 96)))
        draft = random_model(other, draw(st.integers(0, 2**16)))
    else:
        draft = target
    n = draw(st.integers(1, 6))
    prompt = draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=n, max_size=n))
    params = dict(gamma=draw(st.integers(1, 4)), exit_layer=draw(st.integers(1, config.n_layers - 1)),
                  kappa=draw(st.integers(1, config.vocab_size)),
                  max_branches=draw(st.sampled_from([None, None, 0, 1, 3])))
    if draft.config.n_layers >= 2 and draw(st.booleans()):     # a streaming draft
        params["draft_streams"] = random_streams(draft, draw(st.integers(1, 3)),
                                                 draw(st.integers(1, draft.config.n_layers - 1)),
                                                 seed=draw(st.integers(0, 2**16)), scale=draw(st.sampled_from([0.3, 3.0])))
    return target, draft, prompt, draw(settings_strategy), params


@given(case=cases(), max_new=st.integers(0, 40))
def test_mirror_gives_the_tokens_of_ar(case, max_new):
    target, draft, prompt, settings, params = case
    got = assert_same_as_ar(mirror, target, prompt, settings, max_new, draft=draft, **params)
    for record in got.records[1:]:
        validate_record(record)
        assert record.target_tokens == record.proposed + 1 <= params["gamma"] + 1
        assert record.branches is None or record.branches <= params["kappa"] * (params["gamma"] + 1)
        if params["max_branches"] is not None:
            assert (record.branches or 0) <= params["max_branches"]
        assert not record.coverage_hit or record.exit_hit      # reuse needs a candidate
        streams = params.get("draft_streams")
        if record.draft_passes:
            assert record.draft_tokens_per_pass == 1 + (streams.gamma if streams is not None else 0)


@given(case=cases())
def test_the_target_cache_ends_as_plain_decoding_left_it(case):
    target, draft, prompt, settings, params = case
    cache = target.new_cache()
    gen = decode(mirror, target, prompt, settings, 25, draft=draft, cache=cache, **params)
    tokens = prompt + gen.tokens[:-1]
    plain = target.new_cache()
    target.forward(tokens, np.arange(len(tokens)), plain)
    n = len(tokens)
    assert cache.length >= n
    assert np.array_equal(cache.k[:, :n], plain.k[:, :n]) and np.array_equal(cache.v[:, :n], plain.v[:, :n])


CONFIG = ModelConfig(dim=24, hidden_dim=40, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=128,
                     shared_classifier=False)


def untied(seed, config=CONFIG):
    return Model.from_dense(config, random_weights(config, seed, logit_scale=1.0))


PROMPT = [3, 9, 14, 20]


def decode_steps(gen):
    """Records of the decoding steps, the prefill and the (budget-clipped) last step left out."""
    return gen.records[1:-1]


def test_the_split_pass_has_the_bits_of_one_pass_and_hands_over_the_layer_stream():
    target = untied(8)
    tree = TokenTree.chain(5, [7, 9, 11])
    seen = []
    cache_a, cache_b = target.new_cache(), target.new_cache()
    target.forward(PROMPT, np.arange(4), cache_a)
    target.forward(PROMPT, np.arange(4), cache_b)
    whole = target_pass(target, tree, 4, cache_a, Proposal(tree))
    split = target_pass(target, tree, 4, cache_b, Proposal(tree, split_layer=2, on_split=seen.append))
    assert np.array_equal(whole, split)
    reference = target.new_cache()
    target.forward(PROMPT, np.arange(4), reference)
    hidden = target.embed(tree.token_array())
    tapped = target.run_layers(hidden, tree.positions(4), reference, tree.ancestor_mask(), taps=(2,))
    assert np.array_equal(seen[0], tapped[2])


def test_the_early_exit_is_the_targets_head_on_the_layer_stream():
    target = untied(8)
    hidden = np.random.default_rng(0).standard_normal((3, CONFIG.dim)).astype(np.float32)
    got = early_exit(target, hidden, 5)
    logits = target.head(hidden).astype(np.float64)
    for row, cand in zip(logits, got):
        assert cand.ids == top_children(row, 5)
        logp = row - np.log(np.exp(row - row.max()).sum()) - row.max()
        assert np.allclose(cand.logprobs, logp[cand.ids])
        assert cand.logprobs == sorted(cand.logprobs, reverse=True)


def test_max_branches_keeps_the_most_likely_candidates():
    from refimpl.decoding.mirror import Candidates

    cands = [Candidates([4, 5], [-0.1, -3.0]), Candidates([6, 7], [-0.5, -0.7]), Candidates([8, 9], [-2.0, -9.0])]
    kept = select_branches(cands, 3)
    assert [(b.row, b.tokens[0]) for b in kept] == [(0, 4), (1, 6), (1, 7)]
    assert len(select_branches(cands, 100)) == 6 and select_branches(cands, 0) == []


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_a_branch_rollout_equals_a_fresh_draft_chain_from_its_context(layers):
    target = untied(8)
    draft = target.first_layers(layers)
    context = PROMPT + [30, 31]
    window = [31, 40, 41, 42]        # root (pending) and three proposed tokens
    state = DraftState(draft)
    state.sync(context[:-1])
    cands = early_exit(target, np.random.default_rng(1).standard_normal((4, CONFIG.dim)).astype(np.float32), 3)
    branches = select_branches(cands, 12)
    rows = state.rollout(window, branches, 3)
    assert rows == [4 + 12, 4 + 24, 4 + 36]
    for branch in branches:
        fresh = DraftState(draft)
        prefix = context + window[1:branch.row + 1]
        fresh.sync(prefix)
        assert branch.tokens == fresh.chain(branch.tokens[0], 3), branch


def streams_chain_reference(draft, streams, context, root, depth):
    """A streaming draft's chain, rebuilt from plain decoding and the ss machinery: each round
    the draft commits the tokens so far one pass at a time, its own next token is the main
    stream's, then the streams of that last node (refimpl.streams.deferred_streams, on the
    committed cache) give one token each."""
    chain = [root]
    while len(chain) - 1 < depth:
        cache = draft.new_cache()
        tokens = context + chain
        n = len(tokens)
        draft.forward(tokens[:-1], np.arange(n - 1), cache)
        hidden = draft.embed(np.array(tokens[-1:]))
        draft.run_layers(hidden, np.array([n - 1]), cache, stop=streams.split(draft))
        split = hidden.copy()
        draft.run_layers(hidden, np.array([n - 1]), cache, start=streams.split(draft))
        cache.commit(1)
        chain.append(top_children(draft.head(hidden)[0], 1)[0])
        rows = deferred_streams(draft, streams, split[0], n - 1, cache)
        chain += [top_children(row, 1)[0] for row in streams.logits(draft, rows)]
    return chain[:depth + 1]


@pytest.mark.parametrize("n_streams,depth", [(1, 3), (2, 3), (3, 7)])
def test_a_streaming_draft_emits_its_main_token_then_its_streams_tokens_each_pass(n_streams, depth):
    """Chains and branch rollouts of a draft with streams: 1 + n_streams tokens per pass (so
    ceil(depth / (1 + n_streams)) passes), each the main stream's top-1 then each stream's,
    as rebuilt independently; a branch rollout equals a fresh chain from its context."""
    target = untied(8)
    draft = target.first_layers(3)
    streams = random_streams(draft, n_streams, 2, seed=5, scale=2.0)
    context = PROMPT + [30, 31]
    state = DraftState(draft, streams)
    state.sync(context[:-1])
    assert state.chain(31, depth) == streams_chain_reference(draft, streams, context[:-1], 31, depth)
    window = [31, 40, 41]
    state.sync(context[:-1])
    branches = select_branches(early_exit(target, np.random.default_rng(1).standard_normal((3, CONFIG.dim))
                                          .astype(np.float32), 2), 6)
    rows = state.rollout(window, branches, depth)
    assert len(rows) == -(-depth // (1 + n_streams))
    for branch in branches:
        prefix = context + window[1:branch.row + 1]
        assert branch.tokens == streams_chain_reference(draft, streams, prefix, branch.tokens[0], depth), branch
    plain = DraftState(draft)
    plain.sync(context[:-1])
    assert plain.chain(31, depth)[:2] == state.chain(31, depth)[:2]     # the main stream's token is the same
    assert plain.chain(31, depth) != streams_chain_reference(draft, streams, context[:-1], 31, depth)   # control


def test_a_streaming_draft_refuses_streams_of_another_model():
    target = untied(8)
    streams = random_streams(target.first_layers(3), 2, 1)
    streams.identity = model_identity(target.first_layers(3))
    with pytest.raises(InputError, match="--draft-streams: trained for a model with n_layers=3"):
        mirror(target, PROMPT, SamplingSettings(), 10, draft=target.first_layers(2), draft_streams=streams)
    with pytest.raises(InputError, match="--draft-streams: trained for another model"):
        mirror(target, PROMPT, SamplingSettings(), 10, draft=untied(9).first_layers(3), draft_streams=streams)
    gen = assert_same_as_ar(mirror, target, PROMPT, SamplingSettings(), 30, draft=target.first_layers(3),
                            draft_streams=streams, gamma=3, exit_layer=2, kappa=3)
    assert all(r.draft_tokens_per_pass == 3 and r.draft_passes == 1 for r in decode_steps(gen))


def test_a_draft_equal_to_the_target_with_every_candidate_always_reuses():
    """κ = |V|: the correction is always a candidate, its branch is ready, no fallback after
    the first window; and with the target as draft every window is accepted whole."""
    target = untied(8, replace(CONFIG, seq_len=320))     # room for all 2·64 branches
    for settings in (SamplingSettings(), SamplingSettings(temperature=1.0, seed=2)):
        gen = assert_same_as_ar(mirror, target, PROMPT, settings, 50, draft=target, gamma=1, exit_layer=2,
                                kappa=CONFIG.vocab_size)
        steps = decode_steps(gen)
        assert len(steps) >= 8
        assert all(r.coverage_hit and r.branches == 2 * 64 for r in steps)
        assert "fallback" in steps[0].wall_parts          # the first window only
        assert all("fallback" not in r.wall_parts for r in steps[1:])
        if settings.greedy:
            assert all(r.accepted == 1 for r in steps)


def test_without_branches_every_step_falls_back_and_with_them_some_reuse():
    """Negative control for reuse: with max_branches 0 no step reuses; with all branches and a
    good draft (the target's first 3 of 4 layers) some do, and a reuse is never a fallback."""
    target = untied(8)
    draft = target.first_layers(3)
    none = decode(mirror, target, PROMPT, SamplingSettings(), 60, draft=draft, gamma=3, exit_layer=3, kappa=4,
                  max_branches=0)
    assert not any(r.coverage_hit for r in decode_steps(none))
    full = assert_same_as_ar(mirror, target, PROMPT, SamplingSettings(), 60, draft=draft, gamma=3,
                             exit_layer=3, kappa=4)
    steps = decode_steps(full)
    assert any(r.coverage_hit for r in steps)
    for r in steps:
        assert r.coverage_hit == r.exit_hit      # no pruning: a candidate always has its branch
        assert r.draft_passes == 3 and r.branches <= 4 * 4
    assert all(r.coverage_hit != ("fallback" in r.wall_parts) for r in steps[1:])   # after the first window
    assert steps[0].branches == 16


def test_bad_input_is_one_clear_error():
    target = untied(8)
    other_vocab = random_model(ModelConfig(dim=8, hidden_dim=8, n_layers=1, n_heads=1, n_kv_heads=1,
                                           vocab_size=65, seq_len=96), 0)
    s = SamplingSettings()
    cases = [(dict(draft=None), "needs a draft"), (dict(draft=other_vocab), "vocabulary"),
             (dict(draft=target, gamma=0), "--gamma 0"), (dict(draft=target, exit_layer=0), "--exit-layer 0"),
             (dict(draft=target, exit_layer=4), "--exit-layer 4"), (dict(draft=target, kappa=0), "--kappa 0"),
             (dict(draft=target, kappa=65), "--kappa 65"), (dict(draft=target, max_branches=-1), "--max-branches"),
             (dict(draft=target, gamma=10**9), "--gamma 1000000000")]   # refused at once, not after building rows
    for params, words in cases:
        with pytest.raises(InputError, match=words):
            mirror(target, [1, 2, 3], s, 10, **params)
    with pytest.raises(InputError, match="--overlap needs at least 2 threads"):
        mirror(target, [1, 2, 3], s, 10, draft=target, overlap=True)      # the fixture runs one thread


def thread_safe_layer():
    import numba

    numba.get_num_threads()
    if numba.threading_layer() not in ("omp", "tbb"):
        pytest.skip(f"numba threading layer {numba.threading_layer()!r} is not thread-safe")


def two_threads():
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one CPU thread")
    numba.set_num_threads(2)


def test_two_python_threads_running_kernels_at_once_give_the_same_bits():
    thread_safe_layer()
    target = untied(8)
    draft = target.first_layers(2)
    tokens = list(range(3, 40))

    def run(model, out, repeat=30):
        import numba

        numba.set_num_threads(1)
        for _ in range(repeat):
            out.append(model.forward(tokens, np.arange(len(tokens)), model.new_cache()))

    alone_t, alone_d = [], []
    run(target, alone_t, 1)
    run(draft, alone_d, 1)
    got_t, got_d = [], []
    threads = [threading.Thread(target=run, args=(target, got_t)), threading.Thread(target=run, args=(draft, got_d))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(x, alone_t[0]) for x in got_t) and len(got_t) == 30
    assert all(np.array_equal(x, alone_d[0]) for x in got_d) and len(got_d) == 30


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_overlap_gives_the_tokens_and_records_of_the_serial_schedule(temperature):
    thread_safe_layer()
    two_threads()
    check_overlap()
    target = untied(8)
    settings = SamplingSettings(temperature=temperature, seed=4)
    params = dict(draft=target.first_layers(2), gamma=3, exit_layer=2, kappa=3)
    serial = assert_same_as_ar(mirror, target, PROMPT, settings, 60, **params)
    overlapped = assert_same_as_ar(mirror, target, PROMPT, settings, 60, overlap=True, **params)
    import numba

    assert numba.get_num_threads() == 2          # the target's threads are given back after each step

    def shape(r):
        return (r.to_dict() | {"wall_s": None, "wall_parts": None} if not r.prefill else None)

    assert [shape(r) for r in serial.records] == [shape(r) for r in overlapped.records]
    assert all("wait" in r.wall_parts for r in overlapped.records[1:])


@pytest.mark.parametrize("fields,needle", [
    ({"exit_hit": 1}, "'exit_hit'"), ({"wall_parts": [1.0]}, "'wall_parts'"),
    ({"wall_parts": {"draft": -1.0}}, "'wall_parts'"), ({"wall_parts": {"draft": float("nan")}}, "'wall_parts'"),
])
def test_the_trace_reader_rejects_bad_mirror_fields_with_one_line(tmp_path, fields, needle):
    import json

    from refimpl.trace import StepRecord, TraceHeader, read_trace, write_trace

    good = StepRecord(context=3, target_tokens=4, draft_passes=3, draft_tokens_per_pass=1, proposed=3,
                      accepted=1, emitted=2, branches=8, coverage_hit=True, exit_hit=True,
                      wall_parts={"prefix": 0.1, "draft": 0.2})
    path = tmp_path / "t.jsonl"
    write_trace(path, TraceHeader(method="mirror", target="t", prompt_tokens=3), [good])
    assert read_trace(path)[1] == [good]
    header, line = path.read_text().splitlines()
    path.write_text(header + "\n" + json.dumps(json.loads(line) | fields) + "\n")
    with pytest.raises(InputError, match=f"{path}:2: .*{needle}"):
        read_trace(path)
