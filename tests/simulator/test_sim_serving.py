"""Request-level serving: arrivals, continuous batching, latency percentiles, and bad arrivals."""
from __future__ import annotations

import numpy as np
import pytest

from mirrorstream.cli import main
from simulator import AcceptanceModel, ConstantCosts, SimConfig, Task, Workload, simulate
from simulator.errors import InputError
from simulator.serving import _Shapers, check_arrivals, poisson_arrivals, serve, serve_method

COSTS = ConstantCosts(target_prefix=0.004, target_suffix=0.006, draft_pass=0.001, rendezvous=2e-5)
TASK = Task("t", prompts=6, prompt_tokens=30, new_tokens=80)
WORKLOAD = Workload([TASK], AcceptanceModel(0.7, 0.6), seed=3)
METHODS = ["ar", "sd", "mirror", "mirror+ss", "medusa"]


@pytest.mark.parametrize("method", METHODS)
def test_requests_far_apart_are_served_alone(method):
    """Each request alone on the server: its latency is its batch-1 run, its TTFT its prefill."""
    arrivals = np.arange(TASK.prompts) * 100.0
    served = serve_method(method, WORKLOAD, SimConfig(gamma=5), arrivals, costs=COSTS)
    alone = simulate(WORKLOAD, SimConfig(gamma=5), [method], costs=COSTS)[method]
    m = served.metrics()
    latencies = [r.finish - r.arrival for r in served.requests]
    assert sum(latencies) == pytest.approx(alone.seconds, rel=1e-12)
    assert m["tokens"] == alone.tokens == TASK.prompts * TASK.new_tokens
    prefill = {"ar": 0.010, "medusa": 0.010, "sd": 0.011, "mirror": 0.010, "mirror+ss": 0.010}[method]
    assert m["ttft_s"]["p50"] == pytest.approx(prefill, rel=1e-12) == m["ttft_s"]["p99"]
    assert m["mean_batch"] == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_all_at_once_equals_static_batching(method):
    """Everyone at t = 0 with room for all: continuous batching is the static batch (κ, streams fixed)."""
    config = SimConfig(gamma=5, batch=TASK.prompts, kappa=8, ss_streams=2)
    served = serve_method(method, WORKLOAD, config, np.zeros(TASK.prompts), costs=COSTS)
    static = simulate(WORKLOAD, config, [method], costs=COSTS)[method]
    assert max(r.finish for r in served.requests) == pytest.approx(static.seconds, rel=1e-12)
    assert served.metrics()["tokens"] == static.tokens


def test_a_finished_request_frees_its_slot_for_a_waiting_one():
    config = SimConfig(gamma=5, batch=2)
    served = serve_method("sd", WORKLOAD, config, np.zeros(TASK.prompts), costs=COSTS)
    by_arrival = served.requests
    # Requests 3.. waited: each started right when an earlier one finished.
    finishes = sorted(r.finish for r in by_arrival[:2])
    assert by_arrival[2].first_token > finishes[0]
    assert served.mean_batch <= 2
    wider = serve_method("sd", WORKLOAD, SimConfig(gamma=5, batch=6), np.zeros(TASK.prompts), costs=COSTS)
    assert wider.metrics()["ttft_s"]["p90"] < served.metrics()["ttft_s"]["p90"]


def test_kappa_and_streams_follow_the_batch():
    shapers = _Shapers("mirror+ss", SimConfig(gamma=7))
    for batch, kappa, ss_tokens in [(1, 8, 3), (8, 8, 3), (16, 4, 2), (32, 2, 2), (64, 1, 2)]:
        record = shapers(batch)(100, 7, 3, 4, True)
        assert record.branches == kappa * 8 and record.draft_tokens_per_pass == ss_tokens, batch
    fixed = _Shapers("mirror", SimConfig(gamma=7, kappa=3))(64)(100, 7, 3, 4, True)
    assert fixed.branches == 3 * 8


