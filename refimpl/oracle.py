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

MAX_TOKEN_FILE_BYTES = 8 << 20   # a --tokens file: 8 MiB holds a million ids, far past any sequence length


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
    check_ids(tokens, model.config.vocab_size, "--tokens")
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


@dataclass
class TokenFile:
    """What a --tokens file holds: the generated ids, and the prompt ids when the file
    says them (`generate --json` output does)."""
    tokens: list[int]
    prompt_ids: list[int] | None = None


def read_token_file(path: str | Path) -> TokenFile:
    """Token ids from a file: a JSON list, a JSON object with "tokens" and optionally
    "prompt_ids" (`generate --json` output), or one id per line."""
    path = Path(path)
    text = read_text(path, "--tokens", MAX_TOKEN_FILE_BYTES)
    try:
        value = json.loads(text)
    except RecursionError:
        raise InputError(f"--tokens {path}: JSON nested too deeply") from None
    except ValueError:   # not JSON (or an integer too long to convert): one id per line
        return TokenFile(_ids_per_line(path, text))
    prompt_ids = None
    if isinstance(value, dict) and "tokens" in value:
        if value.get("prompt_ids") is not None:
            prompt_ids = _id_list(path, value["prompt_ids"], "prompt_ids")
        value = value["tokens"]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    return TokenFile(_id_list(path, value, "tokens"), prompt_ids)


def _id_list(path: Path, value, what: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InputError(f"--tokens {path}: expected a JSON list of token ids or one id per line")
    if not value:
        raise InputError(f"--tokens {path}: no token ids" + ("" if what == "tokens" else f" in {what}"))
    return value


def _ids_per_line(path: Path, text: str) -> list[int]:
    words = text.split()
    if not words:
        raise InputError(f"--tokens {path}: no token ids")
    if not all(_is_int_text(w) for w in words):
        raise InputError(f"--tokens {path}: expected a JSON list of token ids or one id per line")
    return [int(w) for w in words]


def _is_int_text(text: str) -> bool:
    """An optionally negative run of ASCII digits short enough for int() (which refuses
    more than 4300 digits)."""
    digits = text[1:] if text.startswith("-") else text
    return 0 < len(digits) <= 4000 and digits.isascii() and digits.isdigit()


def check_ids(ids, vocab_size: int, what: str) -> None:
    """Raise InputError naming `what` for the first id outside [0, vocab_size)."""
    for index, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise InputError(f"{what}: token id {token} (at index {index}) is outside the model's "
                             f"vocabulary of {vocab_size}")
