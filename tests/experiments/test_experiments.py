"""The experiments runner: report, JSON summary, bad input, local and Dask sweeps."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from experiments import whatif
from experiments.runner import ExperimentError, run_experiments
from experiments.sweep import LocalPool, open_pool


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "mirrorstream.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def square(x):
    return x * x


def test_list_names_every_experiment():
    done = _cli("experiments", "list")
    assert done.returncode == 0
    from experiments.runner import EXPERIMENTS
    assert [line.split()[0] for line in done.stdout.splitlines()] == list(EXPERIMENTS)


def test_whatif_quick_writes_report_figures_and_summary(tmp_path):
    done = _cli("experiments", "run", "whatif", "--quick", "--out", str(tmp_path), "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["experiments"] == ["whatif"] and summary["skipped"] == {}
    report = (tmp_path / "REPORT.md").read_text()
    for study in whatif.STUDIES:
        figure = tmp_path / f"whatif_{study}.png"
        assert figure.stat().st_size > 5000 and f"](whatif_{study}.png)" in report
    # the testbed point is the same simulation whichever study reaches it
    assert summary["whatif_testbed_mirror_speedup"] > 1.0
    rows = [line for line in report.splitlines() if line.startswith("| qwen3-0.6b")]
    assert rows and f"{summary['whatif_testbed_mirror_speedup']:.2f}" in rows[0]


def test_unknown_experiment_is_one_line_exit_2(tmp_path):
    done = _cli("experiments", "run", "no-such", "--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no-such" in done.stderr
    assert not (tmp_path / "REPORT.md").exists()


def test_unwritable_out_dir_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = _cli("experiments", "run", "whatif", "--quick", "--out", str(blocker / "sub"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--out" in done.stderr


def test_coverage_prior_passes_through_the_measured_points():
    assert whatif.coverage_for(8, 0.5, "lens") == pytest.approx(0.242)
    assert whatif.coverage_for(1, 0.5, "lens") == pytest.approx(0.114)
    assert whatif.coverage_for(16, 0.5, "lens") == pytest.approx(0.288)
    assert whatif.coverage_for(8, 0.625, "lens") == pytest.approx(0.62)
    assert whatif.coverage_for(8, 0.5, "premise") == pytest.approx(0.7)
    kappas = [whatif.coverage_for(k, 0.5, "lens") for k in (1, 2, 4, 8, 16)]
    depths = [whatif.coverage_for(8, d, "premise") for d in (0.1, 0.25, 0.5, 0.625, 0.875)]
    assert kappas == sorted(kappas) and depths == sorted(depths) and max(depths) <= 1.0


def test_local_pool_keeps_point_order():
    with open_pool(None, progress=False, workers=2) as pool:
        assert pool.map(square, list(range(12))) == [x * x for x in range(12)]
    assert LocalPool(1, progress=False).map(square, [3, 1, 2]) == [9, 1, 4]


def test_dask_cluster_gives_the_local_results():
    distributed = pytest.importorskip("distributed")
    point = ("gamma", 4, "lens", 1)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        with open_pool(cluster.scheduler_address, progress=False) as pool:
            remote = pool.map(whatif.simulate_point, [point, ("npu", 2, "premise", 1)])
    assert remote[0] == whatif.simulate_point(point)
    assert remote[0] != remote[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_dask_address_fails_in_bounded_time(tmp_path):
    pytest.importorskip("distributed")
    started = time.monotonic()
    done = _cli("experiments", "run", "whatif", "--quick", "--out", str(tmp_path),
                "--dask", f"tcp://127.0.0.1:{_free_port()}", timeout=60)
    assert done.returncode == 2 and "--dask" in done.stderr and done.stderr.count("\n") == 1
    assert time.monotonic() - started < 40


def test_run_experiments_checks_every_name_before_running(tmp_path):
    with pytest.raises(ExperimentError, match="nope"):
        run_experiments(["whatif", "nope"], tmp_path, quick=True)
    assert not any(tmp_path.iterdir())


def test_sim_vs_cpu_skips_with_the_reason_without_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRRORSTREAM_MODELS", str(tmp_path / "none"))
    sections = run_experiments(["sim-vs-cpu"], tmp_path / "out", quick=True)
    assert "absent" in sections["sim-vs-cpu"].skipped and not sections["sim-vs-cpu"].failed


def test_a_failing_experiment_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("planted")
    monkeypatch.setattr(whatif, "run", broken)
    monkeypatch.setenv("MIRRORSTREAM_MODELS", str(tmp_path / "none"))
    sections = run_experiments(["whatif", "sim-vs-cpu"], tmp_path / "out", quick=True)
    assert sections["whatif"].failed == "RuntimeError: planted"
    assert sections["sim-vs-cpu"].skipped


def test_lookup_trace_replays_faster_than_ar_by_the_tokens_per_pass(tmp_path):
    """A lookup trace whose every step commits two tokens with one 2-row pass: the simulated
    speedup over ar lies between 1 and 2 (a 2-row pass costs at least a 1-row one)."""
    from experiments.sim_vs_cpu import _simulated_speedup
    from hwmodels.cpu import cpu_device
    from refimpl.trace import StepRecord, TraceHeader, write_trace

    records = [StepRecord(context=0, target_tokens=4, draft_passes=0, draft_tokens_per_pass=0, proposed=0,
                          accepted=0, emitted=1, prefill=True)]
    context = 4
    for _ in range(40):
        records.append(StepRecord(context=context, target_tokens=2, draft_passes=0, draft_tokens_per_pass=0,
                                  proposed=1, accepted=1, emitted=2))
        context += 2
    path = tmp_path / "lookup.jsonl"
    write_trace(path, TraceHeader(method="lookup", params={"gamma": 1, "ngram": 2}, target="stories15m",
                                  seed=0, prompt_tokens=4), records)
    speedup = _simulated_speedup("lookup", [str(path)], cpu_device(), 1)
    assert 1.0 < speedup < 2.0


def test_table1_infers_lower_acceptance_where_the_paper_reports_slower_sd():
    """At T = 1 the paper's vanilla SD is slower on every 14B task, so the α inferred from it
    must be lower, task by task; the published columns come from the right table."""
    from experiments.table1 import predict_cell
    cold = {c["task"]: c for c in predict_cell((0, "qwen3-14b", 1))}
    warm = {c["task"]: c for c in predict_cell((1, "qwen3-14b", 1))}
    assert warm["translation"]["paper_sd"] == 2.19 and cold["translation"]["paper_sd"] == 2.34
    for task, cell in warm.items():
        assert cell["paper_sd"] < cold[task]["paper_sd"]
        assert cell["alpha"] < cold[task]["alpha"]
        low, high = min(cell["mirror"]), max(cell["mirror"])
        assert low <= cell["mirror"][0] <= high   # the prior's centre lies inside its range


def test_the_h100_pair_drafts_on_the_catalogs_datacenter_npu():
    from experiments.whatif import STUDIES, _pair
    from simulator import SimConfig
    config = _pair(SimConfig(), "h100+inferentia2")
    assert config.target.device == "h100-sxm" and config.draft.device == "inferentia2"
    assert "h100+inferentia2" in STUDIES["pairs"][1]


def _mirror_trace(path, overlap: bool):
    from refimpl.trace import StepRecord, TraceHeader, write_trace
    records = [StepRecord(context=0, target_tokens=4, draft_passes=0, draft_tokens_per_pass=0, proposed=0,
                          accepted=0, emitted=1, prefill=True)]
    context = 4
    for step in range(30):
        accepted = step % 4
        records.append(StepRecord(context=context, target_tokens=4, draft_passes=3, draft_tokens_per_pass=1,
                                  proposed=3, accepted=accepted, emitted=accepted + 1, branches=8,
                                  coverage_hit=step % 3 != 0))
        context += accepted + 1
    write_trace(path, TraceHeader(method="mirror", params={"gamma": 3, "exit_layer": 3, "kappa": 2,
                                                           "overlap": overlap, "draft_layers": 2, "rollout": "tree"},
                                  target="stories15m", seed=0, prompt_tokens=4), records)
    return str(path)


def test_an_overlapped_mirror_trace_replays_with_the_draft_on_a_second_core_that_shares_the_bus(tmp_path):
    """--overlap traces replay with the draft on its own core: faster than the same steps on one
    core, and slower when the two cores' concurrent work shares the memory bus."""
    from experiments.sim_vs_cpu import _simulated_speedup
    device = _fixed_cpu()
    serial = _simulated_speedup("mirror", [_mirror_trace(tmp_path / "s.jsonl", False)], device, 3, 1.9)
    free = _simulated_speedup("mirror", [_mirror_trace(tmp_path / "o.jsonl", True)], device, 3, 1.0)
    shared = _simulated_speedup("mirror", [_mirror_trace(tmp_path / "o.jsonl", True)], device, 3, 1.9)
    assert serial < shared < free


