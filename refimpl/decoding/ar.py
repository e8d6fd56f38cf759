"""Autoregressive decoding: one target pass per token. The baseline of every test."""
from __future__ import annotations

import numpy as np

from refimpl.decoding.common import Stopwatch, clip, token_budget
from refimpl.sampling import SamplingSettings, sample
from refimpl.trace import StepRecord


def autoregressive(model, prompt_ids, settings: SamplingSettings, max_new_tokens: int):
    """Yield ([token], record, stop) per target pass: the prefill, then one pass per token."""
    budget = token_budget(model, prompt_ids, max_new_tokens, settings)
    if budget.tokens == 0:
        return
    cache = model.new_cache()
    clock = Stopwatch()
    n_prompt = len(prompt_ids)
    logits = model.forward(prompt_ids, np.arange(n_prompt), cache)[-1]
    position, produced, context = n_prompt, 0, 0
    while True:
        token = sample(logits, settings, position)
        emitted, stop = clip([token], produced, budget)
        record = StepRecord(context=context, target_tokens=n_prompt if context == 0 else 1, draft_passes=0,
                            draft_tokens_per_pass=0, proposed=0, accepted=0, emitted=len(emitted),
                            wall_s=clock.lap(), prefill=context == 0)
        yield emitted, record, stop
        if stop:
            return
        produced += 1
        context = position
        logits = model.forward([token], [position], cache)[0]
        position += 1
