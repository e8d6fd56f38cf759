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
from refimpl.sampling import SamplingSettings, sample

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
    ours = reference(model, prompt_ids, settings, len(tokens))["tokens"]
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


# -- reference files for other engines' CI (`oracle reference` / `oracle check --reference`) -------
#
# A reference line holds, per generated token, the reference's top-5 (id, logit) and the
# log-probability (log-softmax of the raw logits) of the token it chose. A candidate line holds
# the other engine's "tokens" and, optionally, their "logprobs". Near-tie rule, in logit units:
# at the first divergence of a greedy (temperature 0) run, when the reference's logit for the
# candidate's token is within `near_tie` (default NEAR_TIE_LOGITS) of the logit of the token the
# reference chose, the two tokens were tied up to arithmetic: another implementation's rounding may
# pick either, so the prompt counts as "near-tie", which passes. Otherwise "diverged", which fails.

NEAR_TIE_LOGITS = 0.01      # fp32 engines agree with the reference to ~1e-4 logits (tests/refimpl/test_hf_parity.py)
LOGPROB_TOLERANCE = 1e-3    # max |their log-prob - ours| on the equal prefix


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; InputError naming the file and line."""
    text = read_text(path, what)
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except RecursionError:
            raise InputError(f"{what} {path}:{number}: JSON nested too deeply") from None
        except ValueError as exc:   # JSONDecodeError, or an integer too long to convert
            raise InputError(f"{what} {path}:{number}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(value, dict):
            raise InputError(f"{what} {path}:{number}: expected a JSON object, got {type(value).__name__}")
        records.append((number, value))
    if not records:
        raise InputError(f"{what} {path}: no records")
    return records


def _ids_field(value, where: str, key: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                              for v in value):
        raise InputError(f"{where}: {key} must be a list of non-negative token ids")
    return value


def read_prompts(path: str | Path, tokenizer, bos_id: int | None) -> list[dict]:
    """[{"id", "prompt_ids", "max_new_tokens" (or None)}] from a prompts JSONL: each line
    {"prompt": text} (tokenized, BOS prepended) or {"prompt_ids": [...]}, optional "id" and
    "max_new_tokens"."""
    prompts = []
    for number, record in read_jsonl(path, "--prompts"):
        where = f"--prompts {path}:{number}"
        if ("prompt" in record) == ("prompt_ids" in record):
            raise InputError(f"{where}: give exactly one of \"prompt\" (text) and \"prompt_ids\"")
        if "prompt" in record:
            if not isinstance(record["prompt"], str):
                raise InputError(f"{where}: prompt must be a string")
            if tokenizer is None:
                raise InputError(f"{where}: a text prompt needs a tokenizer (give --tokenizer or prompt_ids)")
            ids = ([bos_id] if bos_id is not None else []) + tokenizer.encode(record["prompt"])
        else:
            ids = _ids_field(record["prompt_ids"], where, "prompt_ids")
        limit = record.get("max_new_tokens")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise InputError(f"{where}: max_new_tokens must be a non-negative integer")
        prompts.append({"id": str(record.get("id", len(prompts))), "prompt_ids": ids, "max_new_tokens": limit})
    return prompts


def reference(model, prompt_ids, settings: SamplingSettings, max_new_tokens: int, prompt_id: str = "0") -> dict:
    """One reference record: plain decoding's tokens (a stop token that ended it included),
    the stop reason, and per token the top-5 logits and the chosen token's log-probability.
    The logits come from one pass over prompt + tokens, bit for bit those of decoding."""
    result = generate(autoregressive(model, list(prompt_ids), settings, max_new_tokens), prompt_ids)
    tokens, stopped = list(result.tokens), result.stop_reason in ("eos", "bos")
    top5, logprobs = [], []
    if tokens or stopped:
        fed = list(prompt_ids) + (tokens if stopped else tokens[:-1])
        hidden = model.hidden_states(fed, np.arange(len(fed)), model.new_cache(len(fed)))
        rows = hidden[len(prompt_ids) - 1:]
        for start in range(0, len(rows), 64):
            for offset, row in enumerate(model.head(rows[start:start + 64]).astype(np.float64)):
                index = start + offset
                if index == len(tokens):  # the stop token, sampled as decoding sampled it
                    tokens.append(sample(row.astype(np.float32), settings, len(prompt_ids) + index))
                order = np.argsort(-row, kind="stable")[:5]
                top5.append([[int(t), float(row[t])] for t in order])
                shifted = row - row.max()
                logprobs.append(float(shifted[tokens[index]] - np.log(np.exp(shifted).sum())))
    return {"id": prompt_id, "model": model.name, "prompt_ids": list(prompt_ids), "tokens": tokens,
            "stop_reason": result.stop_reason, "settings": asdict(settings), "top5": top5, "logprobs": logprobs}


@dataclass
class Verdict:
    """The comparison of one candidate with its reference."""
    id: str
    status: str                          # "equal", "near-tie" or "diverged"
    compared: int                        # tokens compared
    index: int | None = None             # first divergent generated token
    position: int | None = None          # its absolute position
    expected: int | None = None          # reference token (None: the reference had ended)
    got: int | None = None               # candidate token (None: the candidate had ended)
    top5: list = field(default_factory=list)
    margin: float | None = None          # logit(expected) - logit(got) (a lower bound when got is not in the top 5)
    logprob_error: float | None = None   # max |their - our| log-prob on the compared prefix
    logprob_ok: bool = True

    @property
    def passed(self) -> bool:
        return self.status != "diverged" and self.logprob_ok

    def describe(self) -> str:
        text = f"{self.id}: {self.status}"
        if self.status == "equal":
            text += f" ({self.compared} tokens)"
        else:
            text += (f" at generated token {self.index} (position {self.position}): expected {_end(self.expected)}, "
                     f"got {_end(self.got)}")
            if self.top5:
                text += "; top-5 logits " + ", ".join(f"{t}:{v:.6g}" for t, v in self.top5)
            if self.margin is not None:
                bound = ">= " if self.got not in [t for t, _ in self.top5] else ""
                text += f"; margin {bound}{self.margin:.3g}"
        if self.logprob_error is not None:
            text += f"; log-prob max error {self.logprob_error:.3g}{'' if self.logprob_ok else ' (too large)'}"
        return text


def _end(token):
    return "the end" if token is None else str(token)


def compare(ref: dict, candidate: dict, near_tie: float = NEAR_TIE_LOGITS,
            logprob_tolerance: float = LOGPROB_TOLERANCE, where: str = "candidate") -> Verdict:
    """Compare a candidate record ({"tokens": [...], "logprobs": [...]?}) with a reference record."""
    theirs = _ids_field(candidate.get("tokens", candidate.get("token_ids")), where, "tokens")
    ours, n_prompt = ref["tokens"], len(ref["prompt_ids"])
    stopped = ref["stop_reason"] in ("eos", "bos")
    if stopped and theirs == ours[:-1]:
        theirs = ours  # engines often leave the stop token out
    verdict = Verdict(id=ref["id"], status="equal", compared=len(ours))
    for index in range(len(ours) + (1 if stopped else 0)):
        expected = ours[index] if index < len(ours) else None
        got = theirs[index] if index < len(theirs) else None
        if got != expected:
            _diverged(verdict, ref, index, n_prompt, expected, got, near_tie)
            break
    their_logprobs = candidate.get("logprobs")
    if their_logprobs is not None:
        their_logprobs = _numbers(their_logprobs, where, "logprobs")
        upto = min(verdict.compared if verdict.index is None else verdict.index, len(their_logprobs))
        errors = [abs(their_logprobs[i] - ref["logprobs"][i]) for i in range(upto)]
        verdict.logprob_error = max(errors, default=0.0)
        verdict.logprob_ok = verdict.logprob_error <= logprob_tolerance
    return verdict


def _diverged(verdict: Verdict, ref: dict, index: int, n_prompt: int, expected, got, near_tie: float) -> None:
    verdict.index, verdict.position, verdict.expected, verdict.got = index, n_prompt + index, expected, got
    verdict.compared = index
    verdict.status = "diverged"
    if expected is None or index >= len(ref["top5"]):
        return
    top5 = [(int(t), float(v)) for t, v in ref["top5"][index]]
    verdict.top5 = top5
    logits = dict(top5)
    if expected not in logits:   # a sampled token outside the top 5: no margin to tell
        return
    if got in logits:
        verdict.margin = logits[expected] - logits[got]
    else:
        verdict.margin = logits[expected] - top5[-1][1]
    greedy = ref["settings"].get("temperature", 0.0) == 0.0
    if greedy and got in logits and verdict.margin <= near_tie:
        verdict.status = "near-tie"


def check_files(reference_path, candidate_path, near_tie: float = NEAR_TIE_LOGITS,
                logprob_tolerance: float = LOGPROB_TOLERANCE) -> list[Verdict]:
    """Compare every reference record with the candidate record of the same "id" (by line
    order when the candidate has no ids); a reference without a candidate diverges at 0."""
    references = read_jsonl(reference_path, "--reference")
    for number, ref in references:
        _check_reference(ref, f"--reference {reference_path}:{number}")
    candidates = read_jsonl(candidate_path, "--candidate")
    by_id = {}
    for order, (number, record) in enumerate(candidates):
        key = str(record["id"]) if "id" in record else references[order][1]["id"] if order < len(references) else None
        by_id[key] = (number, record)
    verdicts = []
    for _, ref in references:
        if ref["id"] not in by_id:
            verdicts.append(compare(ref, {"tokens": []}, near_tie, logprob_tolerance))
            continue
        number, record = by_id[ref["id"]]
        verdicts.append(compare(ref, record, near_tie, logprob_tolerance, where=f"--candidate {candidate_path}:{number}"))
    return verdicts


def _check_reference(ref: dict, where: str) -> None:
    """Raise InputError unless `ref` has the fields and types `oracle reference` writes."""
    for key in ("id", "prompt_ids", "tokens", "top5", "logprobs", "settings", "stop_reason"):
        if key not in ref:
            raise InputError(f"{where}: missing {key!r} (write it with mirrorstream oracle reference)")
    if not isinstance(ref["id"], str) or not isinstance(ref["stop_reason"], str):
        raise InputError(f"{where}: id and stop_reason must be strings")
    _ids_field(ref["prompt_ids"], where, "prompt_ids")
    _ids_field(ref["tokens"], where, "tokens")
    if not isinstance(ref["settings"], dict) or not _is_number(ref["settings"].get("temperature", 0.0)):
        raise InputError(f"{where}: settings must be an object with a numeric temperature")
    if not isinstance(ref["top5"], list) or len(ref["top5"]) != len(ref["tokens"]) or not all(
            isinstance(row, list) and row and all(isinstance(pair, list) and len(pair) == 2 and _is_id(pair[0])
                                                  and _is_number(pair[1]) for pair in row) for row in ref["top5"]):
        raise InputError(f"{where}: top5 must hold, per token, a list of [id, logit] pairs")
    _numbers(ref["logprobs"], where, "logprobs")
    if len(ref["logprobs"]) != len(ref["tokens"]):
        raise InputError(f"{where}: {len(ref['logprobs'])} logprobs for {len(ref['tokens'])} tokens")


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
    """An int or float that converts to a float (JSON allows integers of any size)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _numbers(value, where: str, key: str) -> list[float]:
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise InputError(f"{where}: {key} must be a list of numbers")
    return [float(v) for v in value]


def summary(verdicts: list[Verdict]) -> str:
    counts = {s: sum(v.status == s for v in verdicts) for s in ("equal", "near-tie", "diverged")}
    bad_logprobs = sum(not v.logprob_ok for v in verdicts)
    verdict = "PASS" if all(v.passed for v in verdicts) else "FAIL"
    return (f"oracle: {verdict}: {len(verdicts)} prompts, {counts['equal']} equal, {counts['near-tie']} near-tie, "
            f"{counts['diverged']} diverged, {bad_logprobs} log-prob mismatches")


def assert_matches_reference(reference_path, candidate_path, near_tie: float = NEAR_TIE_LOGITS,
                             logprob_tolerance: float = LOGPROB_TOLERANCE) -> list[Verdict]:
    """For pytest: raise AssertionError listing every failing prompt, else return the verdicts."""
    verdicts = check_files(reference_path, candidate_path, near_tie, logprob_tolerance)
    failing = [v.describe() for v in verdicts if not v.passed]
    assert not failing, summary(verdicts) + "\n" + "\n".join(failing)
    return verdicts
