"""Error bars: unconfirmed parameters and calibration residuals give intervals around a prediction."""
from __future__ import annotations

import dataclasses

import hwmodels
import pytest

from hwmodels.fitted import load_calibration

from mirrorstream.cli import main
from simulator import AcceptanceModel, Group, SimConfig, Task, Workload, simulate
from simulator.errors import InputError
from simulator.uncertainty import parameters, parse_range, predict_with_uncertainty

WORKLOAD = Workload([Task("t", prompts=2, prompt_tokens=64, new_tokens=96)], AcceptanceModel(0.8, 0.7))


def test_the_testbeds_unconfirmed_parameters_have_prior_ranges():
    found = {u.name: u for u in parameters(SimConfig())}
    for name in ("m2-ultra-ane.memory_bandwidth", "m2-ultra-ane.pass_overhead_s", "m2-ultra-ane.layer_overhead_s",
                 "m2-ultra-gpu.link_alpha_s"):                     # the Thunderbolt all-reduce latency
        u = found[name]
        assert (u.low, u.high) == (u.nominal / 2, u.nominal * 2)
    assert "m2-ultra-gpu.memory_bandwidth" not in found          # a published number is not in doubt
    given = {u.name: u for u in parameters(SimConfig(), {"m2-ultra-ane.memory_bandwidth": (1e11, 3e11)})}
    assert (given["m2-ultra-ane.memory_bandwidth"].low, given["m2-ultra-ane.memory_bandwidth"].high) == (1e11, 3e11)


def test_each_move_is_a_rerun_with_that_parameter_and_the_interval_adds_them_in_quadrature():
    report = predict_with_uncertainty(WORKLOAD, SimConfig(), ["ar", "sd", "mirror"])
    move = next(m for m in report["parameters"] if m["parameter"] == "m2-ultra-ane.memory_bandwidth")
    slow_ane = hwmodels.get_device("m2-ultra-ane").with_params(memory_bandwidth=1e11)
    direct = simulate(WORKLOAD, SimConfig(draft=Group(slow_ane, tp=8), link="m2-ultra-unified"), ["mirror"])
    assert move["at_low"]["mirror"]["speedup"] == direct["mirror"].speedup
    nominal = simulate(WORKLOAD, SimConfig(), ["sd", "mirror"])
    for method in ("sd", "mirror"):
        m = report["methods"][method]["speedup"]
        assert m["value"] == nominal[method].speedup
        ups = [max(mv[end][method]["speedup"] - m["value"], 0) for mv in report["parameters"]
               for end in ("at_low", "at_high")]
        downs = [max(m["value"] - mv[end][method]["speedup"], 0) for mv in report["parameters"]
                 for end in ("at_low", "at_high")]
        assert max(ups) <= m["high"] - m["value"] <= sum(ups) + 1e-12
        assert max(downs) <= m["value"] - m["low"] <= sum(downs) + 1e-12
        assert m["low"] < m["value"] < m["high"]


def test_point_ranges_give_no_interval():
    """Negative control: every parameter pinned to its catalog value leaves nothing to move."""
    pinned = {u.name: (u.nominal, u.nominal) for u in parameters(SimConfig())}
    report = predict_with_uncertainty(WORKLOAD, SimConfig(), ["sd"], pinned)
    m = report["methods"]["sd"]["speedup"]
    assert m["low"] == m["value"] == m["high"]


def test_a_calibrated_device_carries_its_residual():
    config = SimConfig(target_model="llama-3.1-8b", draft_model="qwen3-0.6b",
                       target=Group("h100-sxm@specdecode-bench-llama31-8b-h100", tp=1),
                       draft=Group("h100-sxm", tp=1))
    workload = Workload([Task("t", prompts=1, prompt_tokens=32, new_tokens=48)], AcceptanceModel(0.8, 0.7))
    report = predict_with_uncertainty(workload, config, ["sd"])
    move = next(m for m in report["parameters"] if m["parameter"] == "target calibration")
    shipped = load_calibration("specdecode-bench-llama31-8b-h100")["fit"]["max_abs_loo_error"]
    assert 0.01 < shipped < 0.1 and move["high"] - 1 == pytest.approx(shipped, rel=1e-9)
    assert move["at_high"]["sd"]["seconds"] > report["methods"]["sd"]["seconds"]["value"]


@pytest.mark.parametrize("text, message", [
    ("m2-ultra-ane.memory_bandwidth=4e11:1e11", "must be finite with 0 <= low <= high"),
    ("m2-ultra-ane.memory_bandwidth=1e11", "expected KEY.PARAM=LOW:HIGH"),
    ("bandwidth=1:2", "expected KEY.PARAM=LOW:HIGH"),
    ("m2-ultra-ane.memory_bandwidth=nan:1", "must be finite"),
])
def test_bad_ranges(text, message):
    with pytest.raises(InputError, match=message):
        parse_range(text)


@pytest.mark.parametrize("argv, message", [
    (["--range", "m2-ultra-ane.memory_bandwidth=4e11:1e11"], "--range: m2-ultra-ane.memory_bandwidth=4e11:1e11"),
    (["--range", "tpu.speed=1:2"], "--range: tpu.speed is not a parameter"),
    (["--uncertainty", "--plot", "x.png"], "not with --uncertainty"),
])
def test_bad_uncertainty_options_exit_2(capsys, argv, message):
    assert main(["simulate", "--prompts", "1", "--new-tokens", "16", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_uncertainty_cli_json(capsys):
    import json

    assert main(["simulate", "--prompts", "1", "--new-tokens", "32", "--uncertainty", "--methods", "mirror",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["uncertainty"]
    m = report["methods"]["mirror"]["speedup"]
    assert m["low"] <= m["value"] <= m["high"] and len(report["parameters"]) >= 5
