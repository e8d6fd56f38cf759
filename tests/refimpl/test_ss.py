"""Speculative Streaming is lossless and its streams follow the v1 semantics.

- exact match gives `ar`'s very tokens (greedy and sampled, any tree shape, both schedules,
  pruning on or off) for random tiny models with random stream parameters;
- the main stream's bits do not depend on the streams riding along; fused and deferred
  schedules compute the same stream logits, hence the same trees;
- rejection sampling with the streams as q (pruned q restricted) gives the target's
  distribution exactly, by enumeration; two negative controls (top-k children, unrestricted
  q under pruning) are far from it;
- bad parameters are one clear InputError.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refimpl.decoding.ss import (DEFERRED, FUSED, LevelDrafter, StreamProposer, prune_proposal,
                                 speculative_streaming)
from refimpl.errors import InputError
from refimpl.model import ModelConfig
from refimpl.sampling import SAMPLE, SamplingSettings, probabilities
from refimpl.streams import random_streams, run_with_streams, surviving_nodes
from refimpl.testing import assert_same_as_ar, decode, enumerate_outcomes, random_model, tiny_configs, total_variation
from refimpl.trees import TokenTree, stream_mask
from refimpl.verify import MATCH, REJECTION, verify_rejection

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ModelConfig(dim=24, hidden_dim=40, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=30, seq_len=64,
                     shared_classifier=False)
settings_strategy = st.builds(SamplingSettings, temperature=st.sampled_from([0.0, 0.0, 0.7, 1.2]),
                              top_k=st.sampled_from([0, 0, 3]), top_p=st.sampled_from([1.0, 0.8]),
                              seed=st.integers(0, 2**32))


@given(config=tiny_configs().filter(lambda c: c.n_layers >= 2), seed=st.integers(0, 2**16),
       settings=settings_strategy, data=st.data())
def test_ss_gives_the_tokens_of_ar(config, seed, settings, data):
    model = random_model(config, seed)
    streams = random_streams(model, data.draw(st.integers(1, 4)), data.draw(st.integers(1, config.n_layers - 1)),
                             seed + 1, scale=data.draw(st.sampled_from([0.5, 3.0])))
    if data.draw(st.booleans()):   # a low-rank f_eta on stream rows
        eta = data.draw(st.integers(1, 4))
        rng = np.random.default_rng(seed)
        streams.init_down = rng.standard_normal((streams.gamma, config.dim, eta)).astype(np.float32)
        streams.init_up = rng.standard_normal((streams.gamma, eta, config.dim)).astype(np.float32)
    if data.draw(st.booleans()):   # a draft shortlist
        streams.vocabulary = np.unique(data.draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=1)))
    prompt = data.draw(st.lists(st.integers(3, config.vocab_size - 1), min_size=1, max_size=8))
    assert_same_as_ar(speculative_streaming, model, prompt, settings, data.draw(st.integers(0, 40)),
                      streams=streams, tree_k=data.draw(st.integers(1, 3)),
                      schedule=data.draw(st.sampled_from([FUSED, DEFERRED])),
                      prune_threshold=data.draw(st.sampled_from([0.0, 0.0, 0.02, 0.3])))


def test_a_trained_like_stream_is_accepted_and_the_cache_ends_as_ar_leaves_it():
    """Streams that copy the main stream (zero embeddings) on a model that repeats itself
    propose tokens the target accepts; the committed cache is ar's, bit for bit."""
    model = random_model(CONFIG, 11)
    streams = random_streams(model, 3, 2, 0)
    streams.embeddings[:] = 0.0
    settings = SamplingSettings()
    ar_cache, ss_cache = model.new_cache(), model.new_cache(200)
    ar = decode("ar", model, [4, 5, 7], settings, 40)
    gen = assert_same_as_ar(speculative_streaming, model, [4, 5, 7], settings, 40, streams=streams, tree_k=2,
                            cache=ss_cache)
    assert gen.target_calls < len(gen.tokens) + 1
    plain = ar.prompt_ids + ar.tokens[:-1]
    model.forward(plain, np.arange(len(plain)), ar_cache)
    n = len(plain)
    assert ss_cache.length == n
    assert np.array_equal(ss_cache.k[:, :n], ar_cache.k[:, :n]) and np.array_equal(ss_cache.v[:, :n], ar_cache.v[:, :n])


