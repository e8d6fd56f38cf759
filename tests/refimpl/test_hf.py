"""Hugging Face directories (config.json + safetensors) without transformers: layouts,
dtypes, shards, config spellings, special ids, and one clear error per bad input."""
import json
import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refimpl.checkpoints import find_tokenizer, load_model, resolve_model
from refimpl.errors import InputError
from refimpl.formats.hf import (interleaved_to_rotate_half, read_hf, read_hf_config, rotate_half_to_interleaved,
                                write_hf)
from refimpl.formats.safetensors import bfloat16_bits, read_safetensors, to_float32, write_safetensors
from refimpl.model import Model, ModelConfig
from refimpl.rope import inverse_frequencies
from refimpl.testing import random_weights

CONFIG = ModelConfig(dim=32, hidden_dim=40, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, seq_len=48,
                     shared_classifier=False, norm_eps=1e-5, bos_id=1, eos_ids=(2,), stop_at_bos=False)
TOKENS = [1, 7, 3, 9, 30, 2, 11]

pytestmark = pytest.mark.usefixtures("one_thread")


def logits(model, tokens=TOKENS):
    return model.forward(tokens, np.arange(len(tokens)), model.new_cache())


@pytest.fixture
def hf_dir(tmp_path):
    weights = random_weights(CONFIG, 3)
    write_hf(tmp_path / "m", CONFIG, weights)
    return tmp_path / "m", weights


def test_written_directory_loads_to_the_same_bits_as_the_dense_weights(hf_dir):
    folder, weights = hf_dir
    model = load_model(folder)
    assert model.config == CONFIG
    assert np.array_equal(logits(model), logits(Model.from_dense(CONFIG, weights)))
    assert model.name == "m" and resolve_model(str(folder)) == folder


def rope_rotate_half(x, positions, inv_freq):
    """HF's rotate-half RoPE on one head (n, hd) in float64."""
    half = x.shape[1] // 2
    angle = positions[:, None] * inv_freq[None, :]
    cos, sin = np.cos(np.concatenate([angle, angle], 1)), np.sin(np.concatenate([angle, angle], 1))
    rotated = np.concatenate([-x[:, half:], x[:, :half]], 1)
    return x * cos + rotated * sin


def rope_interleaved(x, positions, inv_freq):
    angle = positions[:, None] * inv_freq[None, :]
    out = x.copy()
    out[:, 0::2] = x[:, 0::2] * np.cos(angle) - x[:, 1::2] * np.sin(angle)
    out[:, 1::2] = x[:, 0::2] * np.sin(angle) + x[:, 1::2] * np.cos(angle)
    return out


def test_permuting_rows_turns_rotate_half_scores_into_interleaved_scores():
    """The claim the loader rests on: q.k after rotate-half RoPE with HF's rows equals q.k
    after interleaved RoPE with the permuted rows, for every head and position pair."""
    rng = np.random.default_rng(0)
    hd, dim, n = 16, 24, 9
    wq, wk = rng.standard_normal((2 * hd, dim)), rng.standard_normal((2 * hd, dim))
    x, pos = rng.standard_normal((n, dim)), np.arange(n, dtype=np.float64) * 7
    inv = inverse_frequencies(hd, 10000.0)
    pq, pk = rotate_half_to_interleaved(wq, 2), rotate_half_to_interleaved(wk, 2)
    for h in range(2):
        rows = slice(h * hd, (h + 1) * hd)
        hf = rope_rotate_half(x @ wq[rows].T, pos, inv) @ rope_rotate_half(x @ wk[rows].T, pos, inv).T
        ours = rope_interleaved(x @ pq[rows].T, pos, inv) @ rope_interleaved(x @ pk[rows].T, pos, inv).T
        assert np.allclose(hf, ours, rtol=1e-12, atol=1e-9)
        unpermuted = rope_interleaved(x @ wq[rows].T, pos, inv) @ rope_interleaved(x @ wk[rows].T, pos, inv).T
        assert not np.allclose(hf, unpermuted, atol=1e-3)  # the permutation is needed
    assert np.array_equal(interleaved_to_rotate_half(pq, 2), wq)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_tensors_load_as_their_float32_values(tmp_path, dtype):
    weights = random_weights(CONFIG, 5)
    write_hf(tmp_path / "half", CONFIG, weights, dtype=dtype)
    if dtype == "F16":
        rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}
    else:
        rounded = {k: to_float32("BF16", bfloat16_bits(v), k) for k, v in weights.items()}
    assert any(not np.array_equal(rounded[k], weights[k]) for k in weights)
    assert np.array_equal(logits(load_model(tmp_path / "half")), logits(Model.from_dense(CONFIG, rounded)))


