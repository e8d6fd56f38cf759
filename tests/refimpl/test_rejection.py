"""Rejection sampling is lossless in distribution, with the production's keyed uniforms.

1. The rule alone: every branch of the random choices (draft draws, accept tests, residual
   draws) is enumerated exactly by `KeyedEnumeration`, which keys each uniform as
   production does (a key read twice is the same number); the committed tokens follow
   the target's distribution to 1e-12 in total variation, for chains (Leviathan/Chen)
   and trees (SpecInfer's recursive rule), under temperature, top-k and top-p.
2. Inside the real decoder (`sd --verify rejection`: the drafter, the shared loop, the
   verifier, random models): the exact distribution of a whole speculative step, by
   the same enumeration, completed by the target, is the target's.
3. End to end with the real `PositionKeyed` uniforms: chi-square over seeds for chains and
   a non-full tree at T > 0 with top-k/top-p.
Each has a negative control as subtle as a real bug: sibling candidates sharing one accept
uniform, or the accept test reading the uniform that drew the draft token.
"""
import importlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refimpl.decoding.sd as sd_module
from refimpl.decoding import generate
from refimpl.decoding.sd import speculative
from refimpl.decoding.speculative import Proposal, speculative_decode
from refimpl.model import Model, ModelConfig
from refimpl.sampling import ACCEPT, DRAFT, SAMPLE, SamplingSettings, probabilities, uniform
from refimpl.testing import (KeyedEnumeration, chi_square_pvalue, decode, enumerate_outcomes, random_weights,
                             sequence_distribution, total_variation)
from refimpl.trees import TokenTree
import refimpl.verify as verify_module
from refimpl.verify import PositionKeyed, sampled_children, verify_rejection

speculative_module = importlib.import_module("refimpl.decoding.speculative")  # the package's name is the sd function

pytestmark = pytest.mark.usefixtures("one_thread")


class SharedSiblingUniform(KeyedEnumeration):
    """Negative control: every sibling's accept test reads the first sibling's uniform."""

    def chance(self, prob, position, index=0):
        return super().chance(prob, position, 0)


class AcceptReadsDraftUniform(KeyedEnumeration):
    """Negative control: the accept test reads the uniform that drew the draft token."""

    def chance(self, prob, position, index=0):
        return self.split((DRAFT, position, index), [prob]) == 0


# -- 1. the rule alone, on random conditional distributions ----------------------------------------

class Conditionals:
    """Random next-token distributions of a 'model' given the tokens after the root."""

    def __init__(self, vocab: int, seed: int, settings: SamplingSettings, scale: float = 2.0):
        self.vocab, self.seed, self.settings, self.scale, self.memo = vocab, seed, settings, scale, {}

    def __call__(self, prefix: tuple) -> np.ndarray:
        if prefix not in self.memo:
            rng = np.random.default_rng([self.seed, len(prefix), *prefix])
            self.memo[prefix] = probabilities(self.scale * rng.standard_normal(self.vocab), self.settings)
        return self.memo[prefix]


def speculative_step(p, q, k: int, depth: int, rng) -> tuple:
    """One draft-and-verify step at base 0 (children drawn from q, then the rejection rule),
    completed with plain target samples (keyed by their positions) to depth + 1 tokens."""
    tree, q_rows, frontier = TokenTree.root(0), [None], [0]
    for d in range(1, depth + 1):
        grown = []
        for node in frontier:
            q_rows[node] = q(below_root(tree, node))
            for token in sampled_children(q_rows[node], k, rng, d):
                grown.append(tree.add(node, token))
                q_rows.append(None)
        frontier = grown
    verdict = verify_rejection(tree, [p(below_root(tree, i)) for i in range(len(tree))], q_rows, rng, 0)
    out = [tree.tokens[i] for i in verdict.path[1:]] + [verdict.token]
    while len(out) < depth + 1:
        out.append(rng.choose(p(tuple(out)), len(out) + 1, SAMPLE))
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


