"""forward_latency: roofline terms, bound switching, collectives, additivity, scaling."""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwmodels import InputError, allreduce_time, forward_latency, get_device, get_link, get_model, pass_work

GPU_NAMES = ["h100-sxm", "a100-80gb", "h200", "rtx-4090", "m2-ultra-gpu"]
tokens = st.integers(1, 512)
contexts = st.integers(0, 8192)
batches = st.integers(1, 32)


def test_decode_is_memory_bound_and_prefill_compute_bound():
    decode = forward_latency("llama-3.1-8b", "h100-sxm", 1, 1024)
    prefill = forward_latency("llama-3.1-8b", "h100-sxm", 4096, 0)
    assert decode.bound == "memory" and decode.memory_time > decode.compute_time
    assert prefill.bound == "compute" and prefill.compute_time > prefill.memory_time


def test_bound_switches_once_with_tokens():
    bounds = [forward_latency("qwen3-14b", "a100-80gb@datasheet", n, 512).bound for n in range(1, 2049, 16)]
    switch = bounds.index("compute")
    assert set(bounds[:switch]) == {"memory"} and set(bounds[switch:]) == {"compute"}


def test_memory_term_is_weights_plus_kv_over_bandwidth():
    dev = get_device("h100-sxm@datasheet")
    shape = get_model("llama-3.1-8b")
    lat = forward_latency(shape, dev, 1, 1000, dtype="bf16")
    kv = 32 * 2 * 1024 * 2 * (1000 + 1 + 1)  # read L + n keys/values, write n
    # every block and the (untied) classifier; not the embedding table or the final norm
    weights = (shape.param_count() - shape.embedding_params() - shape.hidden_size) * 2
    assert lat.bytes == pytest.approx(weights + kv, rel=1e-3)  # + activations (tiny)
    assert lat.memory_time == pytest.approx(lat.bytes / (dev.memory_bandwidth * dev.memory_efficiency))
    assert lat.breakdown["overhead"] == pytest.approx(dev.pass_overhead_s + 32 * dev.layer_overhead_s)


@given(tokens, contexts, batches)
def test_monotone_in_tokens_context_and_batch(n, L, B):
    base = forward_latency("qwen3-32b", "h100-sxm", n, L, batch=B, tp=8).seconds
    assert forward_latency("qwen3-32b", "h100-sxm", n + 1, L, batch=B, tp=8).seconds >= base
    assert forward_latency("qwen3-32b", "h100-sxm", n, L + 1, batch=B, tp=8).seconds >= base
    assert forward_latency("qwen3-32b", "h100-sxm", n, L, batch=B + 1, tp=8).seconds >= base


@given(tokens, contexts, batches, st.sampled_from([1, 2, 4, 8]), st.sampled_from(GPU_NAMES))
def test_breakdown_adds_up(n, L, B, G, name):
    lat = forward_latency("qwen3-32b", name, n, L, batch=B, tp=G)
    assert lat.seconds == pytest.approx(sum(lat.breakdown.values()), rel=1e-12)
    assert all(v >= 0 for v in lat.breakdown.values())
    assert lat.bound == ("compute" if lat.compute_time > lat.memory_time else "memory")
    # The roofline part is at least the larger raw term and at most their sum.
    roof = lat.breakdown["compute"] + lat.breakdown["memory"]
    assert max(lat.compute_time, lat.memory_time) * (1 - 1e-12) <= roof <= (lat.compute_time + lat.memory_time) * (1 + 1e-12)


@given(st.floats(0.01, 100), tokens, contexts, st.sampled_from([1, 2, 8]), st.sampled_from(GPU_NAMES + ["m2-ultra-ane"]))
def test_scaling_all_rates_scales_latency_inversely(factor, n, L, G, name):
    dev = get_device(name)
    slow = forward_latency("qwen3-32b", dev, n, L, tp=G)
    fast = forward_latency("qwen3-32b", dev.scaled(factor), n, L, tp=G)
    assert fast.seconds == pytest.approx(slow.seconds / factor, rel=1e-9)
    for part in slow.breakdown:
        assert fast.breakdown[part] == pytest.approx(slow.breakdown[part] / factor, rel=1e-9, abs=1e-300)
    assert fast.bound == slow.bound


@given(st.integers(1, 63), tokens, contexts, st.sampled_from([1, 2, 8]))
def test_split_ranges_add_up_to_the_whole_pass(cut, n, L, G):
    whole = forward_latency("qwen3-32b", "h100-sxm", n, L, tp=G)
    first = forward_latency("qwen3-32b", "h100-sxm", n, L, tp=G, layers=(0, cut))
    second = forward_latency("qwen3-32b", "h100-sxm", n, L, tp=G, layers=(cut, 64))
    assert not first.classifier and second.classifier
    assert first.seconds + second.seconds == pytest.approx(whole.seconds, rel=1e-9)


def test_early_exit_head_costs_extra():
    plain = forward_latency("qwen3-32b", "h100-sxm", 8, 1024, tp=8, layers=(0, 32))
    with_head = forward_latency("qwen3-32b", "h100-sxm", 8, 1024, tp=8, layers=(0, 32), classifier=True)
    assert with_head.seconds > plain.seconds and with_head.classifier


@given(st.floats(0, 1e6), st.integers(1, 64))
def test_allreduce_is_alpha_log2_g_plus_beta_m(nbytes, group):
    link = get_link("nvlink-4")
    expected = 0.0 if group == 1 else link.alpha_s * math.log2(group) + link.beta_s_per_byte * nbytes
    assert allreduce_time(link, nbytes, group) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("G", [2, 4, 8])
