"""Speculative Streaming (`--method ss`): the target drafts for itself through
speculative streams in its last N_s layers (refimpl.streams); no draft model.

One step is one pass of the target over a token tree:
- root: the token the main stream committed after the last accepted node;
- level g: the top-k tokens of stream g of that node (rejection sampling: k draws
  from stream g's distribution, the same draws for every node of the level); the
  tree is the full k-ary tree over these levels, as deep as gamma;
- pruning (threshold > 0): mid-pass, at layer N - N_s, each child whose early-exit
  transition probability from its parent (the pruning adapter, final norm,
  classifier, softmax) is below the threshold is dropped with its subtree before the
  last N_s layers; the lower layers' keys/values of the survivors are compacted;
- verification by exact match (ar's very tokens, any temperature) or rejection
  sampling with the streams' distributions as the draft's q (restricted to the
  unpruned tokens, renormalised, when pruning is on: the surviving children are then
  independent draws from that restriction, which the rule needs);
- the streams of the accepted node give the next tree: `schedule="fused"` computes
  every node's streams inside the verification pass (the paper's schedule),
  `"deferred"` runs only the accepted node's streams once the verdict is known
  (gamma rows through N_s layers). Both give the same bits, hence the same trees.

The loop is the shared one (refimpl.decoding.speculative) through its hooks.

Traces: a step's record counts the stream rows that produced its tree as one "draft
pass" (draft_passes 1, draft_tokens_per_pass = gamma deferred, or gamma x the previous
tree's nodes fused), the header's draft being the shape of the last N_s layers, so the
simulator times them as N_s layers of that many rows and the shortlist classifier (the
header's params "stream_layers" and "draft_vocab", refimpl.trace); target_tokens counts the
tree as verified (after pruning).
"""
from __future__ import annotations

import numpy as np

from refimpl.decoding.common import token_budget
from refimpl.decoding.speculative import Proposal, speculative_decode
from refimpl.errors import InputError
from refimpl.model import causal_mask
from refimpl.sampling import SamplingSettings, probabilities
from refimpl.streams import (Streams, compact_rows, deferred_streams, early_exit_probabilities,
                             run_with_streams, subtree, surviving_nodes)
from refimpl.trees import TokenTree, full_tree_size
from refimpl.verify import MATCH, VERIFY_RULES, PositionKeyed, sampled_children, top_children

FUSED, DEFERRED = "fused", "deferred"
SCHEDULES = (FUSED, DEFERRED)
MAX_TREE_K = 8


class LevelDrafter:
    """Trees from per-level draft logits of the last committed node (streams, or Medusa heads)."""

    def __init__(self, settings: SamplingSettings, tree_k: int, verify: str):
        self.settings, self.k, self.verify = settings, tree_k, verify
        self.rng = PositionKeyed(settings.seed)

    def tree(self, root: int, level_logits, base: int, depth: int) -> Proposal:
        """The full k-ary tree of the given depth below `root`; level g's children are the
        top-k of level_logits[g-1] (match) or k draws from its distribution (rejection)."""
        per_depth, q_levels = [], []
        for g in range(1, depth + 1):
            if self.verify == MATCH:
                per_depth.append(top_children(level_logits[g - 1], self.k))
            else:
                q = probabilities(level_logits[g - 1], self.settings)
                q_levels.append(q)
                per_depth.append(sampled_children(q, self.k, self.rng, base + g))
        tree = TokenTree.from_candidates(root, per_depth)
        q = None
        if self.verify != MATCH:
            q = [q_levels[d] if d < depth else None for d in tree.depths]
        return Proposal(tree, q)

    def depth_for(self, max_depth: int, max_nodes: int, rows_per_node: int, levels: int) -> int:
        depth = min(levels, max_depth)
        while depth > 0 and full_tree_size(self.k, depth) * rows_per_node > max_nodes:
            depth -= 1
        return depth


