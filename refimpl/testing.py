"""Random tiny models and hypothesis strategies, for this project's tests and for
anyone checking a decoder against the reference. hypothesis is imported lazily,
so the runtime does not need it."""
from __future__ import annotations

import numpy as np

from refimpl.model import Model, ModelConfig
from refimpl.sampling import ACCEPT


def random_weights(config: ModelConfig, seed: int = 0, logit_scale: float = 4.0) -> dict[str, np.ndarray]:
    """Dense random weights (names of Model.from_dense) for a model whose text varies.

    The token embedding is small (rms 0.5 / sqrt(dim)) beside the layers' updates, so the
    residual stream is the layers' function of the context rather than the last token's
    embedding; a tied classifier (the embedding itself) would otherwise predict the last
    token again and again. logit_scale sharpens the output distribution: it multiplies
    an untied classifier, or the final norm's weight when the classifier is tied."""
    rng = np.random.default_rng(seed)
    c = config
    L, D, H, KV, V = c.n_layers, c.dim, c.hidden_dim, c.kv_dim, c.vocab_size

    def normal(*shape, fan_in):
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    Q, HD = c.q_dim, c.head_dim
    weights = {
        "token_embedding": normal(V, D, fan_in=4 * D),
        "attn_norm": (1 + 0.1 * rng.standard_normal((L, D))).astype(np.float32),
        "wq": normal(L, Q, D, fan_in=D), "wk": normal(L, KV, D, fan_in=D),
        "wv": normal(L, KV, D, fan_in=D), "wo": normal(L, D, Q, fan_in=Q),
        "ffn_norm": (1 + 0.1 * rng.standard_normal((L, D))).astype(np.float32),
        "w1": normal(L, H, D, fan_in=D), "w2": normal(L, D, H, fan_in=H), "w3": normal(L, H, D, fan_in=D),
        "final_norm": np.ones(D, dtype=np.float32),
    }
    if c.shared_classifier:
        weights["final_norm"] *= np.float32(logit_scale)
    else:
        weights["classifier"] = normal(V, D, fan_in=D) * np.float32(logit_scale)
    if c.qkv_bias:
        weights.update(bq=normal(L, Q, fan_in=4), bk=normal(L, KV, fan_in=4), bv=normal(L, KV, fan_in=4))
    if c.qk_norm:
        weights.update(q_norm=(1 + 0.2 * rng.standard_normal((L, HD))).astype(np.float32),
                       k_norm=(1 + 0.2 * rng.standard_normal((L, HD))).astype(np.float32))
    if c.arch == "gpt2":  # no gate; biases everywhere; LayerNorm biases; learned positions
        del weights["w3"]
        weights.update(bq=normal(L, Q, fan_in=4), bk=normal(L, KV, fan_in=4), bv=normal(L, KV, fan_in=4),
                       bo=normal(L, D, fan_in=4), b1=normal(L, H, fan_in=4), b2=normal(L, D, fan_in=4),
                       attn_norm_b=normal(L, D, fan_in=100), ffn_norm_b=normal(L, D, fan_in=100),
                       final_norm_b=normal(D, fan_in=100), position_embedding=normal(c.seq_len, D, fan_in=4))
    return weights


def random_model(config: ModelConfig, seed: int = 0) -> Model:
    return Model.from_dense(config, random_weights(config, seed), name=f"random-{seed}")


ARCHITECTURES = ("llama", "qwen2", "qwen3", "gpt2")  # the block variants the kernels implement (see ModelConfig)