def test_bfloat16_rounds_to_nearest_even():
    values = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, 3.0e38], dtype=np.float32)
    back = to_float32("BF16", bfloat16_bits(values), "x")
    assert np.allclose(back, values, rtol=2 ** -8) and back[0] == 1.0 and back[3] == -2.5
    assert back[1] == 1.0 and back[2] == np.float32(1.0 + 2 ** -6)  # ties go to even


def test_fp32_tensors_are_memory_mapped(hf_dir):
    folder, _ = hf_dir
    _, weights = read_hf(folder)
    array = weights["token_embedding"]
    while not isinstance(array, np.memmap) and array.base is not None:
        array = array.base
    assert isinstance(array, np.memmap)


def test_sharded_index_loads_like_the_single_file(hf_dir, tmp_path):
    folder, _ = hf_dir
    tensors = {name: to_float32(d, a, name) for name, (d, a) in read_safetensors(folder / "model.safetensors").items()}
    names = list(tensors)
    shard = tmp_path / "sharded"
    shard.mkdir()
    (shard / "config.json").write_text((folder / "config.json").read_text())
    weight_map = {}
    for i, part in enumerate((names[:7], names[7:])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        write_safetensors(shard / file, {n: tensors[n] for n in part})
        weight_map.update({n: file for n in part})
    (shard / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert np.array_equal(logits(load_model(shard)), logits(load_model(folder)))
    weight_map[names[0]] = "model-00002-of-00002.safetensors"
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(InputError, match="not listed for this shard"):
        load_model(shard)


def edit_config(folder, **changes):
    raw = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    (folder / "config.json").write_text(json.dumps(raw))


LLAMA3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def test_both_config_spellings_give_the_same_model(hf_dir):
    folder, _ = hf_dir
    edit_config(folder, rope_theta=500000.0, rope_scaling={"rope_type": "llama3", **LLAMA3})
    v4 = read_hf_config(folder)
    edit_config(folder, rope_theta=None, rope_scaling=None,
                rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, **LLAMA3})
    v5 = read_hf_config(folder)
    edit_config(folder, rope_parameters=None, rope_scaling={"type": "llama3", **LLAMA3}, rope_theta=500000.0)
    assert v4 == v5 == read_hf_config(folder)
    assert v4.rope_theta == 500000.0 and dict(v4.rope_scaling)["factor"] == 8.0
    scaled = load_model(folder)
    plain = inverse_frequencies(CONFIG.head_dim, 500000.0)
    scaled_freq = inverse_frequencies(CONFIG.head_dim, 500000.0, dict(v4.rope_scaling))
    assert scaled_freq[0] == plain[0] and scaled_freq[-1] == plain[-1] / 8  # high kept, low slowed
    assert not np.array_equal(scaled.rope_cos, load_model_without_scaling(folder).rope_cos)


def load_model_without_scaling(folder):
    edit_config(folder, rope_scaling=None, rope_parameters=None)
    return load_model(folder)


def test_special_ids_come_from_generation_config_then_config(hf_dir):
    folder, _ = hf_dir
    edit_config(folder, bos_token_id=5, eos_token_id=[6, 7])
    (folder / "generation_config.json").unlink()
    assert (read_hf_config(folder).bos_id, read_hf_config(folder).eos_ids) == (5, (6, 7))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert (read_hf_config(folder).bos_id, read_hf_config(folder).eos_ids) == (5, (9,))
    edit_config(folder, bos_token_id=None)
    assert read_hf_config(folder).bos_id is None


def test_tied_embeddings_need_no_lm_head(tmp_path):
    config = ModelConfig(**{**CONFIG.__dict__, "shared_classifier": True})
    weights = random_weights(config, 8)
    write_hf(tmp_path / "tied", config, weights)
    assert "lm_head.weight" not in read_safetensors(tmp_path / "tied" / "model.safetensors")
    assert np.array_equal(logits(load_model(tmp_path / "tied")), logits(Model.from_dense(config, weights)))


def test_tokenizer_json_is_found_inside_the_directory(hf_dir):
    folder, _ = hf_dir
    assert find_tokenizer(folder) is None
    (folder / "tokenizer.json").write_text("{}")
    assert find_tokenizer(folder) == folder / "tokenizer.json"


# -- bad input: one InputError naming the file ----------------------------------------------------

def rewrite_header(file, edit):
    data = file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def first_tensor(header):
    return next(k for k in header if k != "__metadata__")


@pytest.mark.parametrize("case,message", [
    ("outside", "outside the data buffer"),
    ("overlap", "overlap"),
    ("size", "needs"),
    ("dtype", "unsupported dtype"),
    ("shape", "config.json implies"),
    ("missing", "missing tensor"),
    ("unexpected", "unexpected tensor"),
    ("model_type", "model_type 'gpt-j'"),
    ("rope_type", "RoPE type 'yarn'"),
    ("head_dim", r"q_proj.weight' has shape \[32, 32\], config.json implies \[64, 32\]"),
    ("head_dim_zero", "head_dim 0 is not a positive integer"),
    ("no_weights", "neither model.safetensors"),
    ("bad_json", "not readable JSON"),
    ("header_length", "header length"),
    ("nan", "non-finite"),
])
def test_bad_directories_raise_one_clear_error(hf_dir, case, message):
    folder, _ = hf_dir
    file = folder / "model.safetensors"

    def move_first(header):
        name = first_tensor(header)
        header[name]["data_offsets"] = [10 ** 9, 10 ** 9 + header[name]["data_offsets"][1]
                                        - header[name]["data_offsets"][0]]

    def overlap(header):
        names = [k for k in header if k != "__metadata__"]
        a, b = header[names[0]], header[names[1]]
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1] - b["data_offsets"][0]]

    edits = {
        "outside": lambda: rewrite_header(file, move_first),
        "overlap": lambda: rewrite_header(file, overlap),
        "size": lambda: rewrite_header(file, lambda h: h[first_tensor(h)]["shape"].append(2)),
        "dtype": lambda: rewrite_header(file, lambda h: h[first_tensor(h)].update(dtype="Q4")),
        "shape": lambda: edit_config(folder, intermediate_size=44),
        "missing": lambda: rewrite_header(file, lambda h: h.pop("model.norm.weight")),
        "unexpected": lambda: write_safetensors(file, {
            **{n: np.array(to_float32(d, a, n)) for n, (d, a) in read_safetensors(file).items()},
            "model.layers.2.mlp.up_proj.weight": np.zeros((40, 32), np.float32)}),
        "model_type": lambda: edit_config(folder, model_type="gpt-j"),
        "rope_type": lambda: edit_config(folder, rope_scaling={"rope_type": "yarn", "factor": 2.0}),
        "head_dim": lambda: edit_config(folder, head_dim=16),
        "head_dim_zero": lambda: edit_config(folder, head_dim=0),
        "no_weights": lambda: file.unlink(),
        "bad_json": lambda: (folder / "config.json").write_text("{"),
        "header_length": lambda: file.write_bytes(struct.pack("<Q", 1 << 40) + b"{}"),
        "nan": lambda: file.write_bytes(file.read_bytes()[:-4] + np.float32(np.nan).tobytes()),
    }
    edits[case]()
    with pytest.raises(InputError, match=message) as info:
        load_model(folder)
    assert str(folder) in str(info.value)
    assert "\n" not in str(info.value)


