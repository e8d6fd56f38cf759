"""The trace schema: round trip, and one clear error per kind of bad file."""
from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl.errors import InputError
from refimpl.trace import (MAX_CONTEXT, MAX_STEP, SCHEMA, VERSION, StepRecord, TraceHeader, TraceWriter,
                           accepted_lengths, mean_accepted, mean_accepted_of, read_trace, write_trace)

HEADER = TraceHeader(method="mirror", params={"gamma": 7, "kappa": 8}, target="qwen3-32b",
                     draft="qwen3-0.6b", seed=3, prompt_tokens=12)


def _record(**changes) -> dict:
    base = dict(context=12, target_tokens=8, draft_passes=3, draft_tokens_per_pass=[1, 3, 3],
                proposed=7, accepted=4, emitted=5)
    base.update(changes)
    return base


def _write_lines(path, header: dict, records: list[dict]) -> None:
    path.write_text("\n".join(json.dumps(obj) for obj in [header, *records]) + "\n")


def _header_dict(**changes) -> dict:
    base = dict(schema=SCHEMA, version=VERSION, method="sd", params={}, target="qwen3-32b",
                draft=None, seed=0, prompt_tokens=4)
    base.update(changes)
    return base


def _follow_on(records: list[StepRecord], prompt_tokens: int = HEADER.prompt_tokens) -> list[StepRecord]:
    """The records with contexts that follow on from the prompt (a trace's rule)."""
    out, context = [], prompt_tokens
    for record in records:
        out.append(replace(record, context=context))
        context += record.emitted
    return out


records_strategy = st.lists(
    st.builds(
        lambda rows, passes, per, proposed, acc_frac, bonus, branches, hit, wall: StepRecord(
            context=0, target_tokens=rows, draft_passes=passes, draft_tokens_per_pass=per if passes else 0,
            proposed=proposed, accepted=int(acc_frac * proposed), emitted=int(acc_frac * proposed) + bonus,
            branches=branches, coverage_hit=hit, wall_s=wall),
        st.integers(1, 300), st.integers(0, 9), st.integers(1, 4),
        st.integers(0, 64), st.floats(0, 1), st.integers(0, 1),
        st.none() | st.integers(1, 64), st.none() | st.booleans(),
        st.none() | st.floats(0, 10, allow_nan=False)),
    max_size=20).map(_follow_on)