@pytest.mark.parametrize("n, B", [(1, 1), (8, 1), (4, 16)])
def test_megatron_communication_exact(G, n, B):
    link = get_link("nvlink-4")
    shape = get_model("qwen3-32b")
    lat = forward_latency(shape, "h100-sxm", n, 1024, batch=B, tp=G)
    message = 2 * (G - 1) / G * B * n * shape.hidden_size * 2
    assert lat.collectives == 2 * shape.n_layers
    assert lat.message_bytes == message
    assert lat.breakdown["communication"] == pytest.approx(
        2 * shape.n_layers * (link.alpha_s * math.log2(G) + link.beta_s_per_byte * message), rel=1e-12)


def test_spd_sharding_has_two_allreduces_per_pass():
    draft = get_model("qwen3-0.6b")
    spd = forward_latency(draft, "m2-ultra-ane", 8, 512, tp=8, sharding="spd")
    megatron = forward_latency(draft, "m2-ultra-ane", 8, 512, tp=8)
    assert spd.collectives == 2 and megatron.collectives == 2 * draft.n_layers
    assert spd.breakdown["communication"] < megatron.breakdown["communication"]
    assert spd.breakdown["memory"] == megatron.breakdown["memory"]
    # One segment boundary in each half of the draft.
    assert forward_latency(draft, "m2-ultra-ane", 8, 512, tp=8, sharding="spd", layers=(0, 14)).collectives == 1
    assert forward_latency(draft, "m2-ultra-ane", 8, 512, tp=8, sharding="spd", layers=(0, 13)).collectives == 0


def test_tensor_parallel_splits_the_memory_term():
    one = forward_latency("qwen3-32b", "h100-sxm", 1, 1024, tp=1)
    eight = forward_latency("qwen3-32b", "h100-sxm", 1, 1024, tp=8)
    assert eight.memory_time == pytest.approx(one.memory_time / 8, rel=1e-12)
    assert eight.breakdown["communication"] > 0 == one.breakdown["communication"]


def test_link_override():
    tb = forward_latency("qwen3-32b", "m2-ultra-gpu", 8, 1024, tp=8, link="thunderbolt-4")
    tb5 = forward_latency("qwen3-32b", "m2-ultra-gpu", 8, 1024, tp=8)
    assert tb.breakdown["communication"] > tb5.breakdown["communication"]


def test_pass_work_is_rate_free():
    work = pass_work(get_model("llama-3.1-8b"), 1, 0)
    assert work.n_blocks == 32 and work.starts_pass and work.collectives == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_tokens=0), "tokens"), (dict(context=-1), "context"), (dict(batch=0), "batch"), (dict(tp=0), "tp"),
    (dict(tp=128), "tp"), (dict(layers=(0, 99)), "layer"), (dict(dtype="fp64"), "dtype"),
    (dict(sharding="zero"), "sharding"), (dict(n_tokens=1.5), "tokens"),
])
def test_bad_arguments(kwargs, match):
    args = dict(n_tokens=1, context=0)
    args.update(kwargs)
    n, L = args.pop("n_tokens"), args.pop("context")
    with pytest.raises(InputError, match=match):
        forward_latency("qwen3-32b", "h100-sxm", n, L, **args)


def test_device_without_dtype_or_link():
    with pytest.raises(InputError, match="does not support fp32"):
        forward_latency("qwen3-0.6b", "m2-ultra-ane", 1, 0, dtype="fp32")
    with pytest.raises(InputError, match="no tensor-parallel link"):
        forward_latency("qwen3-0.6b", "sd8g3-adreno", 1, 0, tp=2)


def test_row_blocks_charge_whole_blocks_of_matmul_work_and_nothing_else():
    """On a device of row_block 8, a matmul of 2..8 rows computes one block of eight, 9..16 two:
    the matmul FLOPs of 3 rows are those of 8 without blocking; one row is just itself; the
    attention FLOPs, the bytes and the per-row dot products stay those of the real rows."""
    shape = get_model("stories15m")
    plain = {n: pass_work(shape, n, 64, dtype="fp32") for n in (1, 3, 8, 9, 16)}
    blocked = {n: pass_work(shape, n, 64, dtype="fp32", row_block=8) for n in (1, 3, 8, 9, 16)}
    attention = {n: 4 * n * (64 + (n + 1) / 2) * shape.q_dim * shape.n_layers for n in plain}
    assert blocked[1] == plain[1] and blocked[8] == plain[8] and blocked[16] == plain[16]
    for n, block in ((3, 8), (9, 16)):
        assert blocked[n].block_flops - attention[n] == pytest.approx(plain[block].block_flops - attention[block])
        assert blocked[n].head_flops == pytest.approx(plain[block].head_flops)
        assert (blocked[n].block_bytes, blocked[n].block_dots) == (plain[n].block_bytes, plain[n].block_dots)
    cpu = get_device("cpu@datasheet")
    slow = cpu.with_params(peak_flops={"fp32": 1e9})   # compute-bound: the padding shows in the time
    assert forward_latency(shape, slow.with_params(row_block=8), 3, 64, dtype="fp32").seconds == pytest.approx(
        forward_latency(shape, slow, 8, 64, dtype="fp32").seconds, rel=0.02)


@pytest.mark.parametrize("value", [0, -8, 2.5, True, "8"])
def test_row_block_must_be_a_positive_integer(value):
    with pytest.raises(InputError, match="row_block"):
        get_device("cpu@datasheet").with_params(row_block=value)
