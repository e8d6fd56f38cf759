"""The real stories15M / stories260K checkpoints: known output, batch invariance at full size."""
import numpy as np
import pytest

from conftest import checkpoint_file
from refimpl.checkpoints import load_model
from refimpl.decoding import autoregressive, generate
from refimpl.sampling import SamplingSettings
from refimpl.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def stories15m():
    return load_model(checkpoint_file("stories15M/stories15M.bin"))


def test_greedy_story_from_bos(stories15m):
    tokenizer = load_tokenizer(checkpoint_file("stories15M/tokenizer.model"), 32000)
    result = generate(autoregressive(stories15m, [1], SamplingSettings(), 30), [1])
    assert tokenizer.decode(result.tokens).startswith(
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine.")


def test_stories15m_prefill_steps_batch_and_tree_agree_bitwise(stories15m):
    tokens = np.array([1] + generate(autoregressive(stories15m, [1], SamplingSettings(), 70), [1]).tokens)[:70]
    n = len(tokens)
    cache = stories15m.new_cache()
    steps = np.concatenate([stories15m.forward([t], [p], cache) for p, t in enumerate(tokens)])
    prefill = stories15m.forward(tokens, np.arange(n), stories15m.new_cache())
    assert np.array_equal(steps, prefill)
    # rows 6..69 as one 64-row batch after a 6-token prefix
    cache = stories15m.new_cache()
    stories15m.forward(tokens[:6], np.arange(6), cache)
    batch = stories15m.forward(tokens[6:], np.arange(6, n), cache)
    assert batch.shape[0] == 64 and np.array_equal(batch, steps[6:])
    # a two-branch tree after 10 tokens: branch A = tokens 10..12, branch B = a different token then 11
    cache = stories15m.new_cache()
    stories15m.forward(tokens[:10], np.arange(10), cache)
    tree_tokens = np.array([tokens[10], tokens[11], 500, tokens[12]])
    parents = [-1, 0, -1, 1]
    mask = np.eye(4, dtype=bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] |= mask[p]
    tree = stories15m.forward(tree_tokens, np.array([10, 11, 10, 12]), cache, mask=mask, commit=False)
    assert np.array_equal(tree[[0, 1, 3]], steps[10:13])
    alone = stories15m.forward(np.concatenate([tokens[:10], [500]]), np.arange(11), stories15m.new_cache())
    assert np.array_equal(tree[2], alone[-1])


def test_stories260k_gqa_runs_and_prefill_matches_steps():
    model = load_model(checkpoint_file("stories260K/stories260K.bin"))
    assert model.config.n_kv_heads == 4 and model.config.n_heads == 8
    result = generate(autoregressive(model, [1], SamplingSettings(temperature=0.9, seed=1), 40), [1])
    tokens = np.array([1] + result.tokens)
    cache = model.new_cache()
    steps = np.concatenate([model.forward([t], [p], cache) for p, t in enumerate(tokens)])
    assert np.array_equal(steps, model.forward(tokens, np.arange(len(tokens)), model.new_cache()))
