"""Draft-target speculative decoding is lossless: exact match gives `ar`'s very tokens (greedy
and sampled) for random tiny models, drafts, prompts, gamma and tree shapes; the target's cache
ends bit-identical to plain decoding's; top-k/top-p are never escaped; bad input is one line."""
import numpy as np
import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from refimpl.decoding.sd import speculative
from refimpl.errors import InputError
from refimpl.model import Model, ModelConfig
from refimpl.sampling import SamplingSettings, probabilities
from refimpl.testing import StepCoverage, assert_same_as_ar, decode, random_model, random_weights, tiny_configs
from refimpl.trace import validate_record
from refimpl.trees import full_tree_size

pytestmark = pytest.mark.usefixtures("one_thread")


def fitting(target, prompt, gamma, tree_k):
    """gamma, reduced until the full tree fits the target's cache after the prompt."""
    while gamma > 1 and len(prompt) + full_tree_size(tree_k, gamma) > target.config.seq_len:
        gamma -= 1
    return gamma


settings_strategy = st.builds(SamplingSettings, temperature=st.sampled_from([0.0, 0.0, 0.6, 1.0, 1.5]),
                              top_k=st.sampled_from([0, 0, 3]), top_p=st.sampled_from([1.0, 1.0, 0.8]),
                              seed=st.integers(0, 2**32), ignore_eos=st.sampled_from([True, True, False]))


@st.composite
def cases(draw):
    """A target, a draft of one of three kinds, a prompt and sampling settings."""
    config = draw(tiny_configs())
    target = random_model(config, draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["cut", "cut", "other", "same"]))
    if kind == "cut":
        draft = target.first_layers(draw(st.integers(1, config.n_layers)))
    elif kind == "other":
        other = ModelConfig(dim=8, hidden_dim=16, n_layers=1, n_heads=2, n_kv_heads=1,
                            vocab_size=config.vocab_size, seq_len=draw(st.integers(8, 96)))
        draft = random_model(other, draw(st.integers(0, 2**16)))
    else:
        draft = target
    n = draw(st.integers(1, 8))
    prompt = draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=n, max_size=n))
    return target, draft, prompt, draw(settings_strategy)


def test_exact_match_gives_the_tokens_of_ar():
    """The property, with its examples' coverage asserted: steps rejected at depths 1-3,
    partial and full acceptance. Derandomized in every profile: 30 random examples miss a
    depth-3 rejection about one run in three, and a coverage check must not be flaky."""
    coverage = StepCoverage()

    @hypothesis_settings(derandomize=True)
    @given(case=cases(), gamma=st.integers(1, 5), tree_k=st.sampled_from([1, 1, 2, 3]),
           max_new=st.sampled_from([0, 1, 20, 40, 60]))
    def check(case, gamma, tree_k, max_new):
        target, draft, prompt, settings = case
        gamma = fitting(target, prompt, min(gamma, 3) if tree_k > 1 else gamma, tree_k)
        got = assert_same_as_ar(speculative, target, prompt, settings, max_new, draft=draft, gamma=gamma,
                                tree_k=tree_k)
        for record in got.records:
            validate_record(record)
            assert record.prefill or record.target_tokens == record.proposed + 1
        coverage.add(got, tree_k)

    check()
    coverage.assert_covered(depths=3)


@given(case=cases(), gamma=st.integers(1, 4), tree_k=st.sampled_from([1, 2]))
def test_greedy_rejection_sampling_gives_the_tokens_of_ar(case, gamma, tree_k):
    target, draft, prompt, settings = case
    gamma = fitting(target, prompt, gamma, tree_k)
    greedy = SamplingSettings(top_k=settings.top_k, top_p=settings.top_p, seed=settings.seed)
    assert_same_as_ar(speculative, target, prompt, greedy, 30, draft=draft, gamma=gamma, tree_k=tree_k,
                      verify="rejection")


CONFIG = ModelConfig(dim=24, hidden_dim=40, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=96,
                     shared_classifier=False)


def untied(seed, config=CONFIG):
    return Model.from_dense(config, random_weights(config, seed, logit_scale=1.0))


def spoken_records(generation):
    """Records of the decoding steps, the prefill and a budget-clipped last step left out."""
    return [r for r in generation.records[1:-1]]


@pytest.mark.parametrize("tree_k", [1, 2])
@pytest.mark.parametrize("verify", ["match", "rejection"])
def test_a_draft_identical_to_the_target_accepts_everything(tree_k, verify):
    target = untied(8)
    greedy = verify == "match"
    records = []
    for seed in range(12):
        settings = SamplingSettings(temperature=0.0 if greedy else 1.0, seed=seed)
        gen = decode(speculative, target, [1, 9, 14], settings, 60, draft=target, gamma=4, tree_k=tree_k,
                     verify=verify)
        records += spoken_records(gen)
        if greedy:
            assert_same_as_ar(speculative, target, [1, 9, 14], settings, 60, draft=target, gamma=4,
                              tree_k=tree_k)
    assert len(records) >= 10
    assert all(r.accepted == 4 for r in records)


