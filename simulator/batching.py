"""Static batching: B prompts decode in lock step, one batched step per step index.

Step i of a batch runs record i of every prompt that still has one; the batch
shrinks as prompts finish. A batched pass is as wide as its widest member
(padding): the longest context, the most query rows, the most draft passes.
A Mirror-SD batched step reuses its precomputed windows only if every member's
correction was covered; one miss puts a fresh rollout on the critical path.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice, zip_longest

from refimpl.trace import StepRecord


@dataclass(slots=True)
class Step:
    """One batched decoding step: what each device has to compute."""

    batch: int
    context: int
    rows: int                       # query rows in the target pass
    draft_rows: tuple[int, ...]     # query rows of each draft pass (per branch)
    branches: int                   # Mirror-SD rollouts per sequence
    coverage_hit: bool
    proposed: int
    accepted: int
    emitted: int
    prefill: bool


def _single(record: StepRecord) -> Step:
    return Step(1, record.context, record.target_tokens, tuple(record.draft_token_list()),
                record.branches or 1, record.coverage_hit is not False, record.proposed,
                record.accepted, record.emitted, record.prefill)


def _merge(records: list[StepRecord]) -> Step:
    passes = [r.draft_token_list() for r in records]
    draft_rows = tuple(max(rows) for rows in zip_longest(*passes, fillvalue=0))
    return Step(len(records), max(r.context for r in records), max(r.target_tokens for r in records),
                draft_rows, max(r.branches or 1 for r in records),
                all(r.coverage_hit is not False for r in records),
                sum(r.proposed for r in records), sum(r.accepted for r in records),
                sum(r.emitted for r in records), any(r.prefill for r in records))


def batch_steps(prompts, batch: int):
    """Batched steps of all prompts (an iterable of per-prompt record lists), batches taken in
    order; a generator that holds one batch of prompts at a time."""
    prompts = iter(prompts)
    if batch == 1:
        for records in prompts:
            yield from map(_single, records)
        return
    while group := list(islice(prompts, batch)):
        for index in range(max(len(records) for records in group)):
            yield _merge([records[index] for records in group if index < len(records)])
