"""The speculative decoding loop every proposing method shares (sd, lookup, and later ones).

One step (one target forward pass), in the manner of gpt-fast's speculative_decode:

1. the proposer offers a `TokenTree` whose root is the pending token (the last
   committed one, not yet in the target's cache), at most `max_depth` deep and
   `max_nodes` large;
2. the target runs every node through its layers in one pass (positions by
   depth, ancestor mask), the rows written after the committed cache but not
   committed; the final norm and classifier, most of a small model's cost
   (stories15M: 9.2M of its 15M weights), run only on the rows the
   verification visits (`NodeLogits`), with the same bits (batch invariance);
3. a verification rule (refimpl.verify) picks the accepted path and the
   bonus/correction token;
4. the cache keeps the accepted path's rows, compacted into place, and forgets
   the rest: it then holds exactly the bits plain decoding would have written;
5. the new tokens are emitted through `clip`, like `ar`.

Two optional hooks let a proposer act during the pass (Mirror-SD does): with
`Proposal.split_layer` set, the target runs layers 1..split_layer, hands a copy
of the residual stream to `Proposal.on_split`, then runs the rest (the same
kernels in the same order: the same bits); `Proposal.on_verdict(verdict)`, called
after verification, returns extra fields for the step's record.

The prefill pass samples the first token exactly as `ar` does.

Proposers that draft from the target's own passes (Speculative Streaming, Medusa)
may define three optional hooks; sd and lookup define none:
- `prefill_pass(target, prompt_ids, cache)` -> the prompt's hidden states after the
  last layer, keys/values committed (default: `target.hidden_states`);
- `tree_pass(target, proposal, base, cache)` -> (the proposal verified, hidden states):
  the verification pass, which may add rows of its own after the tree's or prune the
  tree (default: the tree alone, uncommitted);
- `accepted(row)`: called once the cache holds the committed tokens and the loop goes
  on; `row` is the pass's row of the last committed node (the prompt's last row after
  the prefill, the accepted path's last node after a verification).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from refimpl.decoding.common import Stopwatch, clip, token_budget
from refimpl.sampling import SamplingSettings, probabilities, sample
from refimpl.trace import StepRecord
from refimpl.trees import TokenTree
from refimpl.verify import MATCH, PositionKeyed, verify_match, verify_rejection


@dataclass
class Proposal:
    """A proposer's answer: the tree, the draft distributions its children were drawn
    from (rejection sampling only; None per leaf) and the rows of each draft pass;
    optionally the two hooks of the module docstring."""
    tree: TokenTree
    q: list | None = None
    draft_rows: list[int] = field(default_factory=list)
    split_layer: int | None = None
    on_split: Callable[[np.ndarray], None] | None = None
    on_verdict: Callable[[object], dict] | None = None


class NodeLogits:
    """Logits of a pass's rows, computed when first needed. A visited node's row is
    computed in one head call together with its first-child chain (the proposer's
    best guess, likely visited next); a chain's rows therefore take one call."""

    def __init__(self, model, hidden: np.ndarray, tree: TokenTree):
        self.model, self.hidden, self.tree, self.rows = model, hidden, tree, {}

    def __getitem__(self, node: int) -> np.ndarray:
        if node not in self.rows:
            chain = [node]
            while children := self.tree.children(chain[-1]):
                chain.append(children[0])
            for row, logits in zip(chain, self.model.head(self.hidden[chain])):
                self.rows[row] = logits
        return self.rows[node]


class TargetRows:
    """The target's distributions per tree node, computed only for the nodes a walk visits."""

    def __init__(self, logits: NodeLogits, settings: SamplingSettings):
        self.logits, self.settings, self.rows = logits, settings, {}

    def __getitem__(self, node: int) -> np.ndarray:
        if node not in self.rows:
            self.rows[node] = probabilities(self.logits[node], self.settings)
        return self.rows[node]


