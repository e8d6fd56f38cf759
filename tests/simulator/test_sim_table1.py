"""experiments/sim_table1.py: the acceptance inferred from a vanilla-SD speedup reproduces it."""
from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from conftest import REPO_ROOT
from simulator import SPEC_BENCH, SimConfig
from simulator.costs import HardwareCosts

spec = importlib.util.spec_from_file_location("sim_table1", REPO_ROOT / "experiments" / "sim_table1.py")
table1 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table1)


@pytest.mark.parametrize("published", [1.6, 2.4])
def test_inferred_alpha_reproduces_the_published_sd_speedup(published):
    config = SimConfig(target_model="qwen3-32b")
    costs = HardwareCosts(config)
    task = dataclasses.replace(SPEC_BENCH["qa"], prompts=3)
    alpha, clamped = table1.infer_alpha(task, config, costs, published)
    assert not clamped and 0 < alpha < 1
    assert table1._speedup(task, config, costs, "sd", alpha) == pytest.approx(published, rel=0.01)
    # A higher published speedup needs a higher acceptance (the inversion is monotone).
    higher, _ = table1.infer_alpha(task, config, costs, published * 1.1)
    assert higher > alpha


def test_an_unreachable_speedup_is_clamped_and_flagged():
    config = SimConfig()
    task = dataclasses.replace(SPEC_BENCH["qa"], prompts=1)
    assert table1.infer_alpha(task, config, HardwareCosts(config), 50.0) == (table1.ALPHA_MAX, True)
