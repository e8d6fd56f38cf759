"""Prompt lookup decoding (`--method lookup`): proposals copied from the context itself.

The last `ngram` tokens of the committed context (the pending token included)
are searched for earlier in the context; the latest earlier occurrence wins,
and the up to `gamma` tokens that followed it are proposed as a chain. When no
n-gram of that length occurs, shorter ones are tried down to a single token
(as Hugging Face's prompt lookup does); when none occurs, the step is a plain
one-token pass. Verification is by exact match, so the output is that of `ar`.
No draft model: the record's draft_passes is 0.
"""
from __future__ import annotations

from refimpl.decoding.common import token_budget
from refimpl.decoding.speculative import Proposal, speculative_decode
from refimpl.errors import InputError
from refimpl.sampling import SamplingSettings
from refimpl.trees import TokenTree
from refimpl.verify import MATCH


def find_continuation(context: list[int], ngram: int, gamma: int) -> list[int]:
    """What followed the latest earlier occurrence of the context's last n tokens
    (n = ngram, then shorter), at most gamma tokens; [] if nothing matches."""
    if gamma <= 0:
        return []
    for n in range(min(ngram, len(context) - 1), 0, -1):
        suffix = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start:start + n] == suffix:
                return context[start + n:start + n + gamma]
    return []


def prompt_lookup(model, prompt_ids, settings: SamplingSettings, max_new_tokens: int, gamma: int = 4,
                  ngram: int = 2, cache=None):
    """Prompt lookup decoding; the step generator of refimpl.decoding."""
    if gamma < 1:
        raise InputError(f"--gamma {gamma}: must be >= 1")
    if ngram < 1:
        raise InputError(f"--ngram {ngram}: must be >= 1")
    token_budget(model, prompt_ids, max_new_tokens)

    def propose(context, max_depth, max_nodes):
        tokens = find_continuation(context, ngram, min(gamma, max_depth, max_nodes - 1))
        return Proposal(TokenTree.chain(context[-1], tokens))

    return speculative_decode(model, prompt_ids, settings, max_new_tokens, propose, MATCH, cache)
