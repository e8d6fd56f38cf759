"""Decoding methods. Each is a generator with the same shape:

    method(model, prompt_ids, settings, max_new_tokens, **params)
        yields (emitted_tokens, StepRecord, stop_reason_or_None) once per target pass

and stops after max_new_tokens tokens, at the model's sequence length, or at a
stop token (BOS or EOS, which is not emitted). `generate` drives one to the end.
"""
from refimpl.decoding.ar import autoregressive
from refimpl.decoding.common import Generation, generate

METHODS = {"ar": autoregressive}

__all__ = ["METHODS", "Generation", "autoregressive", "generate"]