def test_the_main_stream_does_not_see_the_streams():
    model = random_model(CONFIG, 2)
    streams = random_streams(model, 3, 2, 5, scale=3.0)
    tree = TokenTree.from_candidates(4, [[5, 6], [7, 8]])
    split = streams.split(model)
    outs = []
    for with_streams in (False, True):
        cache = model.new_cache(200)
        model.forward([3, 9, 10], [0, 1, 2], cache)
        hidden = model.embed(tree.token_array())
        positions, mask = tree.positions(3), tree.ancestor_mask()
        model.run_layers(hidden, positions, cache, mask, stop=split)
        if with_streams:
            hidden, stream_rows = run_with_streams(model, streams, hidden, positions, mask, cache, range(len(tree)))
            assert stream_rows.shape == (len(tree), 3, CONFIG.dim)
        else:
            model.run_layers(hidden, positions, cache, mask, start=split)
        outs.append(hidden)
    assert np.array_equal(outs[0], outs[1])


def test_stream_mask_lets_streams_see_ancestors_and_lower_streams_only():
    tree = TokenTree.from_candidates(0, [[1, 2]])   # root, two children
    mask = stream_mask(tree.ancestor_mask(), [0, 2], 2)
    assert mask.shape == (7, 7)
    assert not mask[:3, 3:].any()                               # tree rows never see streams
    assert mask[3].tolist() == [1, 0, 0, 1, 0, 0, 0]            # root's stream 1: root, itself
    assert mask[4].tolist() == [1, 0, 0, 1, 1, 0, 0]            # root's stream 2: root, streams 1-2
    assert mask[6].tolist() == [1, 0, 1, 0, 0, 1, 1]            # node 2's stream 2: path 0-2, its streams


def stream_logits_per_step(monkeypatch, schedule, model, streams, prompt, settings, **params):
    seen = []
    original = StreamProposer.accepted

    def recording(self, row):
        original(self, row)
        seen.append(self.level_logits.copy())

    monkeypatch.setattr(StreamProposer, "accepted", recording)
    gen = decode(speculative_streaming, model, prompt, settings, 30, streams=streams, schedule=schedule, **params)
    monkeypatch.undo()
    return gen, seen


@pytest.mark.parametrize("threshold", [0.0, 0.05])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_fused_and_deferred_schedules_propose_identical_trees(monkeypatch, threshold, temperature):
    model = random_model(CONFIG, 11)
    streams = random_streams(model, 3, 2, 4, scale=0.5)
    rng = np.random.default_rng(0)
    streams.init_down = rng.standard_normal((3, CONFIG.dim, 2)).astype(np.float32) / 5
    streams.init_up = rng.standard_normal((3, 2, CONFIG.dim)).astype(np.float32) / 2
    settings = SamplingSettings(temperature=temperature, seed=9)
    runs = [stream_logits_per_step(monkeypatch, s, model, streams, [4, 5, 7], settings, tree_k=2,
                                   prune_threshold=threshold) for s in (FUSED, DEFERRED)]
    (fused, fused_logits), (deferred, deferred_logits) = runs
    assert fused.tokens == deferred.tokens and len(fused_logits) == len(deferred_logits) > 5
    assert all(np.array_equal(a, b) for a, b in zip(fused_logits, deferred_logits))
    assert [r.target_tokens for r in fused.records] == [r.target_tokens for r in deferred.records]


