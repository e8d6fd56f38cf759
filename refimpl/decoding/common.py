"""What every decoding method shares: stop rules, step records, the driver."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from refimpl.errors import InputError
from refimpl.tokenizer import BOS_ID, EOS_ID
from refimpl.trace import StepRecord

STOP_IDS = (BOS_ID, EOS_ID)


@dataclass(frozen=True)
class Budget:
    """How many tokens a run may generate, why it ends when they are all out, and the ids
    that end it early (none with ignore_eos)."""
    tokens: int
    reason: str                       # "max_new_tokens" or "seq_len"
    stops: tuple[int, ...] = STOP_IDS
    eos_ids: tuple[int, ...] = (EOS_ID,)  # the stops reported as "eos" (the others as "bos")


def token_budget(model, prompt_ids, max_new_tokens: int, settings=None) -> Budget:
    """max_new_tokens, capped where the sequence ends, as llama2.c's run.c does: the token
    predicted at the last position (seq_len - 1) is emitted too (it needs no cache slot),
    so a prompt of n tokens leaves room for seq_len - n + 1. `settings.ignore_eos` (when
    given and set) turns BOS and EOS into ordinary tokens."""
    seq_len = model.config.seq_len
    if len(prompt_ids) == 0:
        raise InputError("the prompt is empty (give at least BOS)")
    if len(prompt_ids) > seq_len:
        raise InputError(f"the prompt has {len(prompt_ids)} tokens, but the model's sequence length is {seq_len}")
    if max_new_tokens < 0:
        raise InputError(f"--max-new-tokens {max_new_tokens}: must be >= 0")
    room = seq_len - len(prompt_ids) + 1
    config = model.config
    stops = () if settings is not None and settings.ignore_eos else config.stop_ids
    if max_new_tokens <= room:
        return Budget(max_new_tokens, "max_new_tokens", stops, config.eos_ids)
    return Budget(room, "seq_len", stops, config.eos_ids)


def clip(candidates: list[int], produced: int, budget: Budget) -> tuple[list[int], str | None]:
    """The tokens of `candidates` to emit, and why generation stops after them (or None):
    "eos"/"bos" at a stop id (not emitted), else the budget's reason when it is spent."""
    kept = []
    for token in candidates:
        if token in budget.stops:
            return kept, "eos" if token in budget.eos_ids else "bos"
        kept.append(token)
        if produced + len(kept) >= budget.tokens:
            return kept, budget.reason
    return kept, None


class Stopwatch:
    """Seconds since the last `lap()`; used for each record's wall_s."""

    def __init__(self):
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


@dataclass
class Generation:
    """The outcome of a whole decoding run."""
    prompt_ids: list[int]
    tokens: list[int] = field(default_factory=list)
    records: list[StepRecord] = field(default_factory=list)
    stop_reason: str = "max_new_tokens"   # "max_new_tokens", "seq_len", "eos" or "bos"
    seconds: float = 0.0

    @property
    def target_calls(self) -> int:
        return len(self.records)

    @property
    def draft_calls(self) -> int:
        return sum(r.draft_passes for r in self.records)


def generate(steps, prompt_ids, on_tokens=None) -> Generation:
    """Drive a method's step generator to the end, collecting tokens and records.

    on_tokens(list_of_ids) is called as tokens are committed (for streaming)."""
    result = Generation(prompt_ids=list(prompt_ids))
    start = time.perf_counter()
    for emitted, record, stop in steps:
        result.tokens.extend(emitted)
        result.records.append(record)
        if on_tokens is not None and emitted:
            on_tokens(emitted)
        if stop:
            result.stop_reason = stop
    result.seconds = time.perf_counter() - start
    return result
