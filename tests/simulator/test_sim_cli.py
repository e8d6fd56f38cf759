"""`mirrorstream simulate`: the embedded default, JSON, traces, timelines, and one-line errors."""
from __future__ import annotations

import json

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
    (["--target-hw", "rtx-4090", "--tp", "1"], "needs"),
    (["--methods", "ar,warp"], "unknown method 'warp'"),
    (["--target-hw", "tpu-v9"], "tpu-v9"),
    (["--acceptance", "1.5"], "--acceptance"),
    (["--tasks", "qa"], "--tasks: give Spec-Bench tasks or a synthetic workload"),
    (["--gamma", "-1"], "--gamma"),
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