def test_pruning_drops_subtrees_below_the_threshold():
    tree = TokenTree.from_candidates(0, [[1, 2], [3, 4]])   # nodes: 0; 1, 2; 3, 4 (under 1), 5, 6 (under 2)
    transition = {0: np.array([0, .6, .1, 0, 0]), 1: np.array([0, 0, 0, .5, .05]), 2: np.array([0, 0, 0, .9, .9])}
    assert surviving_nodes(tree, transition, 0.2) == [0, 1, 3]
    assert surviving_nodes(tree, transition, 0.0) == list(range(7))
    model = random_model(CONFIG, 11)
    everything = decode(speculative_streaming, model, [4, 5, 7], SamplingSettings(), 20,
                        streams=random_streams(model, 3, 2, 4), tree_k=2, prune_threshold=1.0)
    assert all(r.target_tokens == 1 for r in everything.records[1:])   # nothing reaches probability 1


# -- rejection sampling, by enumeration ---------------------------------------------------------

def conditionals(vocab, seed):
    memo = {}

    def p(prefix):
        if prefix not in memo:
            rng = np.random.default_rng([seed, len(prefix), *prefix])
            memo[prefix] = probabilities(2.0 * rng.standard_normal(vocab), SamplingSettings(temperature=1.0))
        return memo[prefix]
    return p


def ss_step(p, q_levels, transition, k, depth, threshold, rng, children=REJECTION, restrict=True):
    """One ss step: a tree from per-level q (sampled children, or top-k for the negative
    control), pruned, verified by rejection, completed with plain samples to depth + 1 tokens."""
    drafter = LevelDrafter(SamplingSettings(temperature=1.0), k, children)
    drafter.rng = rng
    proposal = drafter.tree(0, [np.log(q) for q in q_levels], 0, depth)
    q = proposal.q or [q_levels[d] if d < depth else None for d in proposal.tree.depths]
    proposal.q = q
    tree = proposal.tree
    below = [tuple(tree.tokens[i] for i in tree.path_to(n)[1:]) for n in range(len(tree))]
    pruned, kept = prune_proposal(proposal, {n: transition(below[n]) for n in range(len(tree))}, threshold)
    if not restrict:
        pruned.q = [q[n] for n in kept]
    tree = pruned.tree
    rows = [p(tuple(tree.tokens[i] for i in tree.path_to(n)[1:])) for n in range(len(tree))]
    verdict = verify_rejection(tree, rows, pruned.q, rng, 0)
    out = [tree.tokens[i] for i in verdict.path[1:]] + [verdict.token]
    while len(out) < depth + 1:
        out.append(rng.choose(p(tuple(out)), len(out) + 1, SAMPLE))
    return tuple(out)


def exact_target(p, vocab, length):
    out = {(): 1.0}
    for _ in range(length):
        out = {s + (t,): m * p(s)[t] for s, m in out.items() for t in range(vocab)}
    return out


