"""Model shapes: parameter counts against published totals, config parsing."""
import struct

import pytest

from hwmodels import InputError, ModelShape, get_model, known_models
from conftest import checkpoint_file

EXACT = {
    "llama-3.1-8b": 8_030_261_248,   # HF safetensors metadata
    "stories15m": 15_191_712,        # llama2.c .bin weights incl. the tied classifier
    "opt-125m": 125_239_296,         # HF safetensors metadata
}


@pytest.mark.parametrize("name, count", EXACT.items())
def test_exact_parameter_counts(name, count):
    assert get_model(name).param_count() == count


@pytest.mark.parametrize("name", known_models())
def test_counts_match_published_totals(name):
    shape = get_model(name)
    # Published totals are rounded to 2-3 significant digits ("1.7B", "42M").
    assert shape.param_count() == pytest.approx(shape.published_params, rel=0.015)
    assert shape.source


@pytest.mark.parametrize("name, billions", [("qwen3-32b", 32.8), ("qwen3-14b", 14.8), ("llama-3.1-70b", 70.6),
                                            ("mistral-small-24b", 23.6), ("opt-66b", 66.0), ("vicuna-33b", 32.5)])
def test_named_totals(name, billions):
    assert get_model(name).param_count() / 1e9 == pytest.approx(billions, abs=0.35)


def test_bytes_and_kv():
    shape = get_model("llama-3.1-8b")
    assert shape.weight_bytes("bf16") == 2 * shape.param_count()
    assert shape.weight_bytes("int4") == shape.param_count() / 2
    assert shape.kv_bytes_per_token("fp16") == 32 * 2 * 8 * 128 * 2


def test_tied_classifier_counted_once():
    tied = get_model("qwen3-0.6b")
    untied = ModelShape(**{**tied.__dict__, "tie_word_embeddings": False})
    assert untied.param_count() - tied.param_count() == tied.vocab_size * tied.hidden_size


def test_any_hf_config_can_be_added():
    config = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
              "tie_word_embeddings": True}
    shape = ModelShape.from_config("qwen2.5-0.5b", config)
    assert shape.param_count() == pytest.approx(494e6, rel=0.005)  # Qwen2.5-0.5B: 0.49B
    assert shape.qkv_bias and shape.head_dim == 64


@pytest.mark.parametrize("name, path", [("stories15m", "stories15M/stories15M.bin"),
                                        ("stories260k", "stories260K/stories260K.bin")])
def test_stories_shapes_match_checkpoint_headers(name, path):
    dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("7i", checkpoint_file(path).read_bytes()[:28])
    shape = get_model(name)
    assert (shape.hidden_size, shape.intermediate_size, shape.n_layers, shape.n_heads, shape.n_kv_heads,
            shape.vocab_size, shape.max_position_embeddings) == (dim, hidden, layers, heads, kv_heads, abs(vocab), seq)
    assert shape.tie_word_embeddings == (vocab > 0)


def test_layer_ranges():
    shape = get_model("qwen3-32b")
    assert shape.check_layers(None) == (0, 64)
    assert shape.check_layers((10, 20)) == (10, 20)
    for bad in [(0, 65), (-1, 3), (5, 5), (7, 3), "x"]:
        with pytest.raises(InputError, match="layer"):
            shape.check_layers(bad)


def test_bad_config_is_an_input_error():
    with pytest.raises(InputError, match="n_layers"):
        ModelShape.from_config("broken", {"hidden_size": 8, "num_hidden_layers": 0, "num_attention_heads": 2,
                                          "vocab_size": 10})
    with pytest.raises(InputError, match="vocab_size"):
        ModelShape.from_config("broken", {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2})
