"""GGUF files: the tensor types written are the ones asked for, the metadata is llama's,
and a corrupted file loads or raises one InputError naming it (fuzzed)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refimpl.errors import InputError
from refimpl.formats.gguf import read_gguf, write_gguf
from refimpl.model import ModelConfig
from refimpl.testing import random_weights

gguf = pytest.importorskip("gguf")

CONFIG = ModelConfig(dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=20, seq_len=16,
                     shared_classifier=False)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "good.gguf"
    write_gguf(path, CONFIG, random_weights(CONFIG, 1))
    return path.read_bytes()


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_tensor_types_and_metadata(tmp_path, dtype):
    weights = random_weights(CONFIG, 2)
    write_gguf(tmp_path / "m.gguf", CONFIG, weights, dtype)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == dtype and types["output.weight"] == dtype
    assert types["blk.0.attn_norm.weight"] == "F32"  # norms stay F32, as llama.cpp's converter writes them
    assert reader.fields["llama.attention.head_count_kv"].contents() == 1
    assert reader.fields["llama.context_length"].contents() == 16
    config, loaded = read_gguf(tmp_path / "m.gguf")
    assert config.shared_classifier is False and config.n_kv_heads == 1
    exact = np.array_equal(loaded["wq"][0], weights["wq"][0])
    assert exact == (dtype == "F32")
    assert np.allclose(loaded["wq"][0], weights["wq"][0], rtol=1e-2, atol=1e-2)


@given(st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), min_size=1, max_size=4),
       st.one_of(st.none(), st.integers(0, 4000)))
def test_corrupted_files_load_or_raise_one_input_error(tmp_path_factory, good, edits, cut):
    data = bytearray(good)
    for at, value in edits:
        data[at % len(data)] = value
    if cut is not None:
        data = data[:cut]
    path = tmp_path_factory.mktemp("fuzz") / "x.gguf"
    path.write_bytes(bytes(data))
    try:
        read_gguf(path)
    except InputError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
