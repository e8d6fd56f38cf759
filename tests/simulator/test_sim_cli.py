"""`mirrorstream simulate`: the embedded default, JSON, traces, timelines, and one-line errors."""
from __future__ import annotations

import json
import time

import pytest

from mirrorstream.cli import main
from refimpl.trace import SCHEMA, write_trace
from simulator import AcceptanceModel
from simulator.workload import Shape, Task, synthesize

SMALL = ["--prompts", "2", "--prompt-tokens", "32", "--new-tokens", "64"]


def _json(capsys, argv):
    assert main(["simulate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_no_arguments_runs_the_mirror_sd_testbed(capsys):
    assert main(["simulate"]) == 0
    out = capsys.readouterr().out
    assert "qwen3-32b on 8 x m2-ultra-gpu" in out and "γ=7 κ=8" in out and "480 synthetic prompts" in out
    table, breakdown = out.split("\n\n")
    rows = {line.split()[0]: line.split() for line in table.splitlines()[4:]}
    assert set(rows) == {"ar", "sd", "mirror", "mirror+ss"}
    assert "target_prefix" in breakdown and "fallback_draft" in breakdown
    assert float(rows["ar"][2]) == 1.0
    assert float(rows["mirror+ss"][2]) > float(rows["sd"][2]) > 1.0


def test_json_has_every_method_with_speedup_over_ar(capsys):
    report = _json(capsys, [*SMALL, "--acceptance", "0.8", "--coverage", "0.7", "--methods",
                            "sd,ss,medusa,eagle,mirror,mirror+ss"])
    methods = report["methods"]
    assert list(methods) == ["ar", "sd", "ss", "medusa", "eagle", "mirror", "mirror+ss"]
    assert methods["ar"]["speedup"] == 1.0
    for name, m in methods.items():
        assert m["speedup"] == pytest.approx(methods["ar"]["seconds"] / m["seconds"])
        assert m["tokens"] == 2 * 64
        assert m["tokens_per_s"] == pytest.approx(m["tokens"] / m["seconds"])
        assert sum(m["breakdown_s"].values()) == pytest.approx(m["seconds"])
        assert {"tpot_s", "mean_accepted", "utilisation"} <= set(m)
    assert report["speculation"]["kappa"] == 8 and report["workload"]["coverage"] == 0.7


def test_batch_picks_kappa(capsys):
    report = _json(capsys, [*SMALL, "--batch", "16", "--methods", "mirror"])
    assert report["speculation"]["kappa"] == 4 and report["system"]["batch"] == 16


def test_traces_and_timelines(tmp_path, capsys):
    paths = []
    task = Task("t", prompts=2, prompt_tokens=20, new_tokens=50)
    for i, trace in enumerate(synthesize("sd", [task], AcceptanceModel(0.7), Shape(gamma=7))):
        paths.append(str(tmp_path / f"p{i}.jsonl"))
        write_trace(paths[-1], trace.header, trace.records)
    chrome, plot = tmp_path / "t.json", tmp_path / "t.png"
    report = _json(capsys, ["--trace", *paths, "--methods", "sd,mirror", "--chrome-trace", str(chrome),
                            "--plot", str(plot)])
    assert report["methods"]["sd"]["tokens"] == 100 and report["workload"]["traces"] == paths
    events = json.loads(chrome.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["cat"] for e in spans} == {"target", "draft", "link"} and all(e["dur"] >= 0 for e in spans)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def _bad_trace(tmp_path, header_changes=None, record_changes=None):
    header = {"schema": SCHEMA, "version": 1, "method": "sd", "params": {}, "target": "qwen3-32b",
              "draft": None, "seed": 0, "prompt_tokens": 4}
    record = {"context": 4, "target_tokens": 8, "draft_passes": 7, "draft_tokens_per_pass": 1,
              "proposed": 7, "accepted": 2, "emitted": 3}
    header.update(header_changes or {})
    record.update(record_changes or {})
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(header) + "\n" + json.dumps(record) + "\n")
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["--kappa", "0"], "--kappa"),
    (["--kappa", "1000000"], "--kappa: 1000000 exceeds the vocabulary"),
    (["--exit-layer", "64"], "--exit-layer: 64 is outside model"),
    (["--exit-layer", "0"], "--exit-layer"),
    (["--draft-dtype", "bf16"], "does not support bf16"),
    (["--target-hw", "rtx-4090", "--tp", "1", "--link", "pcie-4"], "needs"),
    (["--methods", "ar,warp"], "unknown method 'warp'"),
    (["--target-hw", "tpu-v9"], "tpu-v9"),
    (["--acceptance", "1.5"], "--acceptance"),
    (["--tasks", "qa"], "--tasks: give Spec-Bench tasks or a synthetic workload"),
    (["--gamma", "-1"], "--gamma"),
    (["--memory-contention", "0.5"], "--memory-contention: must be a number in [1, 1000]"),
    (["--compute-contention", "nan"], "--compute-contention"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert main(["simulate", *SMALL, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_task(capsys):
    assert main(["simulate", "--tasks", "qa,poetry"]) == 2
    assert "--tasks: unknown task(s) poetry" in capsys.readouterr().err


@pytest.mark.parametrize("header, record, message", [
    ({"version": 2}, None, "version 2 is not supported"),
    (None, {"wall_s": -1.0}, "wall_s"),
    (None, {"context": -3}, "'context' must be an integer >= 0"),
])
def test_bad_traces_are_one_line_and_exit_2(tmp_path, capsys, header, record, message):
    path = _bad_trace(tmp_path, header, record)
    assert main(["simulate", "--trace", path]) == 2
    err = capsys.readouterr().err
    assert message in err and path in err and err.count("\n") == 1


def test_traces_choose_the_default_methods(tmp_path, capsys):
    task = Task("t", prompts=1, prompt_tokens=20, new_tokens=30)
    trace = synthesize("ss", [task], AcceptanceModel(0.7), Shape(gamma=4, tree_nodes=12))[0]
    path = tmp_path / "ss.jsonl"
    write_trace(path, trace.header, trace.records)
    assert list(_json(capsys, ["--trace", str(path)])["methods"]) == ["ar", "ss"]


# ----- issue 8: bad input is one line, exit 2, at once; defaults say what they are -------------
def _timed_error(capsys, argv) -> str:
    started = time.perf_counter()
    assert main(["simulate", *argv]) == 2
    assert time.perf_counter() - started < 2.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, message", [
    (["--prompts", "1", "--new-tokens", "100000000"], "more than the 16777216-token context of the trace schema"),
    (["--prompts", "1", "--new-tokens", "40000", "--prompt-tokens", "962"],
     "962 prompt + 40000 new tokens need 40961 tokens of context, more than the 40960-token context of qwen3-32b"),
    (["--seed", "-1"], "--seed: must be an integer >= 0"),
    (["--plot", "x.txt"], "--plot: x.txt: give a file name ending in .png"),
    (["--gamma", "0"], "--gamma: must be an integer >= 1"),
    (["--ss-streams", "0"], "--ss-streams: must be an integer >= 1"),
    (["--methods", ""], "--methods: give at least one method"),
    (["--methods", " , "], "--methods: give at least one method"),
    (["--tp", "3"], "--tp: 3 does not divide the 64 attention heads of qwen3-32b"),
    (["--target-hw", "a100-80gb"], "--link: name the link between a100-80gb and m2-ultra-ane"),
])
def test_degenerate_options_are_rejected(capsys, argv, message):
    assert message in _timed_error(capsys, [*SMALL, *argv] if "--prompts" not in argv else argv)


def test_testbed_defaults_apply_to_the_testbed_only(capsys):
    report = _json(capsys, [*SMALL, "--target-hw", "a100-80gb", "--draft-hw", "a100-80gb", "--methods", "sd"])
    assert report["system"] | {} == {**report["system"], "tp": 1, "draft_tp": 1, "link": "nvlink-3",
                                     "target_hw": "a100-80gb", "draft_hw": "a100-80gb"}
    testbed = _json(capsys, [*SMALL, "--methods", "sd"])["system"]
    assert (testbed["tp"], testbed["draft_tp"], testbed["link"]) == (8, 8, "m2-ultra-unified")
    given = _json(capsys, [*SMALL, "--target-hw", "a100-80gb", "--draft-hw", "a100-80gb", "--tp", "2",
                           "--link", "pcie-4", "--methods", "sd"])["system"]
    assert (given["tp"], given["draft_tp"], given["link"]) == (2, 1, "pcie-4")


def _trace_file(tmp_path, method="sd", gamma=5, target="qwen3-14b", draft="qwen3-0.6b", name="t.jsonl"):
    task = Task("t", prompts=1, prompt_tokens=20, new_tokens=60)
    trace = synthesize(method, [task], AcceptanceModel(0.7), Shape(gamma=gamma), target=target, draft=draft)[0]
    path = tmp_path / name
    write_trace(path, trace.header, trace.records)
    return path


def test_a_trace_brings_its_own_model_and_gamma(tmp_path, capsys):
    path = _trace_file(tmp_path)
    assert main(["simulate", "--trace", str(path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("qwen3-14b on 8 x m2-ultra-gpu, draft qwen3-0.6b") and "γ=5 " in first
    report = _json(capsys, ["--trace", str(path), "--target", "qwen3-32b", "--gamma", "3"])
    assert report["system"]["target"] == "qwen3-32b" and report["speculation"]["gamma"] == 3
    shaped = {"name": "tiny", "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 1000,
              "max_position_embeddings": 256}
    report = _json(capsys, ["--trace", str(_trace_file(tmp_path, target=shaped, name="s.jsonl"))])
    assert report["system"]["target"] == "tiny"
    other = _trace_file(tmp_path, target="qwen3-32b", name="u.jsonl")
    err = _timed_error(capsys, ["--trace", str(path), str(other)])
    assert "--target: the traces differ" in err


@pytest.mark.parametrize("header, record, message", [
    ({"target": "gpt-17"}, None, "header's target: model: unknown model 'gpt-17'"),
    ({"draft": {"hidden_size": "wide"}}, None, "header's draft"),
    (None, {"proposed": 10**12, "accepted": 10**12, "emitted": 10**12}, "more than this schema allows"),
    (None, {"proposed": 10**6, "accepted": 10**6, "emitted": 10**6}, "more than this schema allows"),
    (None, {"draft_passes": 10**12, "draft_tokens_per_pass": 1}, "more than this schema allows"),
    (None, {"context": 5}, ":2: 'context' is 5, but the prompt has 4 tokens"),
])
def test_bad_trace_contents_are_rejected_at_once(tmp_path, capsys, header, record, message):
    path = _bad_trace(tmp_path, header, record)
    assert message in _timed_error(capsys, ["--trace", path])


def test_contexts_must_follow_on(tmp_path, capsys):
    path = tmp_path / "jump.jsonl"
    good = {"context": 4, "target_tokens": 8, "draft_passes": 7, "draft_tokens_per_pass": 1,
            "proposed": 7, "accepted": 2, "emitted": 3}
    header = {"schema": SCHEMA, "version": 1, "method": "sd", "params": {}, "target": "qwen3-32b",
              "draft": None, "seed": 0, "prompt_tokens": 4}
    path.write_text("\n".join(json.dumps(o) for o in [header, good, {**good, "context": 10**15}]) + "\n")
    assert ":3: 'context' is 1000000000000000" in _timed_error(capsys, ["--trace", str(path)])
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps(header) + "\n" + "[" * 100_000 + "\n")
    assert ":2: JSON nested too deeply" in _timed_error(capsys, ["--trace", str(deep)])


def test_a_trace_longer_than_the_models_context_is_rejected(tmp_path, capsys):
    shaped = {"name": "short", "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 1000,
              "max_position_embeddings": 64}
    path = _trace_file(tmp_path, target=shaped)          # 20 prompt + 60 new tokens
    assert "reaches 79 tokens of context, more than the 64-token context of short" in \
        _timed_error(capsys, ["--trace", str(path)])


def test_a_workload_that_just_fits_the_context_runs(capsys):
    report = _json(capsys, ["--prompts", "1", "--prompt-tokens", "961", "--new-tokens", "40000", "--methods", "sd"])
    assert report["methods"]["sd"]["tokens"] == 40000


def test_mean_accepted_is_the_trace_schemas(capsys):
    report = _json(capsys, [*SMALL, "--methods", "sd"])
    assert report["methods"]["ar"]["mean_accepted"] == 1.0
    assert report["methods"]["sd"]["mean_accepted"] > 1.0
