"""Mirror speculative decoding (`--method mirror`; mirror-sd.md §3).

One step, for a window of the pending token w0 and the draft's chain w1..wg
(g <= gamma), in the shared loop (refimpl.decoding.speculative):

1. the target runs layers 1..ℓe over the window; at that split the *early-exit
   proxy* applies the target's own final norm and classifier to every window row
   r and keeps its top-κ tokens with their log-probabilities (the token channel:
   candidates for the token after w_r);
2. while the target runs layers ℓe+1..N (on a second Python thread with
   `overlap`), the draft rolls out a *branch* for each candidate v of each row r:
   the context extended by w1..wr and v, continued greedily for gamma tokens.
   The branches hang off the window chain in one `TokenTree`, and each draft
   step is one tree-masked pass over it (the window's rows and every branch;
   logits only for the branches' newest rows). `max_branches` keeps the
   candidates of highest early-exit log-probability. With speculative streams
   trained for the draft (`draft_streams`, refimpl.streams) each pass emits
   1 + len(streams) tokens per branch (the main stream's top-1, then each
   stream's), so a rollout takes ceil(gamma / (1 + len(streams))) passes; stream
   rows ride along in the pass and never enter the draft's cache;
3. exact-match verification against the target's own tokens (greedy or
   position-keyed sampling) gives the accepted length A and the target's token c
   after it (correction, or bonus at A = g). If the branch (A, c) was rolled out,
   it is the next window (reuse); otherwise the draft rolls out a fresh chain
   from c (fallback).

Committed tokens are always the target's own, so the output is that of `ar`
whatever the proxy, the draft or the schedule (DESIGN.md, invariant 2).

The draft keeps its committed context in its KV cache, one step behind the
target: before a step it holds every token before the window's root; the rows
of the window that its last pass wrote stay in place and are committed as
they are accepted (`DraftState.sync`).

With `overlap`, numba's threading layer must be thread-safe (omp or tbb; the
workqueue layer aborts the process on concurrent use) and at least two threads
must be available: each Python thread, the target's and the draft's, uses one
numba thread (the count is thread-local), so the two share two cores without
contending; the caller's count is restored when the generation ends. On a machine shared with other work, one numba thread
per core is also much faster than two contending ones (see the benchmark).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from refimpl.decoding.common import STOP_IDS, token_budget
from refimpl.decoding.speculative import Proposal, speculative_decode
from refimpl.errors import InputError
from refimpl.model import causal_mask
from refimpl.sampling import SamplingSettings
from refimpl.streams import run_with_streams
from refimpl.trees import TokenTree
from refimpl.verify import MATCH, top_children


@dataclass
class Candidates:
    """The early-exit top-κ of one window row: ids (most likely first) and log-probabilities."""
    ids: list[int]
    logprobs: list[float]


def early_exit(target, hidden: np.ndarray, kappa: int) -> list[Candidates]:
    """Top-κ of the proxy distribution Softmax(W · norm(h^(ℓe))) for every row of `hidden`."""
    logits = target.head(hidden).astype(np.float64)
    out = []
    for row in logits:
        ids = top_children(row, kappa)
        shifted = row - row.max()
        log_total = np.log(np.exp(shifted).sum())
        out.append(Candidates(ids, [float(shifted[i] - log_total) for i in ids]))
    return out


@dataclass
class Branch:
    """A rollout for the hypothesis "the target puts `tokens[0]` after window row `row`"."""
    row: int
    logprob: float
    tokens: list[int]           # the candidate, then the draft's continuation
    node: int = 0               # its newest node in the rollout tree


def select_branches(candidates: list[Candidates], limit: int) -> list[Branch]:
    """Every (row, candidate) pair, the `limit` of highest early-exit log-prob kept
    (ties: lower row, then higher rank), in row order."""
    pairs = [(-lp, r, rank, v) for r, c in enumerate(candidates)
             for rank, (v, lp) in enumerate(zip(c.ids, c.logprobs))]
    kept = sorted(pairs)[:limit]
    kept.sort(key=lambda p: (p[1], p[2]))
    return [Branch(row=r, logprob=-neg, tokens=[v]) for neg, r, _, v in kept]


class DraftState:
    """The draft model and its KV cache: `tokens` committed, and the tokens of the rows
    its last pass left in place after them (`pending`), which `sync` commits for free.

    With `streams` (refimpl.streams, trained for the draft) one draft pass emits
    1 + len(streams) tokens after a row: the main stream's and each stream's top-1
    (`per_pass`); otherwise one."""

    def __init__(self, model, streams=None):
        self.model, self.streams = model, streams
        self.cache = model.new_cache()
        self.tokens: list[int] = []
        self.pending: list[int] = []
        self.per_pass = 1 + (streams.gamma if streams is not None else 0)

    def sync(self, prefix: list[int]) -> int:
        """Make the committed tokens exactly `prefix`; returns the rows run to get there."""
        keep = 0
        limit = min(len(self.tokens), len(prefix))
        while keep < limit and self.tokens[keep] == prefix[keep]:
            keep += 1
        if keep < len(self.tokens):
            self.cache.truncate(keep)
            del self.tokens[keep:]
            self.pending = []
        reused = 0
        while (reused < len(self.pending) and keep + reused < len(prefix)
               and self.pending[reused] == prefix[keep + reused]):
            reused += 1
        self.cache.commit(reused)
        self.tokens += self.pending[:reused]
        self.pending = []
        rest = prefix[len(self.tokens):]
        if rest:
            self.model.hidden_states(rest, np.arange(len(self.tokens), len(prefix)), self.cache)
            self.tokens += rest
        return len(rest)

    def predict(self, tokens, positions, mask, nodes: list[int], commit: bool) -> list[list[int]]:
        """One draft pass over `tokens` (rows after the committed cache, ancestor `mask`,
        None: causal); for each row in `nodes`, the tokens it predicts next: the main
        stream's top-1, then with streams each stream's (stream j: j + 1 tokens further).
        Stream rows go after the pass's rows in the cache, never committed; where they
        would not fit, the pass runs without them."""
        model, streams = self.model, self.streams
        tokens = np.asarray(tokens, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        if streams is None or self.cache.length + len(tokens) + len(nodes) * streams.gamma > self.cache.capacity:
            hidden = model.hidden_states(tokens, positions, self.cache, mask, commit)
            return [[top_children(row, 1)[0]] for row in model.head(hidden[nodes])]
        model.check_tokens(tokens, positions)
        hidden = model.embed(tokens, positions)
        mask = causal_mask(len(tokens)) if mask is None else mask
        model.run_layers(hidden, positions, self.cache, mask, stop=streams.split(model))
        hidden, stream_rows = run_with_streams(model, streams, hidden, positions, mask, self.cache, nodes)
        if commit:
            self.cache.commit(len(tokens))
        return [[top_children(row, 1)[0]] + streams.top_tokens(model, rows)
                for row, rows in zip(model.head(hidden[nodes]), stream_rows)]

    def chain(self, root: int, depth: int) -> list[int]:
        """The draft's chain of `depth` tokens after `root` (at position len(tokens)): one pass
        per `per_pass` tokens, each over the tokens the last one emitted; the rows stay in
        place, uncommitted."""
        start = len(self.tokens)
        chain, fed = [root], 0
        while len(chain) - 1 < depth:
            new = chain[fed:]
            chain += self.predict(new, np.arange(start + fed, start + len(chain)), None, [len(new) - 1],
                                  commit=True)[0]
            fed += len(new)
        self.cache.truncate(start)
        self.pending = chain[:fed]
        return chain[:depth + 1]

    def rollout(self, window: list[int], branches: list[Branch], depth: int) -> list[int]:
        """Continue every branch by `depth` draft tokens, one tree-masked pass over the
        window chain and all branches per `per_pass` tokens; returns the rows of each pass."""
        base = len(self.tokens)
        tree = TokenTree.chain(window[0], window[1:])
        for branch in branches:
            branch.node = tree.add(branch.row, branch.tokens[0])
        rows = []
        while branches and len(branches[0].tokens) <= depth:
            rows.append(len(tree))
            emitted = self.predict(tree.token_array(), tree.positions(base), tree.ancestor_mask(),
                                   [b.node for b in branches], commit=False)
            for branch, tokens in zip(branches, emitted):
                for token in tokens[:depth + 1 - len(branch.tokens)]:
                    branch.tokens.append(token)
                    branch.node = tree.add(branch.node, token)
        if rows:
            self.pending = list(window)
        return rows


@dataclass
class Clock:
    """Seconds of each part of a step (the trace's wall_parts)."""
    parts: dict = field(default_factory=dict)

    def add(self, part: str, seconds: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + seconds


class MirrorProposer:
    """The proposer of the shared loop: the window now, branches during the pass, the
    next window after the verdict."""

    def __init__(self, target, draft, gamma: int, exit_layer: int, kappa: int, max_branches: int | None,
                 overlap: bool, draft_streams=None):
        self.target, self.draft = target, DraftState(draft, draft_streams)
        self.gamma, self.exit_layer, self.kappa = gamma, exit_layer, kappa
        self.max_branches = kappa * (gamma + 1) if max_branches is None else max_branches
        self.limit = min(target.config.seq_len, draft.config.seq_len)
        self.overlap = overlap
        self.worker = ThreadPoolExecutor(1, initializer=one_numba_thread) if overlap else None
        self.next: list[int] | None = None      # the next window: its root, then the draft's chain
        self.clock = Clock()
        self.mark = 0.0

    # -- the hooks of the shared loop -------------------------------------------------------

    def __call__(self, context: list[int], max_depth: int, max_nodes: int) -> Proposal:
        if self.next is None or self.next[0] != context[-1]:
            self.fresh(context)
        depth = max(0, min(len(self.next) - 1, max_depth, max_nodes - 1))
        self.window, self.context = self.next[:depth + 1], context
        self.rollout = None
        self.mark = time.perf_counter()
        return Proposal(TokenTree.chain(self.window[0], self.window[1:]), split_layer=self.exit_layer,
                        on_split=self.on_split, on_verdict=self.on_verdict)

    def on_split(self, hidden: np.ndarray) -> None:
        """Rendezvous 1: the early-exit candidates go to the draft, which starts its rollouts."""
        self.candidates = early_exit(self.target, hidden, self.kappa)
        self.branches = self.fitting(select_branches(self.candidates, self.max_branches))
        now = time.perf_counter()
        self.clock.add("prefix", now - self.mark)
        if self.overlap:
            self.rollout = self.worker.submit(self.timed_rollout)
        else:
            self.rollout_rows = self.timed_rollout()
        self.mark = time.perf_counter()

    def on_verdict(self, verdict) -> dict:
        """Rendezvous 2: (A, c) to the draft; reuse the branch (A, c) or roll out afresh."""
        now = time.perf_counter()
        self.clock.add("suffix", now - self.mark)
        if self.overlap:
            rows = self.rollout.result()
            self.clock.add("wait", time.perf_counter() - now)
        else:
            rows = self.rollout_rows
        accepted, token = len(verdict.path) - 1, verdict.token
        context = self.context + self.window[1:accepted + 1] + [token]
        hit = token in self.candidates[accepted].ids
        branch = next((b for b in self.branches if b.row == accepted and b.tokens[0] == token), None)
        if branch is not None:
            self.next = branch.tokens
        elif token not in STOP_IDS:
            self.fresh(context)
        parts, self.clock = self.clock.parts, Clock()
        return dict(draft_passes=len(rows), draft_tokens_per_pass=self.draft.per_pass if rows else 0,
                    branches=len(self.branches) or None, coverage_hit=branch is not None, exit_hit=hit,
                    wall_parts={k: round(v, 7) for k, v in parts.items()})

    # -- helpers ----------------------------------------------------------------------------

    def fresh(self, context: list[int]) -> None:
        """The next window from the draft's own chain after `context` (the fallback); the
        root alone where the draft has no room left."""
        started = time.perf_counter()
        depth = self.depth_at(len(context) - 1)
        if depth:
            self.draft.sync(context[:-1])
            self.next = self.draft.chain(context[-1], depth)
        else:
            self.next = context[-1:]
        self.clock.add("fallback", time.perf_counter() - started)

    def timed_rollout(self) -> list[int]:
        if not self.branches:
            return []
        started = time.perf_counter()
        self.draft.sync(self.context[:-1])
        rows = self.draft.rollout(self.window, self.branches, self.gamma)
        self.clock.add("draft", time.perf_counter() - started)
        return rows

    def depth_at(self, position: int) -> int:
        """gamma, or less so that a chain from `position` stays inside both models."""
        return max(0, min(self.gamma, self.limit - 1 - position))

    def fitting(self, branches: list[Branch]) -> list[Branch]:
        """The branches whose rollout stays inside the draft's positions and cache, best kept."""
        base = len(self.context) - 1
        inside = [b for b in branches if base + b.row + self.gamma < self.limit]
        per_branch = self.gamma + self.draft.per_pass - 1     # its rows and stream rows in the last pass
        room = (self.draft.cache.capacity - base - len(self.window)) // max(per_branch, 1)
        if len(inside) > room:
            keep = sorted(range(len(inside)), key=lambda i: -inside[i].logprob)[:max(room, 0)]
            inside = [inside[i] for i in sorted(keep)]
        return inside

    def close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()


def one_numba_thread() -> None:
    """Initializer of the draft's thread: one numba thread (the count is per Python thread)."""
    set_numba_threads(1)


def set_numba_threads(n: int) -> int:
    """Set this Python thread's numba thread count; returns the previous one."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(n)
    return before


def check_overlap() -> None:
    """Raise InputError unless two Python threads may run numba kernels at once here."""
    import numba

    if numba.get_num_threads() < 2:
        raise InputError("--overlap needs at least 2 threads (the draft runs on a second one); "
                         f"{numba.get_num_threads()} available")
    layer = numba.threading_layer()
    if layer not in ("omp", "tbb"):
        raise InputError(f"--overlap needs a thread-safe numba threading layer (omp or tbb), not {layer!r}; "
                         "set NUMBA_THREADING_LAYER=omp")


def check_params(target, draft, prompt_ids, gamma: int, exit_layer: int, kappa: int,
                 max_branches: int | None, draft_streams=None) -> None:
    """Raise InputError for a draft or setting mirror cannot work with."""
    n_layers, vocab = target.config.n_layers, target.config.vocab_size
    if draft is None:
        raise InputError("--method mirror needs a draft: --draft PATH or --draft-layers K")
    if draft.config.vocab_size != vocab:
        raise InputError(f"--draft: the draft's vocabulary of {draft.config.vocab_size} tokens differs from "
                         f"the target's {vocab}")
    if gamma < 1:
        raise InputError(f"--gamma {gamma}: must be >= 1")
    if gamma >= target.config.seq_len:   # the branches' rows grow with gamma: refuse before building any
        raise InputError(f"--gamma {gamma}: must be below the model's sequence length {target.config.seq_len}")
    if not 1 <= exit_layer <= n_layers - 1:
        raise InputError(f"--exit-layer {exit_layer}: must be between 1 and {n_layers - 1} "
                         f"(the target has {n_layers} layers)")
    if not 1 <= kappa <= vocab:
        raise InputError(f"--kappa {kappa}: must be between 1 and the vocabulary size {vocab}")
    if max_branches is not None and max_branches < 0:
        raise InputError(f"--max-branches {max_branches}: must be >= 0")
    if draft_streams is not None:
        draft_streams.check_for(draft, "--draft-streams")
    token_budget(target, prompt_ids, 0)


def mirror(model, prompt_ids, settings: SamplingSettings, max_new_tokens: int, draft=None, gamma: int = 4,
           exit_layer: int | None = None, kappa: int = 8, max_branches: int | None = None,
           overlap: bool = False, draft_streams=None, cache=None):
    """Mirror speculative decoding; the step generator of refimpl.decoding. exit_layer
    defaults to N/2 (the paper's), max_branches to all κ·(γ+1); draft_streams
    (refimpl.streams.Streams trained for the draft) make each draft pass emit several tokens."""
    exit_layer = max(1, model.config.n_layers // 2) if exit_layer is None else exit_layer
    check_params(model, draft, prompt_ids, gamma, exit_layer, kappa, max_branches, draft_streams)
    if overlap:
        check_overlap()
    token_budget(model, prompt_ids, max_new_tokens)
    proposer = MirrorProposer(model, draft, gamma, exit_layer, kappa, max_branches, overlap, draft_streams)
    return _closing(speculative_decode(model, prompt_ids, settings, max_new_tokens, proposer, MATCH, cache),
                    proposer)


def _closing(steps, proposer):
    """The steps, on one numba thread in the caller's thread with overlap; then clean up."""
    threads = set_numba_threads(1) if proposer.overlap else None
    try:
        yield from steps
    finally:
        proposer.close()
        if threads is not None:
            set_numba_threads(threads)


__all__ = ["mirror", "early_exit", "select_branches", "DraftState", "MirrorProposer"]