def per_pass(rows: list[int]) -> int | list[int]:
    """A record's draft_tokens_per_pass: one int when every pass had as many rows."""
    if len(set(rows)) > 1:
        return list(rows)
    return rows[0] if rows else 0


def target_pass(target, tree: TokenTree, base: int, cache, proposal: Proposal) -> np.ndarray:
    """The target's residual stream after its last layer for every tree node (uncommitted),
    in two halves around `proposal.on_split` when the proposal asks for it."""
    tokens, positions, mask = tree.token_array(), tree.positions(base), tree.ancestor_mask()
    if proposal.split_layer is None:
        return target.hidden_states(tokens, positions, cache, mask, commit=False)
    target.check_tokens(tokens, positions)
    hidden = target.embed(tokens, positions)
    target.run_layers(hidden, positions, cache, mask, stop=proposal.split_layer)
    proposal.on_split(hidden.copy())
    target.run_layers(hidden, positions, cache, mask, start=proposal.split_layer)
    return hidden


def default_prefill_pass(target, prompt_ids, cache) -> np.ndarray:
    return target.hidden_states(prompt_ids, np.arange(len(prompt_ids)), cache)


def default_tree_pass(target, proposal: Proposal, base: int, cache) -> tuple[Proposal, np.ndarray]:
    return proposal, target_pass(target, proposal.tree, base, cache, proposal)


def speculative_decode(target, prompt_ids, settings: SamplingSettings, max_new_tokens: int, propose,
                       verify: str = MATCH, cache=None):
    """Yield (emitted, record, stop) per target pass. `propose(context, max_depth, max_nodes)`
    returns a Proposal for the committed tokens `context` (its last one pending).
    `cache` may be given to inspect the target's KV cache afterwards."""
    budget = token_budget(target, prompt_ids, max_new_tokens, settings)
    if budget.tokens == 0:
        return
    cache = target.new_cache() if cache is None else cache
    clock = Stopwatch()
    rng = PositionKeyed(settings.seed)
    n_prompt = len(prompt_ids)
    prefill_pass = getattr(propose, "prefill_pass", default_prefill_pass)
    tree_pass = getattr(propose, "tree_pass", default_tree_pass)
    accepted = getattr(propose, "accepted", None)
    hidden = prefill_pass(target, prompt_ids, cache)
    token = sample(target.head(hidden[-1:])[0], settings, n_prompt)
    emitted, stop = clip([token], 0, budget)
    if accepted is not None and not stop:
        accepted(n_prompt - 1)
    yield emitted, StepRecord(context=0, target_tokens=n_prompt, draft_passes=0, draft_tokens_per_pass=0,
                              proposed=0, accepted=0, emitted=len(emitted), wall_s=clock.lap(),
                              prefill=True), stop
    context, produced = list(prompt_ids) + [token], 1
    while not stop:
        base = cache.length
        proposal, hidden = tree_pass(target, propose(context, budget.tokens - produced - 1, cache.capacity - base),
                                     base, cache)
        tree = proposal.tree
        logits = NodeLogits(target, hidden, tree)
        if verify == MATCH:
            verdict = verify_match(tree, logits, settings, base)
        else:
            verdict = verify_rejection(tree, TargetRows(logits, settings), proposal.q, rng, base)
        cache.keep(verdict.path)
        new = [tree.tokens[i] for i in verdict.path[1:]] + [verdict.token]
        emitted, stop = clip(new, produced, budget)
        rows = proposal.draft_rows
        record = StepRecord(context=base, target_tokens=len(tree), draft_passes=len(rows),
                            draft_tokens_per_pass=per_pass(rows), proposed=len(tree) - 1,
                            accepted=len(verdict.path) - 1, emitted=len(emitted))
        if proposal.on_verdict is not None:
            record = replace(record, **proposal.on_verdict(verdict))
        record.wall_s = clock.lap()
        yield emitted, record, stop
        if accepted is not None and not stop:
            accepted(verdict.path[-1])
        produced += len(new)
        context += new
