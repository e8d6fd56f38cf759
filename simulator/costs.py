"""How long each pass takes: hwmodels' latency of one forward pass, memoised, or given constants.

A cost model answers five questions (seconds):

- ``target(rows, context, batch, part)``: a target pass, ``part`` "full", or
  Mirror-SD's "prefix" (layers 1..ℓe, then the LM head for the early exit) and
  "suffix" (layers ℓe+1..N and the LM head);
- ``draft(rows, context, batch)``: one draft pass of `rows` query rows per sequence;
- ``rollout(draft_rows, context, batch, branches)``: the draft passes of one step, one
  after another; Mirror-SD's branches share the committed prefix (its KV cache is
  read once per sequence, as in tree attention), so a pass has rows x branches rows;
- ``heads(kind, rows, context, batch)``: one Medusa-heads / EAGLE-draft / Hydra-head pass on the
  target's devices (`hwmodels.steps`: Medusa's heads each have their own classifier; EAGLE's draft
  pass is a fusing layer, one decoder block and the classifier; every pass pays a launch overhead);
  with `config.drafting` (refimpl's Medusa), `rows` is a record's K head rows, the K heads on one
  hidden row sharing the target's classifier, shortlisted;
- ``stream(rows, context, batch, alongside)``: Speculative Streaming's stream rows as refimpl runs
  them (`config.drafting`): through the last N_s layers and the draft classifier, in a pass of
  their own (alongside 0) or riding in a verification pass of `alongside` rows (`hwmodels.steps`);
- ``host(method, step)``: the host work a speculative step adds over an autoregressive one (building
  candidates and the tree mask, sampling and verifying, compacting the cache; `hwmodels.steps`);
- ``early_exit_message(step)`` / ``verdict_message(step)``: Mirror-SD's two rendezvous;
- ``side_by_side(step, branches)``: Mirror-SD's target suffix and draft rollout when they run at
  once on two groups whose memory (or cores) are shared (`SimConfig.memory_contention`,
  `compute_contention`; `shared_bus`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .batching import Step
from .config import SimConfig, check_tensor_parallel, default_link
from .errors import InputError

#: Token channel payload per candidate: an int32 id and a bf16 log-prob (mirror-sd.md §3.1, §13).
CANDIDATE_BYTES = 4 + 2
#: Verdict payload per sequence: accepted length A and correction token c, int32 each.
VERDICT_BYTES = 4 + 4


class HardwareCosts:
    """Per-pass latencies of the configured models on the configured devices, from hwmodels."""

    def __init__(self, config: SimConfig):
        import hwmodels

        self._hw = hwmodels
        self.config = config
        self.target_shape = hwmodels.get_model(config.target_model)
        self.draft_shape = hwmodels.get_model(config.draft_model)
        self.target_device = hwmodels.get_device(config.target.device)
        self.draft_device = hwmodels.get_device(config.draft.device)
        self.link = hwmodels.get_link(config.link or default_link(self.target_device, self.draft_device))
        self.n_layers = self.target_shape.n_layers
        self.exit_layer = config.exit_layer if config.exit_layer is not None else self.n_layers // 2
        if not 1 <= self.exit_layer < self.n_layers:
            raise InputError(f"--exit-layer: {self.exit_layer} is outside model {self.target_shape.name} "
                             f"(need 1 <= exit layer <= {self.n_layers - 1})")
        self.kappa = config.kappa_used
        if self.kappa > self.target_shape.vocab_size:
            raise InputError(f"--kappa: {self.kappa} exceeds the vocabulary of {self.target_shape.name} "
                             f"({self.target_shape.vocab_size} tokens)")
        self.draft_dtype = config.draft_dtype or config.dtype
        self.drafting = config.drafting
        self._check_fit()
        self._cache: dict[tuple, float] = {}

    def _check_fit(self) -> None:
        """The devices support the dtypes and hold the weights (hwmodels' checks, one-line errors)."""
        groups = ((self.target_shape, self.target_device, self.config.target, self.config.dtype, "target"),
                  (self.draft_shape, self.draft_device, self.config.draft, self.draft_dtype, "draft"))
        check_tensor_parallel(self.target_shape, self.config.target.tp, "--tp")
        for shape, device, group, dtype, role in groups:
            if not device.supports(dtype):
                raise InputError(f"--{role}-hw: device {device.key} does not support {dtype} "
                                 f"(supported: {', '.join(sorted(device.peak_flops))})")
            try:
                device.check_fits(shape, dtype, tp=group.tp, batch=self.config.batch)
            except self._hw.InputError as exc:
                raise InputError(f"--{role}-hw: {exc}") from None

    def _memo(self, key: tuple, compute) -> float:
        seconds = self._cache.get(key)
        if seconds is None:
            seconds = self._cache[key] = compute()
        return seconds

    def _forward(self, shape, device, group, dtype: str, rows: int, context: int, sequences: int,
                 memory: bool = False, **kwargs) -> float:
        """hwmodels' latency of one pass, the sequences shared evenly by the group's replicas
        (with `memory`, only the memory-bound part of it)."""
        per_replica = math.ceil(sequences / group.replicas)
        latency = self._hw.forward_latency(shape, device, rows, context, batch=per_replica, tp=group.tp,
                                           dtype=dtype, **kwargs)
        return latency.breakdown["memory"] if memory else latency.seconds

    def target(self, rows: int, context: int, batch: int, part: str = "full", memory: bool = False) -> float:
        layers = {"full": None, "prefix": (0, self.exit_layer), "suffix": (self.exit_layer, self.n_layers)}
        return self._memo(("target", part, rows, context, batch, memory), lambda: self._forward(
            self.target_shape, self.target_device, self.config.target, self.config.dtype, rows, context, batch,
            memory, layers=layers[part], classifier=True))

    def draft(self, rows: int, context: int, batch: int, memory: bool = False) -> float:
        return self._memo(("draft", rows, context, batch, memory), lambda: self._forward(
            self.draft_shape, self.draft_device, self.config.draft, self.draft_dtype, rows, context, batch,
            memory, sharding=self.config.draft_sharding))

    def side_by_side(self, step: Step, branches: int) -> tuple[float, float]:
        """(target suffix, draft rollout) seconds when both start at once (Mirror-SD's overlap):
        on independent devices their own times; with `memory_contention` > 1, `shared_bus`."""
        suffix = self.target(step.rows, step.context, step.batch, part="suffix")
        rollout = self.rollout(step.draft_rows, step.context, step.batch, branches, window=step.rows)
        contention, compute = self.config.memory_contention, self.config.compute_contention
        if (contention == 1.0 and compute == 1.0) or self.config.draft_on_target:
            return suffix, rollout
        suffix_memory = self.target(step.rows, step.context, step.batch, part="suffix", memory=True)
        rollout_memory = self.rollout(step.draft_rows, step.context, step.batch, branches, window=step.rows,
                                      memory=True)
        return shared_bus(suffix, suffix_memory, rollout, rollout_memory, contention, compute)

    def rollout(self, draft_rows: tuple[int, ...], context: int, batch: int, branches: int = 1,
                window: int = 0, memory: bool = False) -> float:
        """The draft passes of one step. Batched branches (the paper's layout): pass k runs
        draft_rows[k] rows for each branch. With `config.rollout` "tree" and the `window` of
        target rows the branches hang off (refimpl's Mirror-SD): pass k re-runs the window and
        every branch's rows so far, and only the branches' newest rows reach the classifier."""
        key = ("rollout", draft_rows, context, batch, branches, window, memory)
        if self.config.rollout != "tree" or not window:
            return self._memo(key, lambda: sum(self.draft(rows * branches, context, batch, memory)
                                               for rows in draft_rows))

        def tree() -> float:
            total, grown = 0.0, branches
            for rows in draft_rows:
                total += self._draft_tree_pass(window + grown, branches, context, batch, memory)
                grown += branches * rows
            return total
        return self._memo(key, tree)

    def _draft_tree_pass(self, rows: int, logit_rows: int, context: int, batch: int, memory: bool) -> float:
        """A draft pass of `rows` rows through every block, `logit_rows` of them through the classifier
        (the classifier's share: the last block with it less the last block without)."""
        def forward(n: int, **kwargs) -> float:
            return self._forward(self.draft_shape, self.draft_device, self.config.draft, self.draft_dtype, n,
                                 context, batch, memory, sharding=self.config.draft_sharding, **kwargs)
        last = (self.draft_shape.n_layers - 1, self.draft_shape.n_layers)
        head = forward(logit_rows, layers=last, classifier=True) - forward(logit_rows, layers=last, classifier=False)
        return forward(rows, classifier=False) + head

    def heads(self, kind: str, rows: int, context: int, batch: int) -> float:
        """One drafting pass from the target's hidden states: Medusa heads, an EAGLE draft pass, a Hydra head."""
        group = self.config.target
        per_replica = math.ceil(batch / group.replicas)
        drafting = self.drafting
        if kind == "medusa" and drafting is not None and drafting.method == "medusa":
            return self._memo(("heads", kind, rows, context, batch), lambda: self._hw.head_pass_seconds(
                kind, self.target_shape, self.target_device, 1, context, batch=per_replica, tp=group.tp,
                dtype=self.config.dtype, heads=rows, vocab=drafting.vocab, shared_classifier=True))
        return self._memo(("heads", kind, rows, context, batch), lambda: self._hw.head_pass_seconds(
            kind, self.target_shape, self.target_device, rows, context, batch=per_replica,
            tp=group.tp, dtype=self.config.dtype))

    def stream(self, rows: int, context: int, batch: int, alongside: int = 0) -> float:
        """Speculative Streaming's stream rows of one step, as `config.drafting` says refimpl runs them."""
        drafting, group = self.drafting, self.config.target
        if drafting is None or drafting.method != "ss":
            raise InputError("ss: pricing stream rows needs the traces' drafting (stream layers, draft vocabulary)")
        logit_rows = min(rows, drafting.gamma) if alongside else rows
        return self._memo(("stream", rows, context, batch, alongside), lambda: self._hw.stream_pass_seconds(
            self.target_shape, self.target_device, rows, context, stream_layers=drafting.stream_layers,
            vocab=drafting.vocab, logit_rows=logit_rows, alongside=alongside,
            batch=math.ceil(batch / group.replicas), tp=group.tp, dtype=self.config.dtype))

    def host(self, method: str, step: Step) -> float:
        """Host work of one step of `method` beyond an autoregressive step's (0 for ar)."""
        group = self.config.target
        return self._memo(("host", method, step.rows, step.batch), lambda: self._hw.host_seconds(
            method, self.target_device, step.rows, math.ceil(step.batch / group.replicas),
            vocab=self.target_shape.vocab_size))

    def _message(self, nbytes: int) -> float:
        return self._memo(("link", nbytes), lambda: self._hw.link_latency(self.link, nbytes))

    def early_exit_message(self, step: Step) -> float:
        """Rendezvous 1: top-κ ids and log-probs of every window position, every sequence."""
        return self._message(step.batch * step.rows * self.kappa * CANDIDATE_BYTES)

    def verdict_message(self, step: Step) -> float:
        """Rendezvous 2: (A, c) of every sequence."""
        return self._message(step.batch * VERDICT_BYTES)


def shared_bus(a: float, a_memory: float, b: float, b_memory: float, contention: float,
               compute_contention: float = 1.0) -> tuple[float, float]:
    """Seconds of two jobs started together on two cores that share a memory bus.

    Job a takes `a` seconds alone, `a_memory` of them bound by memory (likewise b). While
    both run, the memory-bound part of each runs `contention` times slower and the rest
    `compute_contention` times slower (1: each has a core of its own), both parts spread
    evenly over the job (a fluid model of the shared bus and cores); once one ends, the
    other runs alone."""
    def rate(total: float, memory: float) -> float:
        return total / ((total - memory) * compute_contention + memory * contention) if total else 1.0
    rate_a, rate_b = rate(a, a_memory), rate(b, b_memory)
    end_a, end_b = a / rate_a, b / rate_b
    if end_a <= end_b:
        return end_a, end_a + (b - end_a * rate_b)
    return end_b + (a - end_b * rate_a), end_b


@dataclass(frozen=True)
class ConstantCosts:
    """Fixed per-pass times, whatever the rows, context or batch: the paper's latency law by hand.

    A full target pass costs `target_prefix + target_suffix`; each rendezvous costs `rendezvous`;
    a speculative step's host work costs `host_step`.
    """

    target_prefix: float
    target_suffix: float
    draft_pass: float
    rendezvous: float = 0.0
    heads_pass: float = 0.0
    host_step: float = 0.0
    drafting = None      # the papers' layouts (see SimConfig.drafting)

    def target(self, rows: int, context: int, batch: int, part: str = "full") -> float:
        if part == "prefix":
            return self.target_prefix
        if part == "suffix":
            return self.target_suffix
        return self.target_prefix + self.target_suffix

    def draft(self, rows: int, context: int, batch: int) -> float:
        return self.draft_pass

    def rollout(self, draft_rows: tuple[int, ...], context: int, batch: int, branches: int = 1,
                window: int = 0) -> float:
        return len(draft_rows) * self.draft_pass

    def side_by_side(self, step: Step, branches: int) -> tuple[float, float]:
        return self.target_suffix, self.rollout(step.draft_rows, step.context, step.batch, branches)

    def heads(self, kind: str, rows: int, context: int, batch: int) -> float:
        return self.heads_pass

    def host(self, method: str, step: Step) -> float:
        return 0.0 if method == "ar" else self.host_step

    def early_exit_message(self, step: Step) -> float:
        return self.rendezvous

    def verdict_message(self, step: Step) -> float:
        return self.rendezvous