@given(records_strategy)
def test_round_trip(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("trace") / "t.jsonl"
    write_trace(path, HEADER, records)
    header, read_back = read_trace(path)
    assert header == HEADER
    assert read_back == records


def test_writer_context_manager_and_lists(tmp_path):
    path = tmp_path / "t.jsonl"
    prefill = StepRecord(context=0, target_tokens=12, draft_passes=1, draft_tokens_per_pass=12,
                         proposed=0, accepted=0, emitted=1, prefill=True)
    step = StepRecord(**_record(), branches=64, coverage_hit=False)
    step.context = 12
    with TraceWriter(path, HEADER) as writer:
        writer.write(prefill)
        writer.write(step)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["schema"] == SCHEMA and json.loads(lines[0])["version"] == VERSION
    assert "prefill" not in json.loads(lines[2]) and json.loads(lines[1])["prefill"] is True
    _, records = read_trace(path)
    assert records == [prefill, step]
    assert records[1].draft_token_list() == [1, 3, 3]
    assert StepRecord(**_record(draft_tokens_per_pass=2)).draft_token_list() == [2, 2, 2]


def test_writer_rejects_bad_record(tmp_path):
    with TraceWriter(tmp_path / "t.jsonl", HEADER) as writer:
        with pytest.raises(ValueError, match="accepted"):
            writer.write(StepRecord(**_record(accepted=9)))


@pytest.mark.parametrize("header, records, message", [
    (_header_dict(version=2), [], "version 2 is not supported"),
    (_header_dict(schema="other"), [], "not a mirrorstream trace"),
    (_header_dict(prompt_tokens=-1), [], "prompt_tokens"),
    (_header_dict(colour="red"), [], "unknown header field"),
    (_header_dict(), [_record(context=-5)], "'context' must be an integer >= 0"),
    (_header_dict(), [_record(wall_s=-0.1)], "wall_s"),
    (_header_dict(), [_record(accepted=8)], "exceeds 'proposed'"),
    (_header_dict(), [_record(emitted=6)], r"exceeds 'accepted' \+ 1"),
    (_header_dict(), [_record(draft_tokens_per_pass=[1, 1])], "2 entries for 3 draft passes"),
    (_header_dict(), [{"context": 1}], "record lacks"),
    (_header_dict(), [_record(target_tokens=0)], "target_tokens"),
    (_header_dict(), [_record(coverage_hit="yes")], "coverage_hit"),
    (_header_dict(), [_record(), _record(speed=3)], ":3: unknown record field"),
    (_header_dict(version=True), [], "version True is not supported"),
    (_header_dict(), [_record(context=10**12)], "'context' is 1000000000000, more than this schema allows"),
    (_header_dict(), [_record(proposed=10**12, accepted=10**12, emitted=10**12)], "'proposed' is 10000"),
    (_header_dict(), [_record(draft_passes=10**12, draft_tokens_per_pass=1)], "'draft_passes' is 10000"),
    (_header_dict(), [_record(target_tokens=10**12)], "'target_tokens' is 10000"),
    (_header_dict(), [_record(branches=10**12)], "'branches' is 10000"),
    (_header_dict(), [_record(context="x" * 10**5)], r"got 'xxxx.*\.\.\.$"),
    # Contexts must follow on from the prompt (4 tokens) and what each step committed.
    (_header_dict(), [_record(context=5)], ":2: 'context' is 5, but the prompt has 4 tokens"),
    (_header_dict(), [_record(context=4, emitted=5), _record(context=10**15)], ":3: 'context' is 10{15}"),
    (_header_dict(), [_record(context=4, emitted=5), _record(context=8)], ":3: .* the records before it leave 9"),
    (_header_dict(), [_record(context=4), _record(context=0, prefill=True)], ":3: a prefill must be the first"),
    (_header_dict(), [_record(context=3, prefill=True)], ":2: a prefill must be the first record, at context 0"),
])
def test_bad_traces_raise_one_line(tmp_path, header, records, message):
    path = tmp_path / "bad.jsonl"
    _write_lines(path, header, records)
    with pytest.raises(InputError, match=message) as info:
        read_trace(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text


def test_counts_of_ten_to_the_twelve_are_rejected_at_once(tmp_path):
    """A record that would make a replay expand 10^12 steps or draft passes fails fast."""
    path = tmp_path / "huge.jsonl"
    _write_lines(path, _header_dict(), [_record(context=4, draft_passes=10**12, draft_tokens_per_pass=1,
                                                proposed=10**12, accepted=10**12, emitted=10**12)])
    started = time.perf_counter()
    with pytest.raises(InputError, match="more than this schema allows"):
        read_trace(path)
    assert time.perf_counter() - started < 1.0


def test_limits_are_inclusive(tmp_path):
    path = tmp_path / "edge.jsonl"
    edge = _record(context=4, target_tokens=MAX_CONTEXT, draft_passes=1, draft_tokens_per_pass=[MAX_CONTEXT],
                   proposed=MAX_STEP, accepted=MAX_STEP, emitted=MAX_STEP, branches=MAX_STEP)
    _write_lines(path, _header_dict(), [edge])
    assert read_trace(path)[1][0].proposed == MAX_STEP


def test_a_prefill_then_follow_on_contexts_read_back(tmp_path):
    path = tmp_path / "t.jsonl"
    _write_lines(path, _header_dict(prompt_tokens=7), [
        _record(context=0, target_tokens=7, draft_passes=0, draft_tokens_per_pass=0, proposed=0, accepted=0,
                emitted=1, prefill=True),
        _record(context=7), _record(context=12)])
    assert [r.context for r in read_trace(path)[1]] == [0, 7, 12]


@pytest.mark.parametrize("line, message", [
    ("[" * 100_000, "nested too deeply"),
    ('{"context": ' + "9" * 10_000 + "}", "not valid JSON"),
    (json.dumps(_record(context=4)).replace("4", "NaN", 1), "'context' must be an integer"),
])
def test_pathological_json_is_one_line(tmp_path, line, message):
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps(_header_dict()) + "\n" + line + "\n")
    with pytest.raises(InputError, match=message) as info:
        read_trace(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_mean_accepted_counts_the_bonus_and_skips_the_prefill():
    prefill = StepRecord(0, 5, 0, 0, 0, 0, 1, prefill=True)
    steps = [StepRecord(5, 8, 7, 1, 7, 3, 4), StepRecord(9, 8, 7, 1, 7, 0, 1), StepRecord(10, 8, 7, 1, 7, 7, 5)]
    assert accepted_lengths([prefill, *steps]) == [4, 1, 8]
    assert mean_accepted([prefill, *steps]) == pytest.approx(13 / 3)
    assert mean_accepted_of(10, 3) == pytest.approx(13 / 3)
    assert mean_accepted([StepRecord(5, 1, 0, 0, 0, 0, 1)] * 4) == 1.0        # plain decoding
    assert mean_accepted([prefill]) == 0.0 and mean_accepted_of(0, 0) == 0.0


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="trace .*: no such file"):
        read_trace(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="empty trace"):
        read_trace(empty)
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text(json.dumps(_header_dict()) + "\n{not json\n")
    with pytest.raises(InputError, match=":2: not valid JSON"):
        read_trace(garbled)


# ----- fuzzing the reader: any line gives a valid trace or one InputError, fast -----------------
_VALID_LINES = [json.dumps(_header_dict(prompt_tokens=7)),
                json.dumps(_record(context=0, target_tokens=7, draft_passes=0, draft_tokens_per_pass=0,
                                   proposed=0, accepted=0, emitted=1, prefill=True)),
                json.dumps(_record(context=7, branches=4, coverage_hit=True, wall_s=0.01)),
                json.dumps(_record(context=12))]
_FIELDS = sorted({*_header_dict(), *_record(), "branches", "coverage_hit", "wall_s", "prefill"})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=4),
                                                                  inner, max_size=4),
    max_leaves=12)