class StreamProposer(LevelDrafter):
    """The ss proposer and its pass hooks (see the module docstring)."""

    def __init__(self, model, streams: Streams, settings: SamplingSettings, tree_k: int, verify: str,
                 schedule: str, threshold: float):
        super().__init__(settings, tree_k, verify)
        self.model, self.streams, self.schedule, self.threshold = model, streams, schedule, threshold
        self.split = streams.split(model)
        self.cache = None
        self.split_hidden = None      # main stream at layer N - N_s, rows of the last pass
        self.stream_hidden = {}       # fused: pass row -> its streams after the last layer
        self.level_logits = None      # the last committed node's streams' logits (gamma, vocab)
        self.stream_rows = []         # the trace's "draft pass": stream rows that fed the next tree

    # -- hooks of the shared loop ---------------------------------------------------------------

    def prefill_pass(self, target, prompt_ids, cache) -> np.ndarray:
        self.cache = cache
        n = len(prompt_ids)
        positions = np.arange(n)
        tokens = np.asarray(prompt_ids, dtype=np.int64)
        target.check_tokens(tokens, positions)
        hidden = target.embed(tokens)
        hidden = self.lower_and_upper(hidden, positions, causal_mask(n), [n - 1])
        cache.commit(n)
        return hidden

    def tree_pass(self, target, proposal: Proposal, base: int, cache):
        tree = proposal.tree
        positions, mask = tree.positions(base), tree.ancestor_mask()
        hidden = target.embed(tree.token_array())
        target.run_layers(hidden, positions, cache, mask, stop=self.split)
        if self.threshold > 0.0 and len(tree) > 1:
            proposal = self.prune(proposal, hidden)
            if len(proposal.tree) < len(tree):
                kept = self.kept
                compact_rows(cache, kept, self.split)
                hidden = hidden[kept]
                tree = proposal.tree
                positions, mask = tree.positions(base), tree.ancestor_mask()
        self.split_hidden = hidden.copy()
        hidden = self.upper(hidden, positions, mask, range(len(tree)))
        return proposal, hidden

    def accepted(self, row: int) -> None:
        gamma = self.streams.gamma
        if self.schedule == FUSED:
            streams = self.stream_hidden[row]
            self.stream_rows = [gamma * len(self.stream_hidden)]
        else:
            if self.cache.length + gamma > self.cache.capacity:
                self.level_logits = None
                return
            streams = deferred_streams(self.model, self.streams, self.split_hidden[row], self.cache.length - 1,
                                       self.cache)
            self.stream_rows = [gamma]
        self.level_logits = self.streams.logits(self.model, streams)

    def __call__(self, context: list[int], max_depth: int, max_nodes: int) -> Proposal:
        rows_per_node = 1 + self.streams.gamma if self.schedule == FUSED else 1
        depth = 0 if self.level_logits is None else self.depth_for(max_depth, max_nodes, rows_per_node,
                                                                    self.streams.gamma)
        proposal = self.tree(context[-1], self.level_logits, len(context) - 1, depth)
        proposal.draft_rows = self.stream_rows
        return proposal

    # -- parts -------------------------------------------------------------------------------

    def lower_and_upper(self, hidden, positions, mask, stream_nodes) -> np.ndarray:
        self.model.run_layers(hidden, positions, self.cache, mask, stop=self.split)
        self.split_hidden = hidden.copy()
        return self.upper(hidden, positions, mask, stream_nodes)

    def upper(self, hidden, positions, mask, stream_nodes) -> np.ndarray:
        """The last N_s layers; with the fused schedule, with the streams of stream_nodes."""
        if self.schedule == FUSED:
            hidden, streams = run_with_streams(self.model, self.streams, hidden, positions, mask, self.cache,
                                               list(stream_nodes))
            self.stream_hidden = dict(zip(stream_nodes, streams))
        else:
            self.model.run_layers(hidden, positions, self.cache, mask, start=self.split)
        return hidden

    def prune(self, proposal: Proposal, split_hidden: np.ndarray) -> Proposal:
        """The proposal with low-transition subtrees removed (self.kept: the surviving rows)."""
        tree = proposal.tree
        parents = sorted({p for p in tree.parents if p >= 0})
        probs = early_exit_probabilities(self.model, self.streams, split_hidden[parents])
        pruned, self.kept = prune_proposal(proposal, dict(zip(parents, probs)), self.threshold)
        return pruned


