"""Verification rules: how the target decides which proposed tokens to keep.

Both rules walk a `TokenTree` from its root (the pending token at position
`base`) and return a `Verdict`: the accepted path (root first) and the token
the target commits after it (the bonus token when the walk ended at a leaf,
the correction token otherwise). The decision at node i concerns absolute
position `base + depth[i] + 1`, and uses only randomness keyed by that position.

* **Exact match** (`verify_match`): the target samples its own token at each
  position exactly as plain decoding does (`sampling.sample`, purpose SAMPLE),
  and a child is accepted when it carries that token. The committed tokens are
  those of plain decoding with the same seed, whatever was proposed.

* **Rejection sampling** (`verify_rejection`): a node's children must have been
  drawn independently from the draft distribution q at that node
  (`sampled_children`). Child j is accepted with probability min(1, r(x)/q(x)),
  r starting as the target distribution p; after a rejection
  r <- normalise(max(r - q, 0)), and the next child is tried. When every child
  is rejected the token is drawn from r (purpose RESIDUAL); at a leaf it is
  drawn from p (purpose SAMPLE). With one child per node this is the chain rule
  of Leviathan et al. / Chen et al.; with several it is SpecInfer's recursive
  (multi-step) speculative sampling. Either way the committed tokens follow the
  target's distribution exactly (tests enumerate it), though they are not the
  tokens plain decoding would sample with the same seed.

p and q come from `sampling.probabilities` with the same settings
(temperature, top-k, top-p) for target and draft, so no token outside the
target's allowed set is ever committed: p is zero there, and so is every residual.

Randomness goes through a `Randomness` object (`chance`, `choose`), so that a
test can replace the position-keyed uniforms by an enumeration of every branch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refimpl.sampling import ACCEPT, DRAFT, RESIDUAL, SAMPLE, SamplingSettings, draw, sample, uniform
from refimpl.trees import TokenTree

MATCH = "match"
REJECTION = "rejection"
VERIFY_RULES = (MATCH, REJECTION)


@dataclass
class Verdict:
    path: list[int]   # accepted nodes, root first; accepted draft tokens = len(path) - 1
    token: int        # the target's token after the path (bonus or correction)


class PositionKeyed:
    """The production randomness: uniforms keyed by (seed, position, purpose, index)."""

    def __init__(self, seed: int):
        self.seed = seed

    def chance(self, prob: float, position: int, index: int = 0) -> bool:
        """True with probability `prob` (the accept test of a draft token)."""
        return uniform(self.seed, position, ACCEPT, index) < prob

    def choose(self, probs: np.ndarray, position: int, purpose: int, index: int = 0) -> int:
        """A token drawn from `probs` (need not be normalised)."""
        return draw(probs, uniform(self.seed, position, purpose, index))


# -- proposing children ----------------------------------------------------------------------

def top_children(logits: np.ndarray, k: int) -> list[int]:
    """The k most likely tokens under the draft, most likely first (ties: lower id);
    the proposals for exact-match verification. (No full sort: the vocabulary is large.)"""
    logits = np.asarray(logits)
    if k == 1:
        return [int(np.argmax(logits))]
    k = min(k, len(logits))
    threshold = logits[np.argpartition(-logits, k - 1)[:k]].min()
    candidates = np.flatnonzero(logits >= threshold)
    order = np.lexsort((candidates, -logits[candidates]))
    return [int(t) for t in candidates[order[:k]]]


def sampled_children(q: np.ndarray, k: int, rng, position: int) -> list[int]:
    """k independent draws from the draft distribution q (duplicates kept); the
    proposals for rejection sampling. `position` is the children's position."""
    return [rng.choose(q, position, DRAFT, index) for index in range(k)]


# -- the two rules ---------------------------------------------------------------------------

def verify_match(tree: TokenTree, logits: np.ndarray, settings: SamplingSettings, base: int) -> Verdict:
    """Exact match: logits[i] is the target's row for node i (an array, or any indexable
    that computes rows on demand)."""
    decided: dict[int, int] = {}

    def target_next(node: int) -> int:
        if node not in decided:
            decided[node] = sample(logits[node], settings, base + tree.depths[node] + 1)
        return decided[node]

    path = tree.longest_match(target_next)
    return Verdict(path, target_next(path[-1]))


def accept_probability(p_x: float, q_x: float) -> float:
    """min(1, p(x)/q(x)); a token the draft could not have drawn is never accepted."""
    return 0.0 if q_x <= 0.0 else min(1.0, p_x / q_x)


def residual(r: np.ndarray, q: np.ndarray) -> np.ndarray:
    """normalise(max(r - q, 0)); r itself if nothing is left (r <= q everywhere)."""
    left = np.maximum(r - q, 0.0)
    total = left.sum()
    return left / total if total > 0.0 else r


def verify_rejection(tree: TokenTree, p: list[np.ndarray], q: list[np.ndarray | None], rng,
                     base: int) -> Verdict:
    """Rejection sampling: p[i] the target's distribution after node i, q[i] the draft
    distribution node i's children were drawn from (None for a leaf)."""
    node = 0
    while True:
        position = base + tree.depths[node] + 1
        children = tree.children(node)
        r = p[node]
        for index, child in enumerate(children):
            x = tree.tokens[child]
            if rng.chance(accept_probability(r[x], q[node][x]), position, index):
                node = child
                break
            r = residual(r, q[node])
        else:
            token = rng.choose(r, position, RESIDUAL if children else SAMPLE)
            return Verdict(tree.path_to(node), token)
