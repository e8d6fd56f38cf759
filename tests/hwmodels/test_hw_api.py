"""The public API the simulator calls."""
import pytest

import hwmodels
from hwmodels import InputError, forward_latency, get_device, get_link, get_model, link_latency


def test_lookup_is_case_insensitive_and_passes_objects_through():
    dev = get_device("H100-SXM")
    assert get_device(dev) is dev
    assert get_device("h100").key == "h100-sxm"
    assert get_model("Qwen/Qwen3-32B").name == "qwen3-32b"
    assert get_link("Thunderbolt-5").key == "thunderbolt-5"


@pytest.mark.parametrize("call, known", [
    (lambda: get_device("tpu-v9"), "h100-sxm"),
    (lambda: get_model("gpt-5"), "qwen3-32b"),
    (lambda: get_link("carrier-pigeon"), "nvlink-4"),
])
def test_unknown_names_list_the_known_ones(call, known):
    with pytest.raises(InputError, match=known):
        call()


def test_forward_latency_shape():
    lat = forward_latency("qwen3-32b", "h100-sxm", 8, 1024, tp=8)
    assert set(lat.breakdown) == {"compute", "memory", "overhead", "communication"}
    assert lat.seconds == pytest.approx(sum(lat.breakdown.values()))
    assert lat.bound in ("memory", "compute")


def test_link_latency_is_alpha_plus_beta_bytes():
    link = get_link("nvlink-4")
    assert link_latency("nvlink-4", 1e6) == pytest.approx(link.alpha_s + link.beta_s_per_byte * 1e6)


def test_all_exported_names_exist():
    for name in hwmodels.__all__:
        assert hasattr(hwmodels, name)
