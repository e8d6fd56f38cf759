"""The correctness oracle: compare another implementation's generated ids with ours.

The reference is plain autoregressive decoding (every lossless method gives the
same tokens) with the same model, prompt and sampling settings (position-keyed
randomness, so sampled outputs are comparable too). At the first divergence the
report shows the target's top-5 logits there and the margin between the top
two: a margin near float32 rounding means a near-tie (the other side's
arithmetic may legitimately pick the other token); a large one means a bug.

    from refimpl.oracle import check
    report = check(model, prompt_ids, their_tokens, settings)
    assert report.equal, report.describe()
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from refimpl.decoding import autoregressive, generate
from refimpl.errors import InputError, read_text
from refimpl.sampling import SamplingSettings
from refimpl.tokenizer import BOS_ID, EOS_ID


@dataclass
class OracleReport:
    equal: bool
    compared: int                      # tokens compared (the other side's count)
    index: int | None = None           # first divergent generated token (0-based), or None
    position: int | None = None        # its absolute position (prompt length + index)
    expected: int | None = None        # our token there (None: past the sequence length)
    got: int | None = None             # theirs
    top5: list[tuple[int, float]] = field(default_factory=list)   # (token id, logit) there
    margin: float | None = None        # top-1 minus top-2 logit there

    def describe(self) -> str:
        if self.equal:
            return f"equal: all {self.compared} tokens match the reference"
        top = ", ".join(f"{t}:{v:.6g}" for t, v in self.top5)
        return (f"diverged at generated token {self.index} (position {self.position}): expected "
                f"{_name(self.expected)}, got {_name(self.got)}; top-5 logits there {top}; "
                f"margin top1-top2 {self.margin:.3g}")

    def to_dict(self) -> dict:
        return asdict(self)


def _name(token: int | None) -> str:
    return "the end (sequence length reached)" if token is None else str(token)


def check(model, prompt_ids, tokens, settings: SamplingSettings) -> OracleReport:
    """Compare `tokens` (another implementation's output for the prompt) with the reference's
    first len(tokens) sampled tokens. A stop token (EOS/BOS) that ended the reference counts
    as a token, so their list may end with it or leave it out."""
    tokens = [int(t) for t in tokens]
    result = generate(autoregressive(model, list(prompt_ids), settings, len(tokens)), prompt_ids)
    ours = result.tokens + {"eos": [EOS_ID], "bos": [BOS_ID]}.get(result.stop_reason, [])
    for index, got in enumerate(tokens):
        expected = ours[index] if index < len(ours) else None
        if got != expected:
            return _divergence(model, prompt_ids, ours, index, expected, got, len(tokens))
    return OracleReport(equal=True, compared=len(tokens))


def _divergence(model, prompt_ids, ours, index, expected, got, compared) -> OracleReport:
    ids = list(prompt_ids) + ours[:index]
    logits = model.forward(ids, np.arange(len(ids)), model.new_cache())[-1]
    order = np.argsort(-logits, kind="stable")[:5]
    top5 = [(int(t), float(logits[t])) for t in order]
    margin = top5[0][1] - top5[1][1] if len(top5) > 1 else float("inf")
    return OracleReport(equal=False, compared=compared, index=index, position=len(ids), expected=expected,
                        got=got, top5=top5, margin=margin)


def read_token_file(path: str | Path) -> list[int]:
    """Token ids from a file: a JSON list, a JSON object with "tokens" (`generate --json`
    output), or one id per line."""
    path = Path(path)
    text = read_text(path, "--tokens")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text.split()
        if not all(_is_int_text(v) for v in value):
            raise InputError(f"--tokens {path}: expected a JSON list of token ids or one id per line") from None
        if not value:
            raise InputError(f"--tokens {path}: no token ids")
        return [int(v) for v in value]
    if value == [] or value == {"tokens": []}:
        raise InputError(f"--tokens {path}: no token ids")
    if isinstance(value, dict) and "tokens" in value:
        value = value["tokens"]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InputError(f"--tokens {path}: expected a JSON list of token ids or one id per line")
    return value


def _is_int_text(text: str) -> bool:
    return text.lstrip("-").isdigit()
