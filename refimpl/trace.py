"""Decoding traces: the one contract between the reference decoders and the simulator.

A trace is a JSON Lines file. Line 1 is the header::

    {"schema": "mirrorstream.trace", "version": 1, "method": "sd",
     "params": {"gamma": 7}, "target": "qwen3-32b", "draft": "qwen3-0.6b",
     "seed": 0, "prompt_tokens": 128}

``target`` and ``draft`` are a model name or a shape dict; ``draft`` is null
for methods without a draft model. Every further line is one record per target
forward pass (one decoding step)::

    {"context": 130, "target_tokens": 8, "draft_passes": 7,
     "draft_tokens_per_pass": 1, "proposed": 7, "accepted": 5, "emitted": 6}

Record fields (all counts are per sequence):

- ``context``: KV-cache length of the target before the pass.
- ``target_tokens``: query rows in the target pass (tree nodes for tree methods).
- ``draft_passes``: forward passes of the draft (model or heads) in this step.
- ``draft_tokens_per_pass``: query rows per draft pass and per branch, an int
  (the same for every pass) or a list with one entry per pass.
- ``proposed``: draft tokens offered for verification; ``accepted``: how many
  of them the target accepted; ``emitted``: tokens committed by this step,
  bonus/correction token included (so ``emitted <= accepted + 1``).
- ``branches`` (optional, Mirror-SD): sequences the draft rolls out in each
  pass, batched (one per early-exit candidate and depth).
- ``coverage_hit`` (optional, Mirror-SD): whether a precomputed branch covered
  the target's correction, so the next window is ready (false: fallback).
- ``exit_hit`` (optional, Mirror-SD): whether the target's token after the
  accepted prefix (correction or bonus) was among the early-exit top-κ at that
  position (coverage Ω_κ); ``coverage_hit`` can still be false when the branch
  was pruned (``--max-branches``) or did not fit.
- ``wall_s`` (optional): seconds the step took on the recording machine.
- ``wall_parts`` (optional): how ``wall_s`` splits, seconds by part name; for
  ``mirror``: "prefix" (target layers 1..ℓe and the early-exit head),
  "suffix" (layers ℓe+1..N and verification), "draft" (branch rollouts, on the
  second thread with ``--overlap``), "wait" (the target waiting for the draft at
  the second rendezvous), "fallback" (a fresh rollout after a miss).
- ``prefill`` (optional, default false): the record is the prompt's prefill
  pass (``context`` 0, ``target_tokens`` = prompt length, ``emitted`` 1).

Contexts follow on: a trace describes one prompt's decoding, so a prefill can
only be the first record, the first decode record's ``context`` is the
header's ``prompt_tokens``, and each later record's ``context`` is the previous
one's plus what it committed (``emitted``). Counts are bounded so that no
record can ask a replay for unbounded work: a context and the rows of a pass
are at most `MAX_CONTEXT` tokens, the draft passes, proposals and branches of
one step at most `MAX_STEP`.

``mean_accepted`` (the one definition, used by ``generate --json`` and by
``simulate``): tokens the target accepted per decoding pass, the bonus/correction
token included (``accepted + 1``; Spec-Bench's "mean accepted tokens", 1.0 for
plain decoding); the prefill is not a decoding pass and is left out.

``params`` by method (written by ``mirrorstream generate --trace``): ``ar`` {};
``sd`` {"gamma", "tree_k" (1: a chain), "verify" ("match" or "rejection"), and
"draft_layers" when the draft is the target's first layers}; ``lookup``
{"gamma", "ngram"}; ``mirror`` {"gamma", "exit_layer", "kappa", "max_branches",
"overlap", "rollout", and "draft_layers" as for sd; "rollout" "tree": each draft pass of
a step re-runs the window (``target_tokens`` rows) and every branch's rows so far, so
pass k has target_tokens + branches x (1 + the earlier passes' draft_tokens_per_pass)
rows of which the branches' newest reach the classifier; absent: the branches run as
batched sequences, draft_tokens_per_pass rows each}; ``ss`` {"gamma", "tree_k", "verify",
"schedule" ("deferred" or "fused"), "prune_threshold", "file" (the streams),
"stream_layers" (N_s, the last layers the stream rows run through), "draft_vocab"};
``medusa`` {"gamma" (the heads, K), "tree_k", "verify", "file", "draft_vocab"}.
"draft_vocab" is the number of classifier rows the draft logits use: the streams' or
heads' shortlist, or the whole vocabulary; its presence says the records draft as
described here (traces written before it was recorded lack it, and the simulator
prices them in the papers' layouts). An ``ss`` record's one draft pass is the stream
rows that produced its tree: deferred, the gamma streams of the last committed node
through the last N_s layers and the draft classifier, run after the previous
verification; fused, gamma per node of the previous tree, inside that verification
pass, of which only the accepted node's gamma rows reach the classifier. A ``medusa``
record's one draft pass of K rows is the K heads on the last committed node's hidden
state (a residual block each), their K rows through the target's classifier
restricted to draft_vocab. A ``mirror`` record's draft passes are
the branch rollouts that ran beside the target's suffix layers
(``draft_tokens_per_pass`` per branch, ``branches`` of them); a fallback's
fresh chain of the same depth runs before the next step (``coverage_hit``
false). For ``sd`` and ``lookup``, ``target_tokens`` counts the
pending token plus every proposed node (``proposed`` = ``target_tokens`` - 1),
and the first draft pass of a step also runs the tokens committed since the
draft's previous pass, so ``draft_tokens_per_pass`` is a list when passes differ.

This module uses only the standard library, numpy and ``refimpl.errors``, so
that the simulator can read traces without importing the reference model.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Iterable

from refimpl.errors import InputError, read_text

SCHEMA = "mirrorstream.trace"
VERSION = 1
#: Most tokens of one context, and most query rows of one pass (a prefill's rows are its prompt).
MAX_CONTEXT = 2**24
#: Most draft passes, proposed tokens and branches of one decoding step.
MAX_STEP = 2**16


@dataclass
class TraceHeader:
    """What produced the trace: method, its parameters, target/draft shapes, seed, prompt length."""

    method: str
    params: dict = field(default_factory=dict)
    target: dict | str = ""
    draft: dict | str | None = None
    seed: int = 0
    prompt_tokens: int = 0
    schema: str = SCHEMA
    version: int = VERSION


@dataclass(slots=True)
class StepRecord:
    """One decoding step: one target forward pass and the draft work that fed it."""

    context: int
    target_tokens: int
    draft_passes: int
    draft_tokens_per_pass: int | list[int]
    proposed: int
    accepted: int
    emitted: int
    branches: int | None = None
    coverage_hit: bool | None = None
    wall_s: float | None = None
    prefill: bool = False
    exit_hit: bool | None = None
    wall_parts: dict | None = None

    def draft_token_list(self) -> list[int]:
        """Query rows of each draft pass, one entry per pass."""
        per_pass = self.draft_tokens_per_pass
        if isinstance(per_pass, list):
            return list(per_pass)
        return [per_pass] * self.draft_passes

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this record; optional fields left out when unset."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in _OPTIONAL:
            if out[name] is None:
                del out[name]
        if not out["prefill"]:
            del out["prefill"]
        return out


_REQUIRED = ("context", "target_tokens", "draft_passes", "draft_tokens_per_pass",
             "proposed", "accepted", "emitted")
_OPTIONAL = ("branches", "coverage_hit", "wall_s", "exit_hit", "wall_parts")
_RECORD_KEYS = frozenset(f.name for f in fields(StepRecord))
_HEADER_KEYS = frozenset(f.name for f in fields(TraceHeader))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_count(name: str, value: Any, minimum: int = 0, maximum: int | None = None) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"'{name}' must be an integer >= {minimum}, got {_short(value)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"'{name}' is {value}, more than this schema allows ({maximum})")


def _short(value: Any) -> str:
    """repr of a value, cut so that an error message stays one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_header(header: TraceHeader) -> None:
    """Raise ValueError naming the first field of the header that is wrong."""
    if header.schema != SCHEMA:
        raise ValueError(f"not a mirrorstream trace (schema {header.schema!r}, expected {SCHEMA!r})")
    if header.version != VERSION:
        raise ValueError(f"trace schema version {header.version!r} is not supported (this reader knows {VERSION})")
    if not isinstance(header.method, str) or not header.method:
        raise ValueError("'method' must be a non-empty string")
    if not isinstance(header.params, dict):
        raise ValueError("'params' must be an object")
    if not isinstance(header.target, (dict, str)) or not header.target:
        raise ValueError("'target' must be a model name or a shape object")
    if header.draft is not None and not isinstance(header.draft, (dict, str)):
        raise ValueError("'draft' must be a model name, a shape object or null")
    _check_count("seed", header.seed)
    _check_count("prompt_tokens", header.prompt_tokens)


