"""Fuzzing the readers of user files: llama2.c checkpoints (legacy and version 1),
tokenizers (tokenizer.bin, tokenizer.model) and --tokens files.

Every input, however mangled (truncated, bytes overwritten, header fields set to
extreme values, random bytes), must give an InputError or a working result; never
another exception, a hang or a big allocation. Each example is timed and its
Python-side allocations (numpy's included) traced.

Budget: ten times the profile's max_examples per reader (150 under CI's `ci`
profile, about 20 s in all; 3000 under HYPOTHESIS_PROFILE=thorough).
"""
import functools
import io
import json
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refimpl.checkpoints import load_model, save_llama2c
from refimpl.errors import InputError
from refimpl.model import ModelConfig
from refimpl.oracle import TokenFile, read_token_file
from refimpl.testing import random_weights
from refimpl.tokenizer import load_tokenizer, save_llama2c_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = settings().max_examples * 10
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
SECONDS = 5.0                 # per example, generous for a loaded 2-core machine
BYTES = 32 << 20              # traced allocation peak per example
TEXT = "Once upon a time, Lily saw a big dog. ab é 🦙"

CONFIG = ModelConfig(dim=8, hidden_dim=16, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=300, seq_len=32)
UNTIED = ModelConfig(dim=8, hidden_dim=12, n_layers=1, n_heads=1, n_kv_heads=1, vocab_size=40, seq_len=16,
                     shared_classifier=False)
INT32_EXTREMES = [0, 1, -1, 2, 255, 1 << 16, 1 << 24, (1 << 24) + 1, 1 << 30, 2**31 - 1, -2**31]


def _checkpoint_bytes(tmp, config, version) -> bytes:
    path = tmp / f"seed-{version}-{config.vocab_size}.bin"
    save_llama2c(path, config, random_weights(config, 1), version=version)
    return path.read_bytes()


def _tokenizer_bin_bytes(tmp) -> bytes:
    pieces = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    pieces += [b" a", b"ab", b" ab", b"c", b"", b" Once", b" upon"] + [bytes([97 + i]) * 2 for i in range(26)]
    pieces += [b"\xff\xfe", b" " * 8, b"x" * 40, b"<0xZZ>", b" time", b" Lily"]
    pieces += [bytes([65 + i]) for i in range(300 - len(pieces))]
    path = tmp / "tokenizer.bin"
    save_llama2c_tokenizer(path, pieces, [float(i % 17) - 3 for i in range(len(pieces))])
    return path.read_bytes()


def _tokenizer_model_bytes() -> bytes:
    import sentencepiece

    model = io.BytesIO()
    lines = ["Once upon a time there was a little girl named Lily.", "She liked to play outside in the sun."]
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines * 20), model_writer=model,
                                             vocab_size=300, model_type="bpe", byte_fallback=True,
                                             normalization_rule_name="identity", minloglevel=2)
    return model.getvalue()


@functools.cache
def seed_files() -> dict[str, bytes]:
    """Valid files to mutate, by name (built once; a plain function, not a fixture, so
    that a failing example's report does not print them)."""
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        return {
            "legacy": _checkpoint_bytes(tmp, CONFIG, None),
            "v1": _checkpoint_bytes(tmp, CONFIG, 1),
            "legacy-untied": _checkpoint_bytes(tmp, UNTIED, None),
            "v1-untied": _checkpoint_bytes(tmp, UNTIED, 1),
            "tokenizer.bin": _tokenizer_bin_bytes(tmp),
            "tokenizer.model": _tokenizer_model_bytes(),
            "tokens.json": json.dumps({"prompt_ids": [1, 9038], "tokens": [29892, 727, 471, 2]}).encode(),
            "tokens.txt": b"29892\n727\n471\n",
        }