@st.composite
def mutated_line(draw) -> str:
    """A valid line with characters replaced, inserted or cut; a field set to any JSON value; or noise."""
    kind = draw(st.sampled_from(["chars", "field", "noise", "nesting"]))
    line = draw(st.sampled_from(_VALID_LINES))
    if kind == "chars":
        chars = list(line)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(chars)))
            action = draw(st.sampled_from(["replace", "insert", "cut"]))
            new = draw(st.characters(codec="utf-8"))
            if action == "insert" or at == len(chars):
                chars.insert(at, new)
            elif action == "replace":
                chars[at] = new
            else:
                del chars[at:at + draw(st.integers(1, 20))]
        return "".join(chars)
    if kind == "field":
        obj = json.loads(line)
        obj[draw(st.sampled_from(_FIELDS))] = draw(json_values)
        return json.dumps(obj)
    if kind == "nesting":
        depth = draw(st.integers(1, 3)) * 40_000
        return draw(st.sampled_from(["[", "{\"a\":", "[{\"b\":"])) * depth
    return draw(st.text(max_size=60))


@given(lines=st.lists(st.tuples(st.integers(0, 3), mutated_line()), min_size=1, max_size=6))
def test_fuzzed_traces_give_a_trace_or_one_input_error(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("fuzz")
    for i, (position, line) in enumerate(lines):
        text = list(_VALID_LINES)
        text[position] = line
        path = folder / f"{i}.jsonl"
        path.write_text("\n".join(text) + "\n", encoding="utf-8", errors="surrogatepass")
        started = time.perf_counter()
        try:
            header, records = read_trace(path)
        except InputError as exc:
            message = str(exc)
            assert "\n" not in message and len(message) < 400 and str(path) in message
        else:
            assert isinstance(header, TraceHeader) and all(isinstance(r, StepRecord) for r in records)
        assert time.perf_counter() - started < 2.0