def validate_record(record: StepRecord) -> None:
    """Raise ValueError naming the first field of the record that is wrong."""
    _check_count("context", record.context, maximum=MAX_CONTEXT)
    for name in ("draft_passes", "proposed", "accepted", "emitted"):
        _check_count(name, getattr(record, name), maximum=MAX_STEP)
    _check_count("target_tokens", record.target_tokens, minimum=1, maximum=MAX_CONTEXT)
    per_pass = record.draft_tokens_per_pass
    if isinstance(per_pass, list):
        if len(per_pass) != record.draft_passes:
            raise ValueError(f"'draft_tokens_per_pass' has {len(per_pass)} entries for "
                             f"{record.draft_passes} draft passes")
        for n in per_pass:
            _check_count("draft_tokens_per_pass", n, minimum=1, maximum=MAX_CONTEXT)
    else:
        _check_count("draft_tokens_per_pass", per_pass, minimum=1 if record.draft_passes else 0,
                     maximum=MAX_CONTEXT)
    if record.accepted > record.proposed:
        raise ValueError(f"'accepted' ({record.accepted}) exceeds 'proposed' ({record.proposed})")
    if record.emitted > record.accepted + 1:
        raise ValueError(f"'emitted' ({record.emitted}) exceeds 'accepted' + 1 ({record.accepted + 1})")
    if record.branches is not None:
        _check_count("branches", record.branches, minimum=1, maximum=MAX_STEP)
    if record.coverage_hit is not None and not isinstance(record.coverage_hit, bool):
        raise ValueError(f"'coverage_hit' must be true, false or absent, got {_short(record.coverage_hit)}")
    if record.wall_s is not None:
        wall = record.wall_s
        if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not math.isfinite(wall) or wall < 0:
            raise ValueError(f"'wall_s' must be a finite number of seconds >= 0, got {_short(wall)}")
    if not isinstance(record.prefill, bool):
        raise ValueError(f"'prefill' must be true or false, got {_short(record.prefill)}")
    _check_mirror_fields(record)