def tiny_configs(arch: str = "llama"):
    """hypothesis strategy of small, varied model shapes (GQA, odd sizes, tied or not) of one
    architecture: llama; qwen2 (q/k/v biases); qwen3 (q/k norms, head size apart from dim/heads)."""
    from hypothesis import strategies as st

    @st.composite
    def configs(draw):
        n_kv_heads = draw(st.integers(1, 3))
        n_heads = n_kv_heads * draw(st.integers(1, 3))
        head_dim = 2 * draw(st.integers(1, 6))
        dim = n_heads * head_dim
        extra = {}
        if arch == "qwen2":
            extra = dict(qkv_bias=True)
        elif arch == "gpt2":
            n_kv_heads = n_heads
        elif arch == "qwen3":
            dim = draw(st.integers(4, 40))
            extra = dict(qk_norm=True, head_size=head_dim if head_dim * n_heads != dim else None)
        return ModelConfig(dim=dim, hidden_dim=draw(st.integers(3, 70)),
                           n_layers=draw(st.integers(1, 3)), n_heads=n_heads, n_kv_heads=n_kv_heads,
                           vocab_size=draw(st.integers(5, 90)), seq_len=draw(st.integers(24, 80)),
                           shared_classifier=arch == "gpt2" or draw(st.booleans()), arch=arch, **extra)

    return configs()


# -- the lossless harness: helpers every speculative method's tests reuse ------------------------

def decode(method, model, prompt_ids, settings, max_new_tokens: int, **params):
    """The Generation of one method (a METHODS entry or its name)."""
    from refimpl.decoding import METHODS, generate

    method = METHODS[method] if isinstance(method, str) else method
    return generate(method(model, prompt_ids, settings, max_new_tokens, **params), prompt_ids)


def assert_same_as_ar(method, model, prompt_ids, settings, max_new_tokens: int, **params):
    """Exact-match losslessness: the method's tokens and stop reason are those of `ar`.
    Returns the method's Generation (for acceptance checks)."""
    expected = decode("ar", model, prompt_ids, settings, max_new_tokens)
    got = decode(method, model, prompt_ids, settings, max_new_tokens, **params)
    assert got.tokens == expected.tokens, f"diverged from ar: {got.tokens} != {expected.tokens}"
    assert got.stop_reason == expected.stop_reason
    assert sum(r.emitted for r in got.records) == len(got.tokens)
    return got


class StepCoverage:
    """What the speculative steps of a property's examples exercised: a rejection at each
    depth, partial acceptance (rollback), full acceptance. Proposals are chains or full
    k-ary trees (`tree_k`), whose depth follows from their size."""

    def __init__(self):
        self.rejected_at: set[int] = set()
        self.partial = self.full = self.steps = 0

    def add(self, generation, tree_k: int = 1) -> None:
        for record in generation.records:
            if record.prefill or record.proposed == 0:
                continue
            depth, size = 0, 1
            while size < record.proposed + 1:
                depth, size = depth + 1, size + tree_k ** (depth + 1)
            self.steps += 1
            if record.accepted == depth:
                self.full += 1
            else:
                self.rejected_at.add(record.accepted + 1)
                self.partial += record.accepted > 0

    def assert_covered(self, depths: int) -> None:
        missing = set(range(1, depths + 1)) - self.rejected_at
        assert self.full and self.partial and not missing, (
            f"degenerate examples: {self.steps} steps, {self.full} fully accepted, {self.partial} partially, "
            f"rejections at depths {sorted(self.rejected_at)}")


