"""Decoding methods. Each is a generator with the same shape:

    method(model, prompt_ids, settings, max_new_tokens, **params)
        yields (emitted_tokens, StepRecord, stop_reason_or_None) once per target pass

and stops after max_new_tokens tokens, at the model's sequence length, or at a
stop token (BOS or EOS, which is not emitted). `generate` drives one to the end.
Methods that take parameters check them when called, before the first step.

- ar: plain autoregressive decoding, the baseline;
- sd: a draft model proposes a chain or tree (params draft, gamma, tree_k, verify);
- lookup: prompt lookup decoding (params gamma, ngram);
- ss: Speculative Streaming (params streams, gamma, tree_k, verify, schedule, prune_threshold);
- medusa: Medusa-1 heads (params heads, gamma, tree_k, verify).
"""
from refimpl.decoding.ar import autoregressive
from refimpl.decoding.common import Generation, generate
from refimpl.decoding.lookup import prompt_lookup
from refimpl.decoding.medusa import medusa
from refimpl.decoding.sd import speculative
from refimpl.decoding.ss import speculative_streaming

METHODS = {"ar": autoregressive, "sd": speculative, "lookup": prompt_lookup, "ss": speculative_streaming,
           "medusa": medusa}

__all__ = ["METHODS", "Generation", "autoregressive", "generate", "medusa", "prompt_lookup", "speculative",
           "speculative_streaming"]