def test_a_random_draft_accepts_almost_nothing_and_still_equals_ar():
    target, draft = untied(8), untied(4)
    for settings in (SamplingSettings(), SamplingSettings(temperature=1.0, seed=3)):
        gen = assert_same_as_ar(speculative, target, [1, 9, 14], settings, 60, draft=draft, gamma=4)
        records = spoken_records(gen)
        assert sum(r.accepted for r in records) <= 0.1 * sum(r.proposed for r in records)


@given(case=cases(), gamma=st.integers(1, 4), tree_k=st.sampled_from([1, 2]), verify=st.sampled_from(
    ["match", "rejection"]))
def test_the_target_cache_ends_as_plain_decoding_left_it(case, gamma, tree_k, verify):
    target, draft, prompt, settings = case
    cache = target.new_cache()
    gamma = fitting(target, prompt, min(gamma, 2) if tree_k > 1 else gamma, tree_k)
    gen = decode(speculative, target, prompt, settings, 25, draft=draft, gamma=gamma,
                 tree_k=tree_k, verify=verify, cache=cache)
    tokens = prompt + gen.tokens[:-1]
    plain = target.new_cache()
    target.forward(tokens, np.arange(len(tokens)), plain)
    n = len(tokens)
    assert cache.length >= n
    assert np.array_equal(cache.k[:, :n], plain.k[:, :n]) and np.array_equal(cache.v[:, :n], plain.v[:, :n])


@pytest.mark.parametrize("tree_k", [1, 3])
@pytest.mark.parametrize("filters", [dict(top_k=2), dict(top_p=0.5), dict(top_k=3, top_p=0.6)])
def test_rejection_sampling_never_lets_a_filtered_token_through(tree_k, filters):
    target = untied(8)
    draft = untied(4)   # proposes tokens the target's filter excludes
    prompt = [1, 5, 6]
    for seed in range(4):
        settings = SamplingSettings(temperature=1.3, seed=seed, **filters)
        gen = decode(speculative, target, prompt, settings, 30, draft=draft, gamma=3, tree_k=tree_k,
                     verify="rejection")
        ids = prompt + gen.tokens
        logits = target.forward(ids, np.arange(len(ids)), target.new_cache())
        for i, token in enumerate(gen.tokens):
            assert probabilities(logits[len(prompt) + i - 1], settings)[token] > 0.0


def test_bad_input_is_one_clear_error():
    target = untied(8)
    other_vocab = random_model(ModelConfig(dim=8, hidden_dim=8, n_layers=1, n_heads=1, n_kv_heads=1,
                                           vocab_size=65, seq_len=96), 0)
    s = SamplingSettings()
    cases = [(dict(draft=None), "needs a draft"), (dict(draft=other_vocab), "vocabulary"),
             (dict(draft=target, gamma=0), "--gamma 0"), (dict(draft=target, tree_k=0), "--tree-k 0"),
             (dict(draft=target, verify="maybe"), "--verify"),
             (dict(draft=target, tree_k=4, gamma=4), "exceeds the cache")]
    for params, words in cases:
        with pytest.raises(InputError, match=words):
            speculative(target, [1, 2, 3], s, 10, **params)
    with pytest.raises(InputError, match="--draft-layers 4"):
        target.first_layers(4)


@given(config=tiny_configs(), seed=st.integers(0, 2**16), settings=settings_strategy,
       max_new=st.integers(0, 30))
def test_any_proposed_tree_shape_gives_the_tokens_of_ar(config, seed, settings, max_new):
    """The shared loop with a proposer of random trees (arbitrary shapes, random tokens,
    sometimes the right ones): exact match still commits ar's tokens."""
    from refimpl.decoding.speculative import Proposal, speculative_decode
    from refimpl.trees import TokenTree

    model = random_model(config, seed)
    rng = np.random.default_rng(seed)
    truth = decode("ar", model, [1], settings, max_new).tokens

    def propose(context, max_depth, max_nodes):
        done = len(context) - 2              # tokens generated before the pending one
        paths = []
        for _ in range(rng.integers(0, 4)):
            depth = int(rng.integers(1, max_depth + 1)) if max_depth else 0
            right = truth[done + 1:done + 1 + depth]
            noise = list(rng.integers(0, config.vocab_size, depth))
            paths.append(right if rng.random() < 0.5 else noise)
        tree = TokenTree.from_paths(context[-1], [p for p in paths if p])
        return Proposal(tree if len(tree) <= max_nodes else TokenTree.root(context[-1]))

    got = decode(lambda m, p, s, n: speculative_decode(m, p, s, n, propose), model, [1], settings, max_new)
    assert got.tokens == truth


def test_rejection_drafts_from_the_same_filtered_distribution_as_the_target():
    """q is the draft's distribution under the very temperature/top-k/top-p of the target."""
    from refimpl.decoding.sd import Drafter

    draft = untied(4)
    settings = SamplingSettings(temperature=0.7, top_k=5, top_p=0.9, seed=1)
    proposal = Drafter(draft, settings, gamma=2, tree_k=2, verify="rejection")([1, 9, 14], 2, 50)
    expected = probabilities(draft.forward([1, 9, 14], [0, 1, 2], draft.new_cache())[-1], settings)
    assert np.array_equal(proposal.q[0], expected)
    assert all(expected[proposal.tree.tokens[c]] > 0 for c in proposal.tree.children(0))
    assert len(proposal.tree) == 7 and proposal.draft_rows == [3, 2]
