"""Draft-target speculative decoding (`--method sd`).

A draft model (another checkpoint with the target's vocabulary, or the target
cut to its first k layers: `Model.first_layers`) proposes, the target verifies
all proposals in one pass (refimpl.decoding.speculative).

Proposals, `gamma` deep:
- a chain (`tree_k=1`): one draft pass per token;
- a tree (`tree_k=k > 1`): every node gets k children, the full k-ary tree, one
  draft pass per depth over the whole tree so far (ancestor mask, uncommitted).
Every draft pass computes logits (final norm, classifier) only for the rows
whose children it proposes.

With exact-match verification the children are the draft's k most likely
tokens; with rejection sampling they are k independent draws from the draft's
distribution (same temperature/top-k/top-p as the target), as the rule requires.

The draft keeps its own KV cache in step with the target's committed tokens:
before proposing, it drops whatever it cached beyond the common prefix with the
committed context and runs the rest (the newly committed tokens and the pending
root) in its first pass.
"""
from __future__ import annotations

import numpy as np

from refimpl.decoding.common import token_budget
from refimpl.decoding.speculative import Proposal, speculative_decode
from refimpl.errors import InputError
from refimpl.sampling import SamplingSettings, probabilities
from refimpl.trees import TokenTree, full_tree_size
from refimpl.verify import MATCH, REJECTION, VERIFY_RULES, PositionKeyed, sampled_children, top_children


class Drafter:
    """The draft model, its KV cache, and the proposal rule; called once per step."""

    def __init__(self, model, settings: SamplingSettings, gamma: int, tree_k: int, verify: str):
        self.model, self.settings = model, settings
        self.gamma, self.k, self.verify = gamma, tree_k, verify
        self.cache = model.new_cache()
        self.cached: list[int] = []     # the tokens the draft cache holds, committed
        self.rng = PositionKeyed(settings.seed)

    def __call__(self, context: list[int], max_depth: int, max_nodes: int) -> Proposal:
        base = len(context) - 1        # the pending root's position
        depth = self.depth_for(base, max_depth, max_nodes)
        if depth == 0:
            return Proposal(TokenTree.root(context[-1]), [None])
        logits, rows = self.catch_up(context)
        grow = self.grow_chain if self.k == 1 else self.grow_tree
        return grow(TokenTree.root(context[-1]), logits, base, depth, [rows])

    def depth_for(self, base: int, max_depth: int, max_nodes: int) -> int:
        """gamma, or less where the target's or the draft's cache has no room."""
        depth = min(self.gamma, max_depth)
        while depth > 0 and (full_tree_size(self.k, depth) > max_nodes
                             or base + full_tree_size(self.k, depth - 1) > self.cache.capacity):
            depth -= 1
        return depth

    def catch_up(self, context: list[int]) -> tuple[np.ndarray, int]:
        """Cache the committed context and the root; the draft's logits after the root."""
        keep = 0
        limit = min(len(self.cached), len(context) - 1)
        while keep < limit and self.cached[keep] == context[keep]:
            keep += 1
        self.cache.truncate(keep)
        fresh = context[keep:]
        hidden = self.model.hidden_states(fresh, np.arange(keep, len(context)), self.cache)
        logits = self.model.head(hidden[-1:])[0]
        self.cached = list(context)
        return logits, len(fresh)

    def children(self, logits: np.ndarray, position: int) -> tuple[list[int], np.ndarray | None]:
        """The proposed children of a node and the distribution they were drawn from."""
        if self.verify == MATCH:
            return top_children(logits, self.k), None
        q = probabilities(logits, self.settings)
        return sampled_children(q, self.k, self.rng, position), q

    def grow_chain(self, tree: TokenTree, logits, base: int, depth: int, rows: list[int]) -> Proposal:
        q = []
        for d in range(1, depth + 1):
            tokens, q_node = self.children(logits, base + d)
            q.append(q_node)
            tree.add(d - 1, tokens[0])
            if d < depth:
                logits = self.model.forward(tokens, [base + d], self.cache)[0]
                self.cached.append(tokens[0])
                rows.append(1)
        return Proposal(tree, q + [None], rows)

    def grow_tree(self, tree: TokenTree, logits, base: int, depth: int, rows: list[int]) -> Proposal:
        q, frontier, frontier_logits = [None], [0], [logits]
        for d in range(1, depth + 1):
            grown = []
            for node, node_logits in zip(frontier, frontier_logits):
                tokens, q[node] = self.children(node_logits, base + d)
                for token in tokens:
                    grown.append(tree.add(node, token))
                    q.append(None)
            frontier = grown
            if d < depth:     # the draft's logits at the new level: rerun every node below the root
                hidden = self.model.hidden_states(tree.token_array()[1:], tree.positions(base)[1:],
                                                  self.cache, tree.ancestor_mask()[1:, 1:], commit=False)
                frontier_logits = self.model.head(hidden[[node - 1 for node in frontier]])
                rows.append(len(tree) - 1)
        return Proposal(tree, q, rows)


def check_params(target, draft, prompt_ids, gamma: int, tree_k: int, verify: str) -> None:
    """Raise InputError for a draft or setting sd cannot work with."""
    if draft is None:
        raise InputError("--method sd needs a draft: --draft PATH or --draft-layers K")
    if draft.config.vocab_size != target.config.vocab_size:
        raise InputError(f"--draft: the draft's vocabulary of {draft.config.vocab_size} tokens differs from "
                         f"the target's {target.config.vocab_size}")
    if gamma < 1:
        raise InputError(f"--gamma {gamma}: must be >= 1")
    if tree_k < 1:
        raise InputError(f"--tree-k {tree_k}: must be >= 1 (1: a chain)")
    if verify not in VERIFY_RULES:
        raise InputError(f"--verify {verify!r}: must be one of {', '.join(VERIFY_RULES)}")
    if len(prompt_ids) + gamma >= target.config.seq_len:   # before the tree's size: k**gamma is unbounded
        raise InputError(f"--gamma {gamma}: a tree that deep after a prompt of {len(prompt_ids)} tokens "
                         f"exceeds the cache of {target.config.seq_len} slots")
    nodes = full_tree_size(tree_k, gamma)
    if len(prompt_ids) + nodes > target.config.seq_len:
        raise InputError(f"--tree-k {tree_k} --gamma {gamma}: a tree of {nodes} nodes after a prompt of "
                         f"{len(prompt_ids)} tokens exceeds the cache of {target.config.seq_len} slots")


def speculative(model, prompt_ids, settings: SamplingSettings, max_new_tokens: int, draft=None,
                gamma: int = 4, tree_k: int = 1, verify: str = MATCH, cache=None):
    """Draft-target speculative decoding; the step generator of refimpl.decoding."""
    check_params(model, draft, prompt_ids, gamma, tree_k, verify)
    token_budget(model, prompt_ids, max_new_tokens)
    drafter = Drafter(draft, settings, gamma, tree_k, verify)
    return speculative_decode(model, prompt_ids, settings, max_new_tokens, drafter, verify, cache)


__all__ = ["Drafter", "speculative", "MATCH", "REJECTION"]