def _check_mirror_fields(record: StepRecord) -> None:
    if record.exit_hit is not None and not isinstance(record.exit_hit, bool):
        raise ValueError(f"'exit_hit' must be true, false or absent, got {type(record.exit_hit).__name__}")
    if record.wall_parts is None:
        return
    if not isinstance(record.wall_parts, dict) or len(record.wall_parts) > 16:
        raise ValueError("'wall_parts' must be an object of at most 16 named seconds")
    for name, seconds in record.wall_parts.items():
        if (not isinstance(name, str) or len(name) > 32 or isinstance(seconds, bool)
                or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0):
            raise ValueError("'wall_parts' must map short names to finite seconds >= 0")


def follow_on_fault(header: TraceHeader, records: list[StepRecord]) -> tuple[int, str] | None:
    """(index, message) of the first record that breaks the follow-on rule (a prefill after
    the first record, a context other than the prompt plus the tokens committed before it),
    or None when the records describe one prompt's decoding."""
    expected = header.prompt_tokens
    for index, record in enumerate(records):
        if record.prefill:
            if index or record.context:
                return index, "a prefill must be the first record, at context 0"
            expected = record.target_tokens
            continue
        if record.context != expected:
            before = "the prompt has" if index == 0 else "the records before it leave"
            return index, f"'context' is {record.context}, but {before} {expected} tokens"
        expected = record.context + record.emitted
    return None


def accepted_lengths(records: Iterable[StepRecord]) -> list[int]:
    """Tokens each decoding pass accepted, bonus included (accepted + 1); prefills left out."""
    return [r.accepted + 1 for r in records if not r.prefill]


def mean_accepted_of(accepted: int, passes: int) -> float:
    """`mean_accepted` from totals: the draft tokens accepted over `passes` decoding passes."""
    return (accepted + passes) / passes if passes else 0.0


