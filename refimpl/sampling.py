"""The sampling rules: settings, the filtered distribution, and position-keyed randomness.

Randomness is keyed by position: the uniform that decides the token sampled at
absolute position p is `uniform(seed, p, purpose)`, a pure function (a
SplitMix64 hash chain; see `uniform`) with no generator state. Plain sampling
is then reproducible from (seed, prompt), and any method that verifies by exact
match commits the very tokens plain sampling would, whatever it speculated.
The function is simple on purpose, so other implementations can reproduce our
sampled outputs exactly. Known answers (tests/refimpl/test_sampling.py checks
this table; sm(0) = 0xE220A8397B1DCDAF, the first output of SplitMix64 seeded 0;
purposes: SAMPLE 0, ACCEPT 1, RESIDUAL 2, DRAFT 3):

    uniform(0, 0, 0, 0) = 0.13870941014555427
    uniform(0, 1, 0, 0) = 0.2691303195904541
    uniform(0, 0, 1, 0) = 0.6182288528808131
    uniform(0, 0, 0, 1) = 0.18436667429957676
    uniform(42, 7, 0, 0) = 0.33493855816005447
    uniform(42, 7, 1, 3) = 0.4796368723763429
    uniform(7, 1000000, 2, 0) = 0.42656284082354856
    uniform(18446744073709551615, 255, 3, 1) = 0.5524495699539653

(seed, position, purpose, index) in that order; a value is the exact double, printed
so that it reads back to the same bits.

The distribution: logits / temperature -> softmax (float64) -> keep the top-k
(ties broken by lower id) -> keep the smallest set of most likely tokens whose
mass reaches top-p -> renormalise. (Without top-k, the nucleus's mass is
measured against the whole vocabulary's softmax weight summed in id order.) Temperature 0 is greedy: the lowest id among
the maximal logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refimpl.errors import InputError

MASK64 = (1 << 64) - 1
MIN_TEMPERATURE = 1e-6   # a float32 logit (< 2^128) over it stays far from float64's overflow

# Purposes: independent random streams at the same position.
SAMPLE = 0       # the target's own token at a position
ACCEPT = 1       # the accept/reject test of a draft token (rejection sampling)
RESIDUAL = 2     # resampling from the residual distribution after a rejection
DRAFT = 3        # a draft model's sampled proposal


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.0
    top_k: int = 0          # 0: no top-k filter
    top_p: float = 1.0      # 1.0: no nucleus filter
    seed: int = 0
    ignore_eos: bool = False  # decode past BOS/EOS as ordinary tokens (vLLM's SamplingParams.ignore_eos)

    def __post_init__(self):
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise InputError(f"--temperature {self.temperature}: must be a finite number >= 0")
        if 0 < self.temperature < MIN_TEMPERATURE:   # logits / T would overflow to inf, then NaN
            raise InputError(f"--temperature {self.temperature}: must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        if self.top_k < 0:
            raise InputError(f"--top-k {self.top_k}: must be >= 0 (0 disables it)")
        if not (0.0 < self.top_p <= 1.0):
            raise InputError(f"--top-p {self.top_p}: must be in (0, 1]")
        if self.seed < 0 or self.seed > MASK64:
            raise InputError(f"--seed {self.seed}: must be in [0, 2^64)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def uniform(seed: int, position: int, purpose: int = SAMPLE, index: int = 0) -> float:
    """A uniform in [0, 1) that depends only on (seed, position, purpose, index):
    h = sm(sm(sm(seed) ^ position) ^ (purpose << 32 | index)), u = (h >> 11) / 2^53,
    where sm is the SplitMix64 step."""
    h = _splitmix64(_splitmix64(_splitmix64(seed) ^ position) ^ ((purpose << 32) | index))
    return (h >> 11) * (1.0 / (1 << 53))


def probabilities(logits: np.ndarray, settings: SamplingSettings) -> np.ndarray:
    """The float64 distribution that sampling draws from (one-hot when greedy)."""
    logits = np.asarray(logits)
    probs = np.zeros(logits.shape[-1], dtype=np.float64)
    if settings.greedy:
        probs[int(np.argmax(logits))] = 1.0
        return probs
    scaled = logits.astype(np.float64) / settings.temperature
    if not settings.top_k:
        weights = np.exp(scaled - scaled.max())
        if settings.top_p == 1.0:  # no filter: no ordering needed
            return weights / weights.sum()
        order = _nucleus(scaled, weights, settings.top_p)
        probs[order] = weights[order] / weights[order].sum()
        return probs
    order = _descending(scaled, settings.top_k)
    kept = np.exp(scaled[order] - scaled[order[0]])
    kept /= kept.sum()
    if settings.top_p < 1.0:
        reach = int(np.searchsorted(np.cumsum(kept), settings.top_p)) + 1
        kept = kept[:reach] / kept[:reach].sum()
        order = order[:reach]
    probs[order] = kept
    return probs


def _nucleus(scaled: np.ndarray, weights: np.ndarray, top_p: float) -> np.ndarray:
    """The most likely ids, in decreasing order, until their share of the total weight
    reaches top_p; found among the top 64, 256, ... so the vocabulary is rarely sorted whole."""
    total, k = weights.sum(), 64
    while True:
        order = _descending(scaled, min(k, len(scaled)))
        mass = np.cumsum(weights[order]) / total
        if mass[-1] >= top_p or k >= len(scaled):
            return order[:int(np.searchsorted(mass, top_p)) + 1]
        k *= 4


def _descending(scaled: np.ndarray, top_k: int) -> np.ndarray:
    """Token ids by decreasing value, ties by increasing id; only the first top_k when set
    (found by partition, so a small k does not sort the whole vocabulary)."""
    if top_k and top_k < len(scaled):
        kth = np.partition(scaled, len(scaled) - top_k)[len(scaled) - top_k]
        candidates = np.flatnonzero(scaled >= kth)  # increasing id; ties at kth may exceed k
        return candidates[np.argsort(-scaled[candidates], kind="stable")][:top_k]
    return np.argsort(-scaled, kind="stable")


def draw(probs: np.ndarray, u: float) -> int:
    """Inverse-CDF draw in token-id order: the first id whose cumulative mass exceeds u."""
    cumulative = np.cumsum(probs)
    index = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
    index = min(index, len(probs) - 1)
    while probs[index] == 0.0:  # u at the very top of the range: step back to a real token
        index -= 1
    return index


def sample(logits: np.ndarray, settings: SamplingSettings, position: int, purpose: int = SAMPLE) -> int:
    """The token for absolute position `position` from a row of logits."""
    if settings.greedy:
        return int(np.argmax(logits))
    return draw(probabilities(logits, settings), uniform(settings.seed, position, purpose))