def test_siblings_sharing_an_accept_uniform_is_caught():
    """The largest error of the shared-uniform bug over random k = 2, V = 3 steps: a few
    percent in total variation (the enumeration above sees it)."""
    settings = SamplingSettings(temperature=1.0)
    worst = 0.0
    for seed in range(40):
        p, q = Conditionals(3, 2 * seed, settings, 1.0), Conditionals(3, 2 * seed + 1, settings, 1.0)
        expected = target_distribution(p, 3, 2)
        right = enumerate_outcomes(lambda rng: speculative_step(p, q, 2, 1, rng))
        wrong = enumerate_outcomes(lambda rng: speculative_step(p, q, 2, 1, rng), SharedSiblingUniform)
        assert total_variation(right, expected) <= 1e-12
        worst = max(worst, total_variation(wrong, expected))
    assert 0.02 < worst < 0.1


def test_position_keyed_draws_independent_uniforms_per_index_and_purpose():
    """Siblings (index) and purposes read different uniforms: two accept tests at p = 0.5
    agree about half the time, not always (what a shared uniform would give)."""
    rng = PositionKeyed(9)
    agree_index = np.mean([rng.chance(0.5, pos, 0) == rng.chance(0.5, pos, 1) for pos in range(4000)])
    agree_purpose = np.mean([rng.chance(0.5, pos) == (rng.choose(np.ones(2), pos, DRAFT) == 0)
                             for pos in range(4000)])
    assert abs(agree_index - 0.5) < 0.04 and abs(agree_purpose - 0.5) < 0.04


def test_keyed_enumeration_reads_a_key_twice_as_one_number():
    """Two tests of one uniform against 0.5: the second agrees with the first."""
    def twice(rng):
        return rng.chance(0.5, 3), rng.chance(0.5, 3), rng.chance(0.5, 3, index=1)

    outcomes = enumerate_outcomes(twice)
    assert outcomes == pytest.approx({(True, True, True): 0.25, (True, True, False): 0.25,
                                      (False, False, True): 0.25, (False, False, False): 0.25})


# -- 2. inside the real decoder: the exact distribution of a whole speculative step ----------------

CONFIG = ModelConfig(dim=8, hidden_dim=12, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=5, seq_len=16,
                     shared_classifier=False)
# Broad distributions that differ: after a rejection the residual is spread over several
# tokens, where a shared uniform changes the outcome (a few percent of total variation).
TARGET = Model.from_dense(CONFIG, random_weights(CONFIG, 1, logit_scale=0.5))
DRAFT_MODEL = Model.from_dense(CONFIG, random_weights(CONFIG, 101, logit_scale=0.5))
PROMPT = [3, 4]


def first_step_distribution(monkeypatch, make_steps, randomness=KeyedEnumeration) -> dict:
    """Exact distribution of the tokens the first speculative step emits (the prefill's token
    is fixed by the seed): every PositionKeyed of the decoder replaced by one enumerator."""
    def sampler(rng):
        monkeypatch.setattr(speculative_module, "PositionKeyed", lambda seed: rng)
        monkeypatch.setattr(sd_module, "PositionKeyed", lambda seed: rng)
        steps = make_steps()
        next(steps)                      # the prefill
        emitted, _, _ = next(steps)
        return tuple(emitted)
    return enumerate_outcomes(sampler, randomness)


def completed(outcomes: dict, model, context, settings, n_tokens: int) -> dict:
    """The distribution of n_tokens tokens: each outcome followed by plain target sampling."""
    out = {}
    for tokens, mass in outcomes.items():
        for rest, m in sequence_distribution(model, context + list(tokens), settings,
                                             n_tokens - len(tokens)).items():
            out[tokens + rest] = out.get(tokens + rest, 0.0) + mass * m
    return out


def step_error(monkeypatch, settings, make_steps, depth, randomness=KeyedEnumeration) -> float:
    first = decode("ar", TARGET, PROMPT, settings, 1).tokens
    context = PROMPT + first
    step = first_step_distribution(monkeypatch, make_steps, randomness)
    expected = sequence_distribution(TARGET, context, settings, depth + 1)
    return total_variation(completed(step, TARGET, context, settings, depth + 1), expected)


STEP_CASES = [  # (tree_k, gamma, settings)
    (1, 1, SamplingSettings(temperature=0.7, top_p=0.9, seed=1, ignore_eos=True)),
    (2, 1, SamplingSettings(temperature=1.0, top_k=3, seed=1, ignore_eos=True)),
]