def prune_proposal(proposal: Proposal, transition: dict, threshold: float) -> tuple[Proposal, list[int]]:
    """(the proposal without the subtrees whose edge from the parent scores below threshold,
    the surviving nodes); transition[p] is parent p's distribution over its children's tokens.
    The draft distributions are restricted to the tokens pruning lets through even where no
    child happened to be pruned: the surviving children are draws from that restriction."""
    tree = proposal.tree
    kept = surviving_nodes(tree, transition, threshold)
    q = None
    if proposal.q is not None:
        q = [restricted(proposal.q[node], transition.get(node), threshold) for node in kept]
    pruned = subtree(tree, kept) if len(kept) < len(tree) else tree
    return Proposal(pruned, q, proposal.draft_rows), kept


def restricted(q, transition, threshold: float):
    """q restricted to the tokens pruning lets through, renormalised (None if nothing is left)."""
    if q is None or transition is None:
        return q
    kept = np.where(transition >= threshold, q, 0.0)
    total = kept.sum()
    return kept / total if total > 0.0 else None


def check_params(model, streams: Streams, gamma: int | None, tree_k: int, verify: str, schedule: str,
                 threshold: float) -> None:
    if streams is None:
        raise InputError("--method ss needs stream parameters (--streams FILE)")
    streams.check_for(model)
    if gamma is not None and not 1 <= gamma <= streams.gamma:
        raise InputError(f"--gamma {gamma}: must be between 1 and the {streams.gamma} trained streams")
    if not 1 <= tree_k <= MAX_TREE_K:
        raise InputError(f"--tree-k {tree_k}: must be between 1 and {MAX_TREE_K}")
    if verify not in VERIFY_RULES:
        raise InputError(f"--verify {verify!r}: must be one of {', '.join(VERIFY_RULES)}")
    if schedule not in SCHEDULES:
        raise InputError(f"--schedule {schedule!r}: must be one of {', '.join(SCHEDULES)}")
    if not (0.0 <= threshold <= 1.0):
        raise InputError(f"--prune-threshold {threshold}: must be in [0, 1]")


def with_gamma(streams: Streams, gamma: int | None) -> Streams:
    """The first gamma streams (stream j's computation sees only streams <= j: same bits)."""
    if gamma is None or gamma == streams.gamma:
        return streams
    down = None if streams.init_down is None else streams.init_down[:gamma]
    up = None if streams.init_up is None else streams.init_up[:gamma]
    return Streams(streams.embeddings[:gamma], streams.n_layers, streams.prune_down, streams.prune_up,
                   streams.identity, streams.vocabulary, down, up)


def speculative_streaming(model, prompt_ids, settings: SamplingSettings, max_new_tokens: int, streams=None,
                          gamma: int | None = None, tree_k: int = 1, verify: str = MATCH,
                          schedule: str = FUSED, prune_threshold: float = 0.0, cache=None):
    """Speculative Streaming; the step generator of refimpl.decoding."""
    check_params(model, streams, gamma, tree_k, verify, schedule, prune_threshold)
    token_budget(model, prompt_ids, max_new_tokens)
    streams = with_gamma(streams, gamma)
    if cache is None:   # room after the sequence for the stream rows
        extra = (1 + streams.gamma) * full_tree_size(tree_k, streams.gamma) + streams.gamma
        cache = model.new_cache(model.config.seq_len + extra)
    proposer = StreamProposer(model, streams, settings, tree_k, verify, schedule, prune_threshold)
    return speculative_decode(model, prompt_ids, settings, max_new_tokens, proposer, verify, cache)