def _fixed_cpu():
    """A CPU-like device that needs no micro-benchmark."""
    import dataclasses

    from hwmodels import get_device
    return dataclasses.replace(get_device("a100-80gb"), key="cpu-like", peak_flops={"fp32": 9e10},
                               memory_bandwidth=3e10, overlap=0.3, dot_overhead_s=3e-9, tp_link=None)


def _steps_trace(path, method, params, rows, draft_rows, wall_s, steps=30):
    """A trace of `steps` decode steps, each committing one token with a pass of `rows` rows."""
    from refimpl.trace import StepRecord, TraceHeader, write_trace
    records = [StepRecord(context=0, target_tokens=4, draft_passes=0, draft_tokens_per_pass=0, proposed=0,
                          accepted=0, emitted=1, prefill=True, wall_s=0.004)]
    for step in range(steps):
        records.append(StepRecord(context=4 + step, target_tokens=rows, draft_passes=1 if draft_rows else 0,
                                  draft_tokens_per_pass=draft_rows, proposed=rows - 1, accepted=0, emitted=1,
                                  wall_s=wall_s))
    write_trace(path, TraceHeader(method=method, params=params, target="stories15m", seed=0, prompt_tokens=4),
                records)
    return str(path)


def test_the_draft_pass_cost_is_what_makes_medusas_replay_match_its_measured_speedup(tmp_path):
    """Medusa calibration runs whose measured speedup is what the simulator predicts with a
    200 µs head-pass cost give back 200 µs; runs as fast as a free head pass give 0."""
    import dataclasses

    from experiments.sim_vs_cpu import _simulated_speedup, draft_pass_overhead
    device = _fixed_cpu()
    params = {"gamma": 3, "draft_vocab": 1000}
    ar = [_steps_trace(tmp_path / "ar.jsonl", "ar", {}, 1, 0, 0.002)]
    probe = [_steps_trace(tmp_path / "probe.jsonl", "medusa", params, 4, 3, 0.002)]
    truth = _simulated_speedup("medusa", probe, device.with_params(draft_pass_overhead_s=2e-4), 1)
    free = _simulated_speedup("medusa", probe, device.with_params(draft_pass_overhead_s=0.0), 1)
    for speedup, expected in ((truth, 2e-4), (free, 0.0)):
        # the medusa runs' wall time that gives this measured speedup over the ar runs
        wall = (0.004 + 30 * 0.002) / speedup
        medusa = [_steps_trace(tmp_path / "medusa.jsonl", "medusa", params, 4, 3, (wall - 0.004) / 30)]
        got = draft_pass_overhead({"ar": ar, "medusa": medusa}, dataclasses.replace(device, draft_pass_overhead_s=0.0))
        assert got == pytest.approx(expected, abs=2e-6)


