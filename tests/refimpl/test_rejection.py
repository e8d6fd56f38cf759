"""Rejection sampling is lossless in distribution.

1. Exact enumeration: every branch of the samplers' random choices (draft draws, accept
   tests, residual draws) is followed with its probability; the resulting distribution of
   committed tokens equals the target's to 1e-12 in total variation, for chains (Leviathan/
   Chen) and trees (SpecInfer's recursive rule), under temperature, top-k and top-p.
2. End to end: `sd --verify rejection` with real (tiny) models, 20,000 seeds, passes a
   chi-square test against the exactly computed distribution of plain sampling; a sampler
   that accepts every draft token (the negative control) fails the same test.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refimpl.decoding.sd import speculative
from refimpl.model import Model, ModelConfig
from refimpl.sampling import SamplingSettings, probabilities
from refimpl.testing import (ScriptedRandomness, chi_square_pvalue, decode, enumerate_outcomes, outcome_of,
                             random_weights, sequence_distribution, total_variation)
from refimpl.trees import TokenTree
from refimpl.verify import PositionKeyed, sampled_children, verify_rejection

pytestmark = pytest.mark.usefixtures("one_thread")


class Conditionals:
    """Random next-token distributions of a 'model' given the tokens after the root."""

    def __init__(self, vocab: int, seed: int, settings: SamplingSettings, scale: float = 2.0):
        self.vocab, self.seed, self.settings, self.scale, self.memo = vocab, seed, settings, scale, {}

    def __call__(self, prefix: tuple) -> np.ndarray:
        if prefix not in self.memo:
            rng = np.random.default_rng([self.seed, len(prefix), *prefix])
            self.memo[prefix] = probabilities(self.scale * rng.standard_normal(self.vocab), self.settings)
        return self.memo[prefix]


def speculative_step(p, q, k: int, depth: int, rng, verify=verify_rejection) -> tuple:
    """One draft-and-verify step (children drawn from q, then the rejection rule), completed
    with plain target samples to depth + 1 tokens."""
    tree, q_rows, frontier = TokenTree.root(0), [None], [0]
    for d in range(1, depth + 1):
        grown = []
        for node in frontier:
            q_rows[node] = q(below_root(tree, node))
            for token in sampled_children(q_rows[node], k, rng, d):
                grown.append(tree.add(node, token))
                q_rows.append(None)
        frontier = grown
    verdict = verify(tree, [p(below_root(tree, i)) for i in range(len(tree))], q_rows, rng, 0)
    out = [tree.tokens[i] for i in verdict.path[1:]] + [verdict.token]
    while len(out) < depth + 1:
        out.append(rng.choose(p(tuple(out)), len(out)))
    return tuple(out)


def below_root(tree: TokenTree, node: int) -> tuple:
    return tuple(tree.tokens[i] for i in tree.path_to(node)[1:])


def target_distribution(p, vocab: int, length: int) -> dict:
    out = {(): 1.0}
    for _ in range(length):
        out = {s + (t,): m * p(s)[t] for s, m in out.items() for t in range(vocab) if p(s)[t] > 0}
    return out


# shapes (vocab, children per node, depth) small enough to enumerate every branch
SHAPES = [(3, 1, 1), (4, 1, 2), (3, 1, 3), (3, 2, 1), (3, 3, 1), (3, 2, 2), (4, 2, 1), (5, 1, 2)]
settings_strategy = st.builds(SamplingSettings, temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
                              top_k=st.sampled_from([0, 2]), top_p=st.sampled_from([1.0, 0.7]))


@given(shape=st.sampled_from(SHAPES), settings=settings_strategy, seed=st.integers(0, 2**16))
def test_enumerated_output_distribution_is_the_targets(shape, settings, seed):
    vocab, k, depth = shape
    p = Conditionals(vocab, 2 * seed, settings)
    q = Conditionals(vocab, 2 * seed + 1, settings)
    got = enumerate_outcomes(lambda rng: speculative_step(p, q, k, depth, rng))
    expected = target_distribution(p, vocab, depth + 1)
    assert total_variation(got, expected) <= 1e-12
    assert set(got) <= set(expected), "a token outside the target's allowed set came through"


@pytest.mark.parametrize("k,depth", [(1, 3), (2, 2)])
def test_identical_draft_accepts_everything_and_disjoint_draft_nothing(k, depth):
    settings = SamplingSettings(temperature=1.0, top_k=2)
    p = Conditionals(4, 11, settings)

    def accepted(q):
        def run(rng):
            tree = TokenTree.root(0)
            children = sampled_children(q(()), k, rng, 1)
            for t in children:
                tree.add(0, t)
            verdict = verify_rejection(tree, [p(())] + [p((t,)) for t in children],
                                       [q(())] + [None] * k, rng, 0)
            return len(verdict.path) - 1
        return enumerate_outcomes(run)

    assert accepted(p) == pytest.approx({1: 1.0}, abs=1e-15)
    disjoint = lambda prefix: np.where(p(prefix) > 0, 0.0, 1.0) / np.sum(p(prefix) == 0)  # noqa: E731
    assert accepted(disjoint) == {0: 1.0}


class AcceptAll(ScriptedRandomness):
    """The negative control: a sampler that accepts every draft token."""

    def chance(self, prob, position=0, index=0):
        return True


def test_negative_control_accepting_every_draft_token_is_far_from_the_target():
    settings = SamplingSettings(temperature=1.0)
    p, q = Conditionals(3, 4, settings), Conditionals(3, 5, settings)
    for k, depth in [(1, 2), (2, 2)]:
        expected = target_distribution(p, 3, depth + 1)
        right = enumerate_outcomes(lambda rng: speculative_step(p, q, k, depth, rng))
        wrong = enumerate_outcomes(lambda rng: speculative_step(p, q, k, depth, AcceptAll(rng.script)))
        assert total_variation(right, expected) <= 1e-12
        assert total_variation(wrong, expected) > 0.05


# -- end to end: sd with real tiny models, 20,000 seeds, chi-square -------------------------------

CONFIG = ModelConfig(dim=8, hidden_dim=12, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=7, seq_len=16,
                     shared_classifier=False)
PROMPT = [3, 4]
N_SAMPLES = 20_000
NEW_TOKENS = 4    # the prefill samples one, then one step decides the other three (gamma 2)


def sampled_counts(target, draft, settings, tree_k):
    counts = {}
    for seed in range(N_SAMPLES):
        run = SamplingSettings(settings.temperature, settings.top_k, settings.top_p, seed)
        outcome = outcome_of(decode(speculative, target, PROMPT, run, NEW_TOKENS, draft=draft, gamma=2,
                                    tree_k=tree_k, verify="rejection"))
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


@pytest.mark.parametrize("tree_k", [1, 2])
def test_sampled_decoding_passes_chi_square_and_accept_all_fails(tree_k, monkeypatch):
    target = Model.from_dense(CONFIG, random_weights(CONFIG, 2, logit_scale=2.0))   # few stops, spread out
    draft = target.first_layers(1)
    settings = SamplingSettings(temperature=1.0)
    exact = sequence_distribution(target, PROMPT, settings, NEW_TOKENS)
    assert chi_square_pvalue(sampled_counts(target, draft, settings, tree_k), exact) > 1e-3
    if tree_k == 1:
        monkeypatch.setattr(PositionKeyed, "chance", lambda self, prob, position, index=0: True)
        assert chi_square_pvalue(sampled_counts(target, draft, settings, tree_k), exact) < 1e-6