def test_heavier_load_queues_longer():
    config = SimConfig(gamma=5, batch=4)
    light = serve(WORKLOAD, config, ["sd"], poisson_arrivals(0.5, TASK.prompts, seed=1), costs=COSTS)["sd"]
    heavy = serve(WORKLOAD, config, ["sd"], poisson_arrivals(500.0, TASK.prompts, seed=1), costs=COSTS)["sd"]
    assert heavy.metrics()["ttft_s"]["p90"] > light.metrics()["ttft_s"]["p90"]
    assert heavy.mean_batch > light.mean_batch


def test_poisson_arrivals_have_the_rate():
    times = poisson_arrivals(20.0, 20_000, seed=5)
    gaps = np.diff(times)
    assert times[0] == 0.0 and np.all(gaps >= 0)
    z = (gaps.mean() - 1 / 20.0) / (gaps.std(ddof=1) / np.sqrt(gaps.size))
    assert abs(z) < 4
    wrong = (gaps.mean() - 1 / 19.0) / (gaps.std(ddof=1) / np.sqrt(gaps.size))   # negative control: 5 % off
    assert abs(wrong) > 4


@pytest.mark.parametrize("times, message", [
    ([0.0, 0.5, 0.2], "not sorted (arrival 3, 0.2, comes before arrival 2, 0.5)"),
    ([-1.0, 0.0], "arrival 1 is -1.0"),
    ([0.0, float("nan")], "arrival 2 is nan"),
    ([], "at least one arrival"),
])
def test_bad_arrivals_are_input_errors(times, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_arrivals(times)


def test_more_arrivals_than_prompts_is_an_input_error():
    with pytest.raises(InputError, match="7 requests but the workload has only 6 prompts"):
        serve_method("sd", WORKLOAD, SimConfig(), np.zeros(7), costs=COSTS)


@pytest.mark.parametrize("rate", ["0", "-2", "nan", "inf"])
def test_bad_rates_exit_2(capsys, rate):
    assert main(["simulate", "--prompts", "4", "--new-tokens", "32", "--arrival-rate", rate]) == 2
    err = capsys.readouterr().err
    assert "--arrival-rate: must be a finite number" in err and err.count("\n") == 1


@pytest.mark.parametrize("text, message", [("0\n0.5\n0.2\n", "not sorted"), ("0\n-3\n", "arrival 2 is -3.0"),
                                           ("0\nsoon\n", ":2: not a number"), ("", "at least one")])
def test_bad_arrival_files_exit_2(tmp_path, capsys, text, message):
    path = tmp_path / "arrivals.txt"
    path.write_text(text)
    assert main(["simulate", "--prompts", "4", "--new-tokens", "32", "--arrivals", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and err.count("\n") == 1


def test_arrival_files_that_are_not_files_exit_2(tmp_path, capsys):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"0\n\xff\xfe\n")
    for path, message in [(fifo, "not a regular file"), (tmp_path, "not a regular file"),
                          (tmp_path / "missing", "no such file"), (binary, "not UTF-8")]:
        assert main(["simulate", "--prompts", "4", "--new-tokens", "32", "--arrivals", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, path


def test_serving_cli_reports_percentiles(tmp_path, capsys):
    import json

    path = tmp_path / "arrivals.txt"
    path.write_text("# seconds\n0\n0.05\n0.05\n1.0\n")
    assert main(["simulate", "--prompts", "4", "--new-tokens", "32", "--arrivals", str(path), "--batch", "4",
                 "--methods", "sd,mirror", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["serving"]
    assert list(report) == ["ar", "sd", "mirror"]
    for m in report.values():
        assert m["requests"] == 4 and m["tokens"] == 4 * 32
        assert m["ttft_s"]["p50"] <= m["ttft_s"]["p90"] <= m["ttft_s"]["p99"]
        assert 0 < m["tpot_s"]["p50"] and m["throughput_tokens_per_s"] > 0