@given(st.binary(max_size=200), st.integers(0, 300))
def test_fuzzed_safetensors_files_load_or_raise_input_error(tmp_path_factory, body, length):
    path = tmp_path_factory.mktemp("fuzz") / "x.safetensors"
    path.write_bytes(struct.pack("<Q", length) + body)
    try:
        read_safetensors(path)
    except InputError as exc:
        assert str(path) in str(exc)


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "X"]),
    "shape": st.lists(st.integers(-1, 4), max_size=3),
    "data_offsets": st.lists(st.integers(-2, 40), min_size=0, max_size=3)}), max_size=3),
    st.integers(0, 48))
def test_fuzzed_headers_are_validated_before_any_read(tmp_path_factory, header, buffer_bytes):
    path = tmp_path_factory.mktemp("fuzz") / "x.safetensors"
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(buffer_bytes))
    try:
        tensors = read_safetensors(path)
    except InputError as exc:
        assert str(path) in str(exc)
        return
    spans = sorted(tuple(header[n]["data_offsets"]) for n in tensors)
    assert all(e0 <= b1 for (_, e0), (b1, _) in zip(spans, spans[1:]))
    assert all(e <= buffer_bytes for _, e in spans)


def test_cli_names_the_file_and_exits_2(hf_dir, capsys):
    from mirrorstream.cli import main

    folder, _ = hf_dir
    edit_config(folder, model_type="falcon")
    assert main(["generate", "--model", str(folder), "--prompt-ids", "1,2"]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'config.json'}: model_type 'falcon' is not supported" in err and err.count("\n") == 1


def test_cli_generates_from_a_directory_and_stops_at_its_eos(hf_dir, capsys):
    from mirrorstream.cli import main
    from refimpl.sampling import SamplingSettings
    from refimpl.testing import decode

    folder, _ = hf_dir
    model = load_model(folder)
    free = decode("ar", model, [1, 7], SamplingSettings(ignore_eos=True), 30).tokens
    stop = free[4]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [stop]}))
    assert main(["generate", "--model", str(folder), "--prompt-ids", "1,7", "--max-new-tokens", "30", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == free[:free.index(stop)] and out["stats"]["stop_reason"] == "eos"
    assert main(["generate", "--model", str(folder), "--prompt-ids", "1,7", "--max-new-tokens", "30", "--json",
                 "--ignore-eos"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == free