class KeyedEnumeration:
    """A stand-in for verify.PositionKeyed that enumerates every branch of a sampler exactly,
    with the uniforms keyed as production keys them.

    Each key (purpose, position, index) is one uniform variable: a key used twice is the
    same number both times, so a shared uniform (two decisions reading one key) has exactly
    the effect here that it has in production. A variable is tracked as the interval its
    value must lie in; a decision (`chance`: u < prob; `choose`: the inverse-CDF cell of u)
    splits the interval, following `script` and recording the untaken cells as branches.
    `enumerate_outcomes` runs a sampler once per branch."""

    def __init__(self, script: tuple[int, ...] = ()):
        self.script, self.taken, self.probability, self.branches = script, [], 1.0, []
        self.intervals: dict[tuple, tuple[float, float]] = {}

    def _pick(self, weights: list[float]) -> int:
        options = [i for i, w in enumerate(weights) if w > 0.0]
        at = len(self.taken)
        choice = self.script[at] if at < len(self.script) else options[0]
        if at >= len(self.script):
            self.branches += [tuple(self.taken) + (o,) for o in options[1:]]
        self.taken.append(choice)
        self.probability *= weights[choice]
        return choice

    def split(self, key: tuple, cuts) -> int:
        """The cell of the uniform `key` among the thresholds `cuts` (increasing, in [0, 1])."""
        lo, hi = self.intervals.get(key, (0.0, 1.0))
        edges = [lo] + [min(max(float(c), lo), hi) for c in cuts] + [hi]
        weights = [(edges[i + 1] - edges[i]) / (hi - lo) for i in range(len(edges) - 1)]
        cell = self._pick(weights)
        self.intervals[key] = (edges[cell], edges[cell + 1])
        return cell

    def chance(self, prob: float, position: int, index: int = 0) -> bool:
        return self.split((ACCEPT, position, index), [prob]) == 0

    def choose(self, probs, position: int, purpose: int, index: int = 0) -> int:
        cumulative = np.cumsum(np.asarray(probs, dtype=np.float64))
        return self.split((purpose, position, index), cumulative[:-1] / cumulative[-1])


def enumerate_outcomes(sampler, randomness=KeyedEnumeration) -> dict:
    """The exact distribution of `sampler(rng)` (a hashable outcome) over every branch
    of its random choices, rng being a `randomness(script)` (KeyedEnumeration or a variant)."""
    outcomes: dict = {}
    pending = [()]
    while pending:
        rng = randomness(pending.pop())
        outcome = sampler(rng)
        outcomes[outcome] = outcomes.get(outcome, 0.0) + rng.probability
        pending += rng.branches
    return outcomes


def total_variation(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def sequence_distribution(model, prompt_ids, settings, n_tokens: int) -> dict:
    """Exact distribution of the first n_tokens sampled tokens of plain decoding, as
    tuples; a tuple ends early with the stop token (the model's stop ids) that ended it
    (unless settings.ignore_eos)."""
    from refimpl.sampling import probabilities

    stops = () if settings.ignore_eos else model.config.stop_ids
    out = {}
    pending = [((), 1.0)]
    while pending:
        tokens, mass = pending.pop()
        if len(tokens) == n_tokens or (tokens and tokens[-1] in stops):
            out[tokens] = out.get(tokens, 0.0) + mass
            continue
        ids = list(prompt_ids) + list(tokens)
        logits = model.forward(ids, np.arange(len(ids)), model.new_cache())[-1]
        probs = probabilities(logits, settings)
        pending += [(tokens + (t,), mass * p) for t, p in enumerate(probs) if p > 0.0]
    return out


def outcome_of(generation) -> tuple:
    """A Generation's tokens as a tuple, ended by its stop token if it stopped on one."""
    from refimpl.tokenizer import BOS_ID, EOS_ID

    stop = {"eos": (EOS_ID,), "bos": (BOS_ID,)}.get(generation.stop_reason, ())
    return tuple(generation.tokens) + stop


def chi_square_pvalue(counts: dict, probs: dict, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness of fit of observed counts to exact probabilities;
    cells expected fewer than min_expected times are pooled (one cell)."""
    from scipy.stats import chisquare

    total = sum(counts.values())
    if set(counts) - {k for k, p in probs.items() if p > 0.0}:
        return 0.0   # an impossible outcome was observed
    observed, expected, pooled = [], [], [0.0, 0.0]
    for key, p in probs.items():
        if total * p >= min_expected:
            observed.append(counts.get(key, 0))
            expected.append(total * p)
        else:
            pooled[0] += counts.get(key, 0)
            pooled[1] += total * p
    if pooled[1] > 0.0:
        observed.append(pooled[0])
        expected.append(pooled[1])
    expected = np.array(expected) * (total / sum(expected))
    return float(chisquare(observed, expected).pvalue)