def mean_accepted(records: Iterable[StepRecord]) -> float:
    """Tokens per decoding pass, bonus included (see the module docstring); 0.0 without one."""
    lengths = accepted_lengths(records)
    return mean_accepted_of(sum(lengths) - len(lengths), len(lengths))


class TraceWriter:
    """Write a trace: the header on entering, then one line per `write(record)`.

    >>> with TraceWriter("run.jsonl", TraceHeader(method="ar", target="qwen3-0.6b")) as w:
    ...     w.write(StepRecord(context=5, target_tokens=1, draft_passes=0,
    ...                        draft_tokens_per_pass=0, proposed=0, accepted=0, emitted=1))
    """

    def __init__(self, path: str | Path, header: TraceHeader):
        validate_header(header)
        self.path = Path(path)
        self.header = header
        self._file: IO[str] | None = None

    def __enter__(self) -> "TraceWriter":
        self._file = open(self.path, "w", encoding="utf-8")
        header = asdict(self.header)
        ordered = {"schema": header.pop("schema"), "version": header.pop("version"), **header}
        self._file.write(json.dumps(ordered) + "\n")
        return self

    def write(self, record: StepRecord) -> None:
        validate_record(record)
        assert self._file is not None, "TraceWriter.write outside its `with` block"
        self._file.write(json.dumps(record.to_dict()) + "\n")

    def write_all(self, records: Iterable[StepRecord]) -> None:
        for record in records:
            self.write(record)

    def __exit__(self, *exc_info) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_trace(path: str | Path, header: TraceHeader, records: Iterable[StepRecord]) -> None:
    """Write a whole trace in one call."""
    with TraceWriter(path, header) as writer:
        writer.write_all(records)


def _parse_line(path: Path, lineno: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise InputError(f"{path}:{lineno}: JSON nested too deeply") from None
    except ValueError as exc:       # e.g. an integer of more digits than Python converts
        raise InputError(f"{path}:{lineno}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}:{lineno}: expected a JSON object")
    return obj


def _header_from(path: Path, obj: dict) -> TraceHeader:
    if obj.get("schema") != SCHEMA:
        raise InputError(f"{path}:1: not a mirrorstream trace (schema {_short(obj.get('schema'))}, "
                         f"expected {SCHEMA!r})")
    if not _is_int(obj.get("version")) or obj.get("version") != VERSION:
        raise InputError(f"{path}:1: trace schema version {_short(obj.get('version'))} is not supported "
                         f"(this reader knows version {VERSION})")
    unknown = sorted(set(obj) - _HEADER_KEYS)
    if unknown:
        raise InputError(f"{path}:1: unknown header field(s) {_short(', '.join(unknown))}")
    if "method" not in obj:
        raise InputError(f"{path}:1: header lacks 'method'")
    header = TraceHeader(**obj)
    try:
        validate_header(header)
    except ValueError as exc:
        raise InputError(f"{path}:1: {exc}") from None
    return header


def _record_from(path: Path, lineno: int, obj: dict) -> StepRecord:
    missing = [name for name in _REQUIRED if name not in obj]
    if missing:
        raise InputError(f"{path}:{lineno}: record lacks {', '.join(repr(m) for m in missing)}")
    unknown = sorted(set(obj) - _RECORD_KEYS)
    if unknown:
        raise InputError(f"{path}:{lineno}: unknown record field(s) {_short(', '.join(unknown))}")
    record = StepRecord(**obj)
    try:
        validate_record(record)
    except ValueError as exc:
        raise InputError(f"{path}:{lineno}: {exc}") from None
    return record


def read_trace(path: str | Path) -> tuple[TraceHeader, list[StepRecord]]:
    """Read and validate a trace file; raise InputError naming the file and line on any fault."""
    path = Path(path)
    text = read_text(path, "trace")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"{path}:1: empty trace (expected a header line)")
    header = _header_from(path, _parse_line(path, 1, lines[0]))
    records, linenos = [], []
    for lineno, line in enumerate(lines[1:], start=2):
        if line.strip():
            records.append(_record_from(path, lineno, _parse_line(path, lineno, line)))
            linenos.append(lineno)
    fault = follow_on_fault(header, records)
    if fault is not None:
        index, message = fault
        raise InputError(f"{path}:{linenos[index]}: {message}")
    return header, records