def test_calibration_rows_keep_each_timed_pass_at_its_fastest_round(tmp_path):
    import json

    from experiments.sim_vs_cpu import LOOKUP_RUNS, _calibration_rows
    ar = _steps_trace(tmp_path / "ar.jsonl", "ar", {}, 1, 0, 0.002, steps=3)
    lookup = _steps_trace(tmp_path / "lookup.jsonl", "lookup", {"gamma": 1, "ngram": 2}, 2, 0, 0.0025, steps=3)
    (tmp_path / "passes-r0.json").write_text(json.dumps([{"n": 4, "L": 16, "seconds": 0.003},
                                                         {"n": 8, "L": 16, "seconds": 0.004}]))
    (tmp_path / "passes-r1.json").write_text(json.dumps([{"n": 4, "L": 16, "seconds": 0.0026},
                                                         {"n": 8, "L": 16, "seconds": 0.005}]))
    rows = _calibration_rows({"ar": [ar], **{name: [lookup] for name in LOOKUP_RUNS}, "medusa": ["unread"]}, tmp_path)
    passes = {(r["n"], r["L"]): r["seconds"] for r in rows if "method" not in r and r["L"] == 16 and r["n"] > 1}
    assert passes == {(4, 16): 0.0026, (8, 16): 0.004}
    assert sum(1 for r in rows if r.get("method") == "lookup") == 3 * len(LOOKUP_RUNS)
    assert sum(1 for r in rows if "method" not in r and r["n"] == 1) == 3     # ar's 3 steps (its prefill: 4 rows)
