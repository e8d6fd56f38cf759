"""Device and link catalogs: provenance, lookup, scaling, memory fit."""
import json
import math

import pytest

from hwmodels import InputError, get_device, get_link, get_model, known_devices, known_links, link_latency
from hwmodels.devices import RAW_SUFFIX

CATALOG = [d for d in known_devices() if d != "cpu"]
NUMERIC = ("memory_bandwidth", "memory_capacity", "compute_efficiency", "memory_efficiency", "overlap",
           "pass_overhead_s", "layer_overhead_s", "dot_overhead_s", "score_overhead_s", "memory_usable_fraction")


@pytest.mark.parametrize("name", CATALOG)
def test_every_number_has_a_source(name):
    for dev in (get_device(name), get_device(f"{name}@{RAW_SUFFIX}")):
        for field in NUMERIC:
            assert dev.sources.get(field), f"{name}.{field} has no source"
        for dtype in dev.peak_flops:
            assert dev.sources.get(f"peak_flops.{dtype}")


@pytest.mark.parametrize("name", known_links())
def test_every_link_number_has_a_source(name):
    link = get_link(name)
    assert link.sources["alpha_s"] and link.sources["beta_s_per_byte"]
    assert link.alpha_s >= 0 and link.beta_s_per_byte > 0


@pytest.mark.parametrize("spelling, key", [("h100-sxm", "h100-sxm"), ("A100-80GB", "a100-80gb"),
                                           ("m2-ultra-gpu", "m2-ultra-gpu"), ("M2-Ultra-ANE", "m2-ultra-ane"),
                                           ("h200", "h200"), ("rtx_4090", "rtx-4090"), ("m4-max-ane", "m4-max-ane"),
                                           ("snapdragon-8-gen-3-npu", "sd8g3-hexagon")])
def test_device_spellings(spelling, key):
    assert get_device(spelling).key == key


@pytest.mark.parametrize("spelling, key", [("qwen3-32b", "qwen3-32b"), ("llama-3.1-8b", "llama-3.1-8b"),
                                           ("vicuna-7b", "vicuna-7b"), ("OPT-66B", "opt-66b"),
                                           ("mistralai/Mistral-Small-24B-Instruct-2501", "mistral-small-24b"),
                                           ("stories15M", "stories15m")])
def test_model_spellings(spelling, key):
    assert get_model(spelling).name == key


def test_issue_links_exist():
    for name in ("nvlink-4", "pcie-4", "pcie-5", "thunderbolt-4", "thunderbolt-5", "ethernet-100g",
                 "ethernet-400g", "m2-ultra-unified"):
        get_link(name)


def test_link_latency_exact():
    link = get_link("thunderbolt-5")
    assert link.beta_s_per_byte == pytest.approx(1 / 10e9)
    assert link_latency(link, 384) == link.alpha_s + link.beta_s_per_byte * 384
    assert link_latency("thunderbolt-5", 0) == link.alpha_s


def test_calibrations_apply_and_unknown_ones_fail():
    raw, calibrated = get_device("h100-sxm@datasheet"), get_device("h100-sxm")
    assert raw.calibration is None and calibrated.calibration
    assert raw.peak_flops == calibrated.peak_flops
    assert "calibration" in calibrated.sources["memory_efficiency"]
    with pytest.raises(InputError, match="calibration"):
        get_device("h100-sxm@nonsense")


def test_scaled_multiplies_rates_and_divides_times():
    dev = get_device("a100-80gb")
    fast = dev.scaled(2.0)
    assert fast.memory_bandwidth == 2 * dev.memory_bandwidth
    assert fast.peak_flops["fp16"] == 2 * dev.peak_flops["fp16"]
    assert fast.pass_overhead_s == dev.pass_overhead_s / 2
    assert fast.tp_link.alpha_s == dev.tp_link.alpha_s / 2
    assert fast.memory_capacity == dev.memory_capacity
    for bad in (0, -1, math.nan):
        with pytest.raises(InputError, match="scale"):
            dev.scaled(bad)


@pytest.mark.parametrize("field, value", [("memory_bandwidth", 0.0), ("memory_bandwidth", -1e9),
                                          ("peak_flops", {"fp16": -1.0}), ("peak_flops", {}),
                                          ("compute_efficiency", 0.0), ("memory_efficiency", 1.5),
                                          ("pass_overhead_s", -1e-3), ("overlap", 2.0)])
def test_negative_or_zero_rates_are_rejected(field, value):
    with pytest.raises(InputError, match=field):
        get_device("h100-sxm").with_params(**{field: value})