@pytest.mark.parametrize("vocab,k,depth,threshold", [(3, 1, 2, 0.0), (3, 2, 2, 0.0), (4, 2, 1, 0.3),
                                                     (3, 2, 2, 0.3), (3, 3, 1, 0.4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_rejection_with_stream_distributions_is_exact(vocab, k, depth, threshold, seed):
    p = conditionals(vocab, seed)
    q_levels = [conditionals(vocab, seed + 100 + g)((g,)) for g in range(depth)]
    transition = conditionals(vocab, seed + 200)
    target = exact_target(p, vocab, depth + 1)
    got = enumerate_outcomes(lambda rng: ss_step(p, q_levels, transition, k, depth, threshold, rng))
    assert total_variation(got, target) < 1e-9
    if threshold == 0.0:   # top-k children are not draws from q
        wrong = enumerate_outcomes(lambda rng: ss_step(p, q_levels, transition, k, depth, 0.0, rng, children=MATCH))
        assert total_variation(wrong, target) > 1e-3
    else:                  # survivors of pruning are draws from the restricted q, not from q
        unrestricted = enumerate_outcomes(
            lambda rng: ss_step(p, q_levels, transition, k, depth, threshold, rng, restrict=False))
        assert total_variation(unrestricted, target) > 1e-3


def test_ss_rejection_runs_end_to_end_and_differs_from_match():
    model = random_model(CONFIG, 11)
    streams = random_streams(model, 2, 2, 4, scale=0.5)
    settings = SamplingSettings(temperature=1.0, seed=5)
    rej = decode(speculative_streaming, model, [4, 5, 7], settings, 30, streams=streams, tree_k=2, verify=REJECTION,
                 prune_threshold=0.02)
    assert len(rej.tokens) == 30 and all(0 <= t < CONFIG.vocab_size for t in rej.tokens)


# -- bad input ---------------------------------------------------------------------------------

def test_bad_parameters_are_one_clear_error():
    model = random_model(CONFIG, 1)
    streams = random_streams(model, 3, 2, 0)
    cases = [(dict(gamma=4), "--gamma 4"), (dict(gamma=0), "--gamma 0"), (dict(tree_k=0), "--tree-k 0"),
             (dict(tree_k=99), "--tree-k 99"), (dict(prune_threshold=1.5), "--prune-threshold 1.5"),
             (dict(prune_threshold=-0.1), "--prune-threshold -0.1"), (dict(schedule="x"), "--schedule"),
             (dict(streams=None), "needs stream parameters")]
    for params, message in cases:
        with pytest.raises(InputError, match=message):
            speculative_streaming(model, [4, 5], SamplingSettings(), 5, **{"streams": streams, **params})
    other = random_model(ModelConfig(dim=16, hidden_dim=40, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=30,
                                     seq_len=64), 1)
    with pytest.raises(InputError, match="hidden size 16"):
        speculative_streaming(other, [4, 5], SamplingSettings(), 5, streams=streams)
    with pytest.raises(InputError, match="stream layers"):
        speculative_streaming(model, [4, 5], SamplingSettings(), 5, streams=random_streams(model, 3, 3, 0))


@pytest.mark.parametrize("shortlist", [False, True])
def test_the_early_exit_transition_is_the_softmax_of_the_adapted_head_over_the_shortlist(shortlist):
    """Pruning's transition probabilities, rebuilt from the model's full head: softmax of
    head(x + x @ down @ up), restricted to the streams' shortlist (0 outside it)."""
    from refimpl.streams import early_exit_probabilities

    model = random_model(ModelConfig(dim=16, hidden_dim=24, n_layers=3, n_heads=2, n_kv_heads=1, vocab_size=60,
                                     seq_len=32), 3)
    streams = random_streams(model, 2, 1, seed=4, scale=2.0)
    rng = np.random.default_rng(5)
    if shortlist:
        streams.vocabulary = np.sort(rng.choice(60, 17, replace=False))
    x = rng.standard_normal((4, 16)).astype(np.float32)
    got = early_exit_probabilities(model, streams, x)
    adapted = x + (x.astype(np.float64) @ streams.prune_down @ streams.prune_up).astype(np.float32)
    logits = model.head(adapted).astype(np.float64)
    if shortlist:
        outside = np.setdiff1d(np.arange(60), streams.vocabulary)
        logits[:, outside] = -np.inf
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert np.allclose(got.sum(axis=1), 1.0)


def test_top_tokens_is_the_argmax_of_the_stream_logits_with_and_without_a_shortlist():
    model = random_model(ModelConfig(dim=16, hidden_dim=24, n_layers=3, n_heads=2, n_kv_heads=1, vocab_size=60,
                                     seq_len=32), 3)
    streams = random_streams(model, 2, 1, seed=4)
    hidden = np.random.default_rng(6).standard_normal((5, 16)).astype(np.float32)
    for vocabulary in (None, np.sort(np.random.default_rng(7).choice(60, 9, replace=False))):
        streams.vocabulary, streams.packed = vocabulary, {}
        assert streams.top_tokens(model, hidden) == np.argmax(streams.logits(model, hidden), axis=1).tolist()