@st.composite
def mutated(draw, seed: bytes, header_bytes: int = 64):
    """`seed` mangled: random bytes, or a truncation, overwrites (int32 fields of the
    header set to extreme values, single bytes, runs of random bytes), insertions."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=512))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "int32", "byte", "run", "insert"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[at:]
        elif kind == "int32":
            at = 4 * draw(st.integers(0, header_bytes // 4 - 1))
            value = draw(st.sampled_from(INT32_EXTREMES) | st.integers(-2**31, 2**31 - 1))
            data[at:at + 4] = struct.pack("<i", value)
        elif kind == "byte":
            data[at:at + 1] = bytes([draw(st.integers(0, 255))])
        elif kind == "run":
            run = draw(st.binary(min_size=1, max_size=64))
            data[at:at + len(run)] = run
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


def bounded(read, path):
    """read(path) with its time and traced allocation peak checked; InputError -> None."""
    size = path.stat().st_size
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = read(path)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        result = None
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < SECONDS, f"{elapsed:.1f} s"
    assert peak < BYTES + 4 * size, f"{peak} bytes allocated for a {size}-byte file"
    return result


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@FUZZ
@given(data=st.data())
def test_fuzz_checkpoint_reader(tmp_path, data):
    name = data.draw(st.sampled_from(["legacy", "v1", "legacy-untied", "v1-untied"]))
    raw = data.draw(mutated(seed_files()[name], header_bytes=40 if name.startswith("v1") else 28))
    model = bounded(load_model, _write(tmp_path, "m.bin", raw))
    if model is not None:   # a valid checkpoint: it must run
        logits = model.forward([0], [0], model.new_cache(2))
        assert logits.shape == (1, model.config.vocab_size)


def _use_tokenizer(tokenizer):
    try:
        ids = tokenizer.encode(TEXT)
    except InputError:
        ids = []
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert isinstance(tokenizer.decode(ids), str)
    for token in range(tokenizer.vocab_size):
        assert isinstance(tokenizer.piece_bytes(token, None), bytes)
    assert tokenizer.max_piece_bytes >= 1


@FUZZ
@given(data=st.data())
def test_fuzz_tokenizer_bin_reader(tmp_path, data):
    raw = data.draw(mutated(seed_files()["tokenizer.bin"], header_bytes=64))
    vocab = data.draw(st.sampled_from([None, 300]))
    path = _write(tmp_path, "tokenizer.bin", raw)
    tokenizer = bounded(lambda p: load_tokenizer(p, vocab), path)
    if tokenizer is not None:
        assert vocab is None or tokenizer.vocab_size == vocab
        _use_tokenizer(tokenizer)


@FUZZ
@given(data=st.data())
def test_fuzz_tokenizer_model_reader(tmp_path, data):
    raw = data.draw(mutated(seed_files()["tokenizer.model"], header_bytes=64))
    vocab = data.draw(st.sampled_from([None, 300]))
    tokenizer = bounded(lambda p: load_tokenizer(p, vocab), _write(tmp_path, "tokenizer.model", raw))
    if tokenizer is not None:
        _use_tokenizer(tokenizer)


JSON_PIECES = st.sampled_from(['[', ']', '{', '}', ',', ':', '"tokens"', '"prompt_ids"', "1", "-7", "2.5",
                               "1e999", "9" * 30, "null", "true", "NaN", " ", "\n", '"', "\\u0000", "\xff"])


@FUZZ
@given(data=st.data())
def test_fuzz_token_file_reader(tmp_path, data):
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        raw = data.draw(mutated(seed_files()[data.draw(st.sampled_from(["tokens.json", "tokens.txt"]))], 16))
    elif choice == 1:
        raw = "".join(data.draw(st.lists(JSON_PIECES, max_size=40))).encode("utf-8", "surrogatepass")
    else:
        raw = data.draw(st.sampled_from(["[", "{\"tokens\":", "-"])) * data.draw(st.integers(1, 200_000))
        raw = raw.encode()
    result = bounded(read_token_file, _write(tmp_path, "tokens", raw))
    if result is not None:
        assert isinstance(result, TokenFile) and result.tokens
        for ids in (result.tokens, result.prompt_ids or [0]):
            assert all(type(i) is int for i in ids)


def test_the_seeds_themselves_are_valid(tmp_path):
    """The fuzzers start from working files (else they would test only the error paths)."""
    for name in ("legacy", "v1", "legacy-untied", "v1-untied"):
        model = load_model(_write(tmp_path, f"{name}.bin", seed_files()[name]))
        assert np.isfinite(model.forward([1], [0], model.new_cache(2))).all()
    for name in ("tokenizer.bin", "tokenizer.model"):
        tokenizer = load_tokenizer(_write(tmp_path, name, seed_files()[name]), 300)
        assert tokenizer.decode(tokenizer.encode("Once upon a time")).lstrip() == "Once upon a time"
    assert read_token_file(_write(tmp_path, "t.json", seed_files()["tokens.json"])).prompt_ids == [1, 9038]


@functools.cache
def reference_lines() -> bytes:
    """`oracle reference` records of a tiny random model for two prompts (greedy and sampled)."""
    from refimpl.model import Model
    from refimpl.oracle import reference
    from refimpl.sampling import SamplingSettings

    model = Model.from_dense(UNTIED, random_weights(UNTIED, 2))
    records = [reference(model, [1, 5], SamplingSettings(), 6, "a"),
               reference(model, [1, 7, 3], SamplingSettings(temperature=1.0, seed=4), 5, "b")]
    return "\n".join(json.dumps(r) for r in records).encode()


def _candidate_lines() -> bytes:
    records = [json.loads(line) for line in reference_lines().decode().splitlines()]
    return "\n".join(json.dumps({"id": r["id"], "tokens": r["tokens"], "logprobs": r["logprobs"]})
                     for r in records).encode()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.sampled_from([10**400, -1, 0, 7])
    | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8)
CANDIDATE_PIECES = st.sampled_from(['{"id": "a", "tokens": [1, 2], "logprobs": [-0.5]}', '{"tokens": "x"}',
                                    '{"id": 1, "token_ids": [3]}', '{"logprobs": [1' + "0" * 400 + ']}',
                                    '{"tokens": [1], "logprobs": [NaN, Infinity]}', "[]", "{}", "\n", "7"])


@FUZZ
@given(data=st.data())
def test_fuzz_reference_and_candidate_files(tmp_path, data):
    from refimpl.oracle import check_files, summary

    side = data.draw(st.sampled_from(["reference", "reference values", "candidate", "candidate values", "pieces"]))
    reference, candidate = reference_lines(), _candidate_lines()
    if side.endswith("values"):   # a field of one record set to another JSON value
        text = reference if side.startswith("reference") else candidate
        records = [json.loads(line) for line in text.decode().splitlines()]
        record = data.draw(st.sampled_from(records))
        record[data.draw(st.sampled_from(sorted(record)))] = data.draw(JSON_VALUES)
        text = "\n".join(json.dumps(r) for r in records).encode()
        reference, candidate = (text, candidate) if side.startswith("reference") else (reference, text)
    elif side == "reference":
        reference = data.draw(mutated(reference, 16))
    elif side == "candidate":
        candidate = data.draw(mutated(candidate, 16))
    else:
        candidate = "\n".join(data.draw(st.lists(CANDIDATE_PIECES, max_size=6))).encode()
    ref_path, cand_path = _write(tmp_path, "ref.jsonl", reference), _write(tmp_path, "cand.jsonl", candidate)
    verdicts = bounded(lambda _: check_files(ref_path, cand_path), cand_path)
    if verdicts is not None:
        assert all(v.status in ("equal", "near-tie", "diverged") for v in verdicts)
        assert all(isinstance(v.describe(), str) for v in verdicts) and "prompts" in summary(verdicts)