def test_memory_fit():
    h100, m70 = get_device("h100-sxm"), get_model("llama-3.1-70b")
    assert not h100.fits(m70, "fp16", tp=1)
    assert h100.fits(m70, "fp16", tp=4, context=4096, batch=8)
    assert get_device("rtx-4090").fits(get_model("qwen3-32b"), "int4")
    assert not get_device("rtx-4090").fits(get_model("qwen3-32b"), "fp16")
    with pytest.raises(InputError, match="GB per device"):
        h100.check_fits(m70, "fp16", tp=1)


def test_dtype_support():
    ane = get_device("m2-ultra-ane")
    assert ane.supports("fp16") and not ane.supports("fp32")
    with pytest.raises(InputError, match="does not support fp32"):
        ane.peak("fp32")
    with pytest.raises(InputError, match="unknown dtype"):
        ane.peak("fp64")


def test_cpu_is_measured():
    cpu = get_device("cpu@datasheet")
    assert cpu.kind == "cpu" and cpu.memory_bandwidth > 1e8 and cpu.peak_flops["fp32"] > 1e8
    assert "measured" in cpu.sources["memory_bandwidth"]
    calibrated = get_device("cpu")
    assert calibrated.kind == "cpu" and calibrated.supports("fp32") and not calibrated.supports("fp16")


def test_device_files(tmp_path):
    path = tmp_path / "future-npu.json"
    path.write_text(json.dumps({"name": "hypothetical NPU", "kind": "npu", "tp_link": "pcie-5",
                                "peak_flops": {"fp16": 100e12, "int8": [200e12, "vendor slide"]},
                                "memory_bandwidth": 400e9, "memory_capacity": 64e9}))
    dev = get_device(str(path))
    assert dev.key == "future-npu" and dev.peak("int8") == 200e12 and dev.tp_link.key == "pcie-5"
    assert dev.sources["peak_flops.int8"] == "vendor slide" and str(path) in dev.sources["memory_bandwidth"]
    assert dev.compute_efficiency == get_device("rtx-4090@datasheet").compute_efficiency  # catalog default


@pytest.mark.parametrize("content, match", [
    ({"peak_flops": {"fp16": -5}, "memory_bandwidth": 1e9, "memory_capacity": 1e9}, "peak_flops\\[fp16\\] must be a positive"),
    ({"peak_flops": {"fp16": 5e12}, "memory_bandwidth": 0, "memory_capacity": 1e9}, "memory_bandwidth must be a positive"),
    ({"peak_flops": {"fp16": 5e12}, "memory_capacity": 1e9}, "lacks memory_bandwidth"),
    ({"peak_flops": {"fp99": 5e12}, "memory_bandwidth": 1e9, "memory_capacity": 1e9}, "unknown dtype"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "one JSON object"),
    ({"peak_flops": {"fp16": 5e12}, "memory_bandwidth": 1e9, "memory_capacity": 1e9, "tp_link": "smoke"}, "unknown link"),
])
def test_bad_device_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(InputError, match=match):
        get_device(str(path))


def test_the_datacenter_npu_entry_carries_its_published_figures_and_their_sources():
    """AWS Inferentia2 (one chip): every datasheet number cites the Neuron docs' page, the chips
    group over NeuronLink-v2, and a Qwen3-0.6B draft shard fits while Qwen3-32B does not."""
    from hwmodels import get_device, get_link, get_model
    npu = get_device("inf2")
    assert npu.key == "inferentia2" and npu.kind == "npu"
    assert npu.peak_flops["fp16"] == 190e12 and npu.peak_flops["int8"] == 380e12
    assert npu.memory_bandwidth == 820 * 2**30 and npu.memory_capacity == 32 * 2**30
    for field in ("peak_flops.fp16", "peak_flops.bf16", "peak_flops.fp32", "peak_flops.int8", "memory_bandwidth",
                  "memory_capacity"):
        assert "https://awsdocs-neuron.readthedocs-hosted.com/" in npu.sources[field], field
    for field in ("pass_overhead_s", "layer_overhead_s"):
        assert "assumption" in npu.sources[field]
    link = get_link(npu.tp_link.key)
    assert link.bandwidth == 192 * 2**30 and "inf2-arch" in link.sources["beta_s_per_byte"]
    assert npu.fits(get_model("qwen3-0.6b"), "fp16", tp=8, context=4096)
    assert not npu.fits(get_model("qwen3-32b"), "fp16", tp=1)
