"""The model: correct numerics, and bitwise batch invariance across every way of computing a position."""
import numba
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refimpl.model import Model
from refimpl.testing import ARCHITECTURES, random_model, random_weights, tiny_configs

from reference import reference_logits


def ar_logits(model, tokens):
    """Logits of every position, one token per pass through the KV cache."""
    cache = model.new_cache()
    return np.concatenate([model.forward([t], [p], cache) for p, t in enumerate(tokens)])


def chunked_logits(model, tokens, sizes):
    cache = model.new_cache()
    rows, at = [], 0
    for size in sizes:
        if at >= len(tokens):
            break
        chunk = tokens[at:at + size]
        rows.append(model.forward(chunk, np.arange(at, at + len(chunk)), cache))
        at += len(chunk)
    return np.concatenate(rows)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@given(seed=st.integers(0, 2**16), data=st.data())
def test_prefill_chunks_and_steps_give_identical_bits(arch, seed, data):
    config = data.draw(tiny_configs(arch), label="config")
    model = random_model(config, seed)
    n = data.draw(st.integers(1, min(config.seq_len, 40)), label="n")
    tokens = np.array(data.draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=n, max_size=n)))
    sizes = data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=n), label="chunks")
    prefill = model.forward(tokens, np.arange(n), model.new_cache())
    assert np.array_equal(prefill, ar_logits(model, tokens))
    assert np.array_equal(prefill, chunked_logits(model, tokens, sizes + [n]))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@given(seed=st.integers(0, 2**16), data=st.data())
def test_model_matches_independent_float64_reference(arch, seed, data):
    config = data.draw(tiny_configs(arch), label="config")
    weights = random_weights(config, seed)
    model = Model.from_dense(config, weights)
    tokens = np.arange(min(config.seq_len, 12)) % config.vocab_size
    ours = model.forward(tokens, np.arange(len(tokens)), model.new_cache())
    np.testing.assert_allclose(ours, reference_logits(config, weights, tokens), rtol=2e-4, atol=2e-4)


def tree_case(rng, vocab, n_nodes):
    """A random token tree: parents[i] < i (or -1 for a child of the committed prefix)."""
    parents = [-1] + [int(rng.integers(-1, i)) for i in range(1, n_nodes)]
    tokens = rng.integers(0, vocab, n_nodes)
    mask = np.zeros((n_nodes, n_nodes), dtype=bool)
    depth = np.zeros(n_nodes, dtype=np.int64)
    for i, p in enumerate(parents):
        mask[i, i] = True
        if p >= 0:
            mask[i] |= mask[p]
            depth[i] = depth[p] + 1
    return parents, tokens, mask, depth


@pytest.mark.parametrize("arch", ARCHITECTURES)
@given(seed=st.integers(0, 2**16), n_nodes=st.integers(1, 12), data=st.data())
def test_tree_nodes_equal_autoregressive_along_their_path(arch, seed, n_nodes, data):
    config = data.draw(tiny_configs(arch), label="config")
    model = random_model(config, seed)
    rng = np.random.default_rng(seed)
    prefix = rng.integers(0, config.vocab_size, 5)
    parents, tokens, mask, depth = tree_case(rng, config.vocab_size, n_nodes)
    cache = model.new_cache()
    model.forward(prefix, np.arange(5), cache)
    tree = model.forward(tokens, 5 + depth, cache, mask=mask, commit=False)
    for node in range(n_nodes):
        path = [j for j in range(n_nodes) if mask[node, j]]
        expected = ar_logits(model, np.concatenate([prefix, tokens[path]]))[-1]
        assert np.array_equal(tree[node], expected), f"node {node}"


def test_tree_mask_matters():
    """Negative control: the same rows under a causal mask give other logits than under the tree mask."""
    from refimpl.testing import ModelConfig
    config = ModelConfig(dim=16, hidden_dim=24, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=30, seq_len=32)
    model = random_model(config, 7)
    mask = np.eye(3, dtype=bool)
    a = model.forward([3, 4, 5], [0, 0, 0], model.new_cache(), mask=mask)
    b = model.forward([3, 4, 5], [0, 0, 0], model.new_cache())
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[2], b[2])


def test_kv_cache_keep_compacts_accepted_rows_to_plain_decoding_bits():
    from refimpl.testing import ModelConfig
    config = ModelConfig(dim=24, hidden_dim=40, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, seq_len=40)
    model = random_model(config, 11)
    rng = np.random.default_rng(0)
    parents, tokens, mask, depth = tree_case(rng, 50, 10)
    cache = model.new_cache()
    model.forward([1, 2, 3], [0, 1, 2], cache)
    model.forward(tokens, 3 + depth, cache, mask=mask, commit=False)
    deepest = int(np.argmax(depth))
    path = [j for j in range(10) if mask[deepest, j]]
    cache.keep(path)
    plain = model.new_cache()
    model.forward(np.concatenate([[1, 2, 3], tokens[path]]), np.arange(3 + len(path)), plain)
    assert cache.length == plain.length
    assert np.array_equal(cache.k[:, :cache.length], plain.k[:, :plain.length])
    assert np.array_equal(cache.v[:, :cache.length], plain.v[:, :plain.length])


def test_threads_do_not_change_bits():
    from refimpl.testing import ModelConfig
    config = ModelConfig(dim=64, hidden_dim=172, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=300, seq_len=64)
    model = random_model(config, 5)
    tokens = np.arange(20) % 300
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = model.forward(tokens, np.arange(20), model.new_cache())
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = model.forward(tokens, np.arange(20), model.new_cache())
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one, two)


def test_taps_return_the_stream_after_each_requested_layer():
    from refimpl.testing import ModelConfig
    config = ModelConfig(dim=16, hidden_dim=24, n_layers=3, n_heads=2, n_kv_heads=2, vocab_size=30, seq_len=32)
    model = random_model(config, 3)
    hidden = model.embed(np.array([1, 2]))
    taps = model.run_layers(hidden, np.arange(2), model.new_cache(), taps=(1, 3))
    assert sorted(taps) == [1, 3] and np.array_equal(taps[3], hidden)
    # running layer 1 alone, then layers 2..3, gives the same stream (split runs for early exit)
    split = model.embed(np.array([1, 2]))
    cache = model.new_cache()
    model.run_layers(split, np.arange(2), cache, stop=1)
    assert np.array_equal(split, taps[1])
    model.run_layers(split, np.arange(2), cache, start=1)
    assert np.array_equal(split, hidden)
