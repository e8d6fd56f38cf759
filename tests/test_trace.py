"""The trace schema: round trip, and one clear error per kind of bad file."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl.errors import InputError
from refimpl.trace import SCHEMA, VERSION, StepRecord, TraceHeader, TraceWriter, read_trace, write_trace

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


records_strategy = st.lists(
    st.builds(
        lambda ctx, rows, passes, per, proposed, acc_frac, bonus, branches, hit, wall: StepRecord(
            context=ctx, target_tokens=rows, draft_passes=passes, draft_tokens_per_pass=per if passes else 0,
            proposed=proposed, accepted=int(acc_frac * proposed), emitted=int(acc_frac * proposed) + bonus,
            branches=branches, coverage_hit=hit, wall_s=wall),
        st.integers(0, 10**6), st.integers(1, 300), st.integers(0, 9), st.integers(1, 4),
        st.integers(0, 64), st.floats(0, 1), st.integers(0, 1),
        st.none() | st.integers(1, 64), st.none() | st.booleans(),
        st.none() | st.floats(0, 10, allow_nan=False)),
    max_size=20)


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
])
def test_bad_traces_raise_one_line(tmp_path, header, records, message):
    path = tmp_path / "bad.jsonl"
    _write_lines(path, header, records)
    with pytest.raises(InputError, match=message) as info:
        read_trace(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text


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
