"""`convert` between llama2c, Hugging Face and GGUF: F32 round trips are bit for bit, half
precision rounds once, the output never appears half-written, bad requests exit 2."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, checkpoint_file
from refimpl.checkpoints import load_model, save_llama2c
from refimpl.convert import convert, read_any
from refimpl.errors import InputError
from refimpl.formats.gguf import read_gguf_vocab, write_gguf
from refimpl.model import ModelConfig
from refimpl.testing import random_weights

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ModelConfig(dim=32, hidden_dim=40, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, seq_len=48,
                     shared_classifier=False)


def logits(model, tokens=(1, 5, 9, 33, 2, 7)):
    return model.forward(list(tokens), np.arange(len(tokens)), model.new_cache())


@pytest.fixture
def v1(tmp_path):
    save_llama2c(tmp_path / "m.bin", CONFIG, random_weights(CONFIG, 2), version=1)
    return tmp_path / "m.bin"


@pytest.mark.parametrize("via", ["hf", "gguf"])
def test_llama2c_round_trips_are_bit_for_bit(v1, tmp_path, via):
    middle = convert(v1, tmp_path / f"mid.{via}", via)
    back = convert(middle, tmp_path / "back.bin", "llama2c")
    assert back.read_bytes() == v1.read_bytes()
    assert np.array_equal(logits(load_model(middle)), logits(load_model(v1)))


def test_hf_gguf_hf_keeps_the_safetensors_bytes(v1, tmp_path):
    hf = convert(v1, tmp_path / "a", "hf")
    again = convert(convert(hf, tmp_path / "a.gguf", "gguf"), tmp_path / "b", "hf")
    assert (again / "model.safetensors").read_bytes() == (hf / "model.safetensors").read_bytes()
    assert json.loads((again / "config.json").read_text()) == json.loads((hf / "config.json").read_text())


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_rounds_once_and_then_round_trips(v1, tmp_path, dtype):
    hf = convert(v1, tmp_path / "h", "hf", dtype)
    gguf = convert(hf, tmp_path / "h.gguf", "gguf", dtype)
    hf2 = convert(gguf, tmp_path / "h2", "hf", dtype)
    assert (hf2 / "model.safetensors").read_bytes() == (hf / "model.safetensors").read_bytes()
    a, b = logits(load_model(hf)), logits(load_model(v1))
    assert np.array_equal(logits(load_model(gguf)), a)
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.5


def test_stories15M_as_hf_and_gguf_gives_the_same_greedy_tokens(tmp_path):
    from refimpl.decoding import autoregressive, generate
    from refimpl.sampling import SamplingSettings

    source = checkpoint_file("stories15M/stories15M.bin")
    hf = convert(source, tmp_path / "stories15M", "hf")
    gguf = convert(source, tmp_path / "stories15M.gguf", "gguf")
    assert (hf / "tokenizer.model").is_file()
    assert set(load_model(hf).config.stop_ids) == {1, 2}  # llama2.c's stop at BOS, kept in generation_config
    vocab = read_gguf_vocab(gguf)
    assert len(vocab["tokens"]) == 32000 and vocab["tokens"][9038] == "\u2581Once"
    runs = []
    for path in (source, hf, gguf):
        model = load_model(path)
        runs.append(generate(autoregressive(model, [1], SamplingSettings(), 40), [1]).tokens)
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 40


def test_the_legacy_format_round_trips_its_weights(tmp_path):
    source = checkpoint_file("stories260K/stories260K.bin")
    back = convert(convert(source, tmp_path / "s", "hf"), tmp_path / "s.bin", "llama2c", legacy=True)
    config, a, _ = read_any(source)
    _, b, _ = read_any(back)
    assert all(np.array_equal(a[k], b[k]) for k in a if k not in ("rope_cos", "rope_sin"))
    assert back.stat().st_size == source.stat().st_size


def test_quantised_gguf_is_refused_naming_the_type(v1, tmp_path):
    import gguf

    path = tmp_path / "q.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 34), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InputError, match=r"q.gguf: tensor 'token_embd.weight' is quantised \(Q8_0\)"):
        load_model(path)


def test_unsupported_gguf_architecture_and_missing_metadata(v1, tmp_path):
    _, weights, _ = read_any(v1)
    write_gguf(tmp_path / "ok.gguf", CONFIG, weights)
    data = (tmp_path / "ok.gguf").read_bytes()
    (tmp_path / "arch.gguf").write_bytes(data.replace(b"llama", b"gpt-j", 1))
    with pytest.raises(InputError, match="architecture 'gpt-j'"):
        load_model(tmp_path / "arch.gguf")
    (tmp_path / "cut.gguf").write_bytes(data[:200])
    with pytest.raises(InputError, match="cut.gguf"):
        load_model(tmp_path / "cut.gguf")


def test_llama2c_refuses_what_it_cannot_hold(tmp_path):
    config = ModelConfig(**{**CONFIG.__dict__, "rope_theta": 500000.0})
    _, weights = config, random_weights(config, 1)
    from refimpl.formats.hf import write_hf

    write_hf(tmp_path / "theta", config, weights)
    with pytest.raises(InputError, match="rope_theta=500000.0"):
        convert(tmp_path / "theta", tmp_path / "out.bin", "llama2c")
    assert not (tmp_path / "out.bin").exists() and not list(tmp_path.glob(".out.bin*"))


def test_a_failed_write_leaves_nothing_under_the_final_name(v1, tmp_path, monkeypatch):
    from refimpl.formats import gguf as module

    def boom(*args, **kwargs):
        (tmp_path / ".x.gguf.partial").write_bytes(b"GGUF half")
        raise OSError("disk full")

    monkeypatch.setattr(module, "write_gguf", boom)
    with pytest.raises(OSError):
        convert(v1, tmp_path / "x.gguf", "gguf")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / ".x.gguf.partial").exists()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mirrorstream.cli", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)


def test_cli_converts_and_reports_bad_input_in_one_line(v1, tmp_path):
    done = run_cli("convert", str(v1), str(tmp_path / "c.gguf"), "--to", "gguf")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "c.gguf").is_file()
    again = run_cli("convert", str(v1), str(tmp_path / "c.gguf"), "--to", "gguf")
    assert again.returncode == 2 and "already exists" in again.stderr and len(again.stderr.splitlines()) == 1
    missing = run_cli("convert", str(tmp_path / "nope.bin"), str(tmp_path / "d"), "--to", "hf")
    assert missing.returncode == 2 and "nope.bin" in missing.stderr