@pytest.mark.parametrize("tree_k,gamma,settings", STEP_CASES)
def test_a_whole_sd_step_has_the_targets_distribution(monkeypatch, tree_k, gamma, settings):
    def make_steps():
        return speculative(TARGET, PROMPT, settings, gamma + 2, draft=DRAFT_MODEL, gamma=gamma, tree_k=tree_k,
                           verify="rejection")

    assert step_error(monkeypatch, settings, make_steps, gamma) <= 1e-12
    control = SharedSiblingUniform if tree_k > 1 else AcceptReadsDraftUniform
    assert step_error(monkeypatch, settings, make_steps, gamma, control) > 3e-3


def non_full_tree_proposer(draft, settings):
    """Rejection proposals of a non-full tree: the root gets two sampled children, the first
    of them one sampled child, the second none (a leaf at depth 1)."""
    def propose(context, max_depth, max_nodes):
        rng = speculative_module.PositionKeyed(settings.seed)
        base, tree = len(context) - 1, TokenTree.root(context[-1])
        if max_depth == 0 or max_nodes < 4:
            return Proposal(tree, [None])

        def q_after(tokens):
            return probabilities(draft.forward(tokens, np.arange(len(tokens)), draft.new_cache())[-1], settings)

        q = [q_after(context), None, None]
        first, _ = [tree.add(0, t) for t in sampled_children(q[0], 2, rng, base + 1)]
        if max_depth >= 2:
            q[first] = q_after(context + [tree.tokens[first]])
            tree.add(first, sampled_children(q[first], 1, rng, base + 2)[0])
            q.append(None)
        return Proposal(tree, q)
    return propose


def test_a_non_full_tree_step_has_the_targets_distribution(monkeypatch):
    settings = SamplingSettings(temperature=1.0, top_k=3, seed=1, ignore_eos=True)
    propose = non_full_tree_proposer(DRAFT_MODEL, settings)

    def make_steps():
        return speculative_decode(TARGET, PROMPT, settings, 4, propose, verify="rejection")

    assert step_error(monkeypatch, settings, make_steps, 2) <= 1e-12
    assert step_error(monkeypatch, settings, make_steps, 2, SharedSiblingUniform) > 3e-3


# -- 3. end to end with the real keyed uniforms: chi-square over seeds -----------------------------

def sampled_counts(run, n_samples: int, n_tokens: int) -> dict:
    """How often each run's first n_tokens tokens occurred, over seeds 0..n_samples-1."""
    counts = {}
    for seed in range(n_samples):
        outcome = tuple(run(seed).tokens[:n_tokens])
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def draft_uniform_chance(self, prob, position, index=0):
    """Negative control: the accept test reads the uniform that drew the draft token."""
    return uniform(self.seed, position, DRAFT, index) < prob


def unchanged_residual(r, q):
    """Negative control: after a rejection the next sibling is tested against p, not the residual."""
    return r


CHI_CASES = {   # name: (settings, sd's parameters (None: the non-full tree), negative control)
    "chain": (SamplingSettings(temperature=0.7, top_p=0.9, ignore_eos=True), dict(gamma=2),
              (PositionKeyed, "chance", draft_uniform_chance)),
    "non-full tree": (SamplingSettings(temperature=1.0, top_k=3, ignore_eos=True), None,
                      (verify_module, "residual", unchanged_residual)),
}
N_SAMPLES = 3000
N_NEW = 4     # the prefill's token, then a step of up to 3 (and whatever follows)
N_COMPARED = 2   # the prefill's token and the step's first: few cells, so a few percent shows


@pytest.mark.parametrize("name", list(CHI_CASES))
def test_sampled_decoding_passes_chi_square_and_the_subtle_bug_fails(monkeypatch, name):
    base, params, control = CHI_CASES[name]

    def run(seed):
        settings = SamplingSettings(base.temperature, base.top_k, base.top_p, seed, ignore_eos=True)
        if params is None:
            propose = non_full_tree_proposer(DRAFT_MODEL, settings)
            return generate(speculative_decode(TARGET, PROMPT, settings, N_NEW, propose, verify="rejection"),
                            PROMPT)
        return decode(speculative, TARGET, PROMPT, settings, N_NEW, draft=DRAFT_MODEL, verify="rejection",
                      **params)

    exact = sequence_distribution(TARGET, PROMPT, base, N_COMPARED)
    assert chi_square_pvalue(sampled_counts(run, N_SAMPLES, N_COMPARED), exact) > 1e-3
    monkeypatch.setattr(*control)
    assert chi_square_pvalue(sampled_counts(run, N_SAMPLES, N_COMPARED), exact) < 1e-6
