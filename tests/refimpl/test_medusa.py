"""Medusa-1 heads: lossless through the shared loop (exact match gives ar's tokens, greedy and
sampled), heads that copy the target's next token are accepted, bad input is one line."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refimpl.decoding.medusa import MedusaHeads, load_heads, medusa, random_heads, save_heads
from refimpl.errors import InputError
from refimpl.model import ModelConfig
from refimpl.sampling import SamplingSettings
from refimpl.streams import model_identity
from refimpl.testing import assert_same_as_ar, random_model, tiny_configs

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ModelConfig(dim=24, hidden_dim=40, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=30, seq_len=64,
                     shared_classifier=False)


@given(config=tiny_configs(), seed=st.integers(0, 2**16), data=st.data())
def test_medusa_gives_the_tokens_of_ar(config, seed, data):
    model = random_model(config, seed)
    heads = random_heads(model, data.draw(st.integers(1, 4)), seed + 1)
    prompt = data.draw(st.lists(st.integers(3, config.vocab_size - 1), min_size=1, max_size=6))
    settings = SamplingSettings(temperature=data.draw(st.sampled_from([0.0, 0.0, 0.9])), seed=seed)
    assert_same_as_ar(medusa, model, prompt, settings, data.draw(st.integers(0, 30)), heads=heads,
                      tree_k=data.draw(st.integers(1, 3)))


def test_heads_are_proposals_that_get_accepted_when_the_text_repeats():
    """Zero heads predict the target's next token at every level: on a model stuck in a
    one-token loop every proposal is accepted."""
    model = random_model(CONFIG, 11)
    heads = MedusaHeads(np.zeros((3, 24, 24), np.float32), np.zeros((3, 24), np.float32))
    gen = assert_same_as_ar(medusa, model, [4, 5, 7], SamplingSettings(), 40, heads=heads)
    repeats = sum(a == b for a, b in zip(gen.tokens, gen.tokens[1:]))
    assert gen.target_calls <= len(gen.tokens) + 1 - repeats // 2


def test_heads_file_round_trip_and_bad_files(tmp_path):
    model = random_model(CONFIG, 1)
    heads = random_heads(model, 2, 3)
    heads.identity = model_identity(model)
    path = tmp_path / "h.safetensors"
    save_heads(path, heads)
    loaded = load_heads(path, model)
    assert np.array_equal(loaded.weights, heads.weights) and np.array_equal(loaded.biases, heads.biases)
    other = random_model(CONFIG, 2)
    with pytest.raises(InputError, match="another model"):
        load_heads(path, other)
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError, match="t.safetensors"):
        load_heads(truncated, model)
    with pytest.raises(InputError, match="--gamma 3"):
        medusa(model, [4], SamplingSettings(), 5, heads=heads, gamma=3)
    with pytest.raises(InputError, match="needs heads"):
        medusa(model, [4], SamplingSettings(), 5)
