"""llama2.c checkpoints: both formats load to the same model; bad files give one clear error."""
import struct

import numpy as np
import pytest

from conftest import checkpoint_file
from refimpl.checkpoints import load_model, read_config, resolve_model, save_llama2c
from refimpl.errors import InputError
from refimpl.model import ModelConfig
from refimpl.testing import random_weights

CONFIG = ModelConfig(dim=16, hidden_dim=40, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=37, seq_len=32,
                     shared_classifier=False)


@pytest.mark.parametrize("shared", [True, False])
def test_legacy_and_v1_exports_load_to_identical_logits(tmp_path, shared):
    config = ModelConfig(**{**CONFIG.__dict__, "shared_classifier": shared})
    weights = random_weights(config, 4)
    save_llama2c(tmp_path / "v1.bin", config, weights, version=1)
    save_llama2c(tmp_path / "legacy.bin", config, weights, version=None)
    a, b = load_model(tmp_path / "v1.bin"), load_model(tmp_path / "legacy.bin")
    assert a.config == b.config == config
    tokens = [1, 5, 9, 2]
    assert np.array_equal(a.forward(tokens, range(4), a.new_cache()), b.forward(tokens, range(4), b.new_cache()))
    assert read_config(tmp_path / "v1.bin")[2] == "llama2c-v1"


def test_real_checkpoint_headers():
    config, _, fmt = read_config(checkpoint_file("stories15M/stories15M.bin"))
    assert (config.dim, config.n_layers, config.vocab_size, config.shared_classifier, fmt) == \
        (288, 6, 32000, True, "llama2c-legacy")
    assert config.parameter_count() == 15_191_712


def write(tmp_path, data: bytes, name="bad.bin"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def good_bytes(tmp_path):
    save_llama2c(tmp_path / "good.bin", CONFIG, random_weights(CONFIG, 1), version=None)
    return (tmp_path / "good.bin").read_bytes()


@pytest.mark.parametrize("case,message", [
    ("missing", "not found"),
    ("directory", "directory"),
    ("tiny", "too short"),
    ("truncated", "truncated"),
    ("oversized", "oversized"),
    ("zero_dim", "dim=0"),
    ("huge_layers", "n_layers"),
    ("heads", "divisible"),
    ("nan", "non-finite"),
    ("version2", "version 2"),
])
def test_bad_checkpoints_raise_one_clear_error(tmp_path, case, message):
    good = good_bytes(tmp_path)
    header = list(struct.unpack_from("<7i", good))
    body = good[28:]
    if case == "missing":
        path = tmp_path / "absent.bin"
    elif case == "directory":
        path = tmp_path
    elif case == "tiny":
        path = write(tmp_path, b"\x01\x02")
    elif case == "truncated":
        path = write(tmp_path, good[:-10])
    elif case == "oversized":
        path = write(tmp_path, good + b"\0" * 8)
    elif case in ("zero_dim", "huge_layers", "heads"):
        index, value = {"zero_dim": (0, 0), "huge_layers": (2, 1 << 30), "heads": (3, 5)}[case]
        header[index] = value
        path = write(tmp_path, struct.pack("<7i", *header) + body)
    elif case == "nan":
        data = bytearray(good)
        data[28 + 4 * 40:28 + 4 * 41] = struct.pack("<f", float("nan"))
        path = write(tmp_path, bytes(data))
    else:
        path = write(tmp_path, struct.pack("<Ii", 0x616B3432, 2) + bytes(300))
    with pytest.raises(InputError) as err:
        load_model(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bare_names_resolve_through_the_models_directory(monkeypatch, tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "tiny.bin").write_bytes(b"")
    monkeypatch.setenv("MIRRORSTREAM_MODELS", str(tmp_path))
    assert resolve_model("tiny") == tmp_path / "tiny" / "tiny.bin"
    with pytest.raises(InputError, match="models in .*: tiny"):
        resolve_model("other")
    monkeypatch.delenv("MIRRORSTREAM_MODELS")
    with pytest.raises(InputError, match="MIRRORSTREAM_MODELS"):
        resolve_model("tiny")
