"""Decoding methods. Each is a generator with the same shape:

    method(model, prompt_ids, settings, max_new_tokens, **params)
        yields (emitted_tokens, StepRecord, stop_reason_or_None) once per target pass

and stops after max_new_tokens tokens (stop_reason "max_new_tokens"), when the
sequence is full ("seq_len": as in llama2.c, the token predicted at position
seq_len - 1 is the last), or at a stop token ("bos"/"eos", not emitted; with
`settings.ignore_eos` they are ordinary tokens). `generate` drives one to the end.
Methods that take parameters check them when called, before the first step.

- ar: plain autoregressive decoding, the baseline;
- sd: a draft model proposes a chain or tree (params draft, gamma, tree_k, verify);
- lookup: prompt lookup decoding (params gamma, ngram);
- mirror: Mirror-SD, early exit + branch rollouts (params draft, gamma, exit_layer,
  kappa, max_branches, overlap);
- ss: Speculative Streaming (params streams, gamma, tree_k, verify, schedule, prune_threshold);
- medusa: Medusa-1 heads (params heads, gamma, tree_k, verify).
"""
from refimpl.decoding.ar import autoregressive
from refimpl.decoding.common import Generation, generate
from refimpl.decoding.lookup import prompt_lookup
from refimpl.decoding.medusa import medusa
from refimpl.decoding.mirror import mirror
from refimpl.decoding.sd import speculative
from refimpl.decoding.ss import speculative_streaming

METHODS = {"ar": autoregressive, "sd": speculative, "lookup": prompt_lookup, "mirror": mirror,
           "ss": speculative_streaming, "medusa": medusa}

__all__ = ["METHODS", "Generation", "autoregressive", "generate", "medusa", "mirror", "prompt_lookup", "speculative",
           "speculative_streaming"]
