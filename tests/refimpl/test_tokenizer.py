"""Tokenizers reproduce llama.cpp's reference ids for the Llama-2 vocabulary and decode back."""
import functools
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import checkpoint_file
from refimpl.errors import InputError
from refimpl.tokenizer import StreamDecoder, load_tokenizer, save_llama2c_tokenizer


def vectors():
    inp = checkpoint_file("tokenizers/ggml-vocab-llama-spm.gguf.inp").read_text(encoding="utf-8")
    out = checkpoint_file("tokenizers/ggml-vocab-llama-spm.gguf.out").read_text().split("\n")
    texts = inp.split("\n__ggml_vocab_test__\n")
    return [(text, [int(t) for t in ids.split()]) for text, ids in zip(texts, out)]


@pytest.mark.parametrize("name", ["tokenizer.bin", "tokenizer.model"])
def test_reference_vectors(name):
    tokenizer = load_tokenizer(checkpoint_file(f"stories15M/{name}"), 32000)
    cases = vectors()
    assert len(cases) >= 40
    for text, expected in cases:
        ids = tokenizer.encode(text)
        assert ids == expected, text
        assert tokenizer.decode(ids) == text


def test_streaming_decoder_holds_split_utf8():
    tokenizer = load_tokenizer(checkpoint_file("stories15M/tokenizer.bin"), 32000)
    ids = tokenizer.encode("naïve 🦙 ok")
    stream = StreamDecoder(tokenizer, previous=1)
    text = "".join(stream.push(t) for t in ids) + stream.flush()
    assert text == "naïve 🦙 ok"


def test_small_llama2c_vocabulary():
    tokenizer = load_tokenizer(checkpoint_file("stories260K/tok512.bin"), 512)
    ids = tokenizer.encode("Once upon a time")
    assert all(0 <= i < 512 for i in ids) and tokenizer.decode(ids) == "Once upon a time"


def test_vocabulary_size_mismatch_is_an_error():
    with pytest.raises(InputError, match="512 pieces but the model's vocabulary is 32000"):
        load_tokenizer(checkpoint_file("stories260K/tok512.bin"), 32000)
    with pytest.raises(InputError, match="32000 pieces"):
        load_tokenizer(checkpoint_file("stories15M/tokenizer.model"), 512)


def naive_merge(tokenizer, ids: list[int]) -> list[int]:
    """The merge rule as specified: rescan, merge the best-scoring pair (leftmost on ties), repeat."""
    ids = list(ids)
    while True:
        best = None
        for i in range(len(ids) - 1):
            merged = tokenizer.lookup.get(tokenizer.pieces[ids[i]] + tokenizer.pieces[ids[i + 1]])
            if merged is not None and (best is None or tokenizer.scores[merged] > best[0]):
                best = (tokenizer.scores[merged], i, merged)
        if best is None:
            return ids
        ids[best[1]:best[1] + 2] = [best[2]]


@functools.cache
def tiny_tokenizer():
    """Byte pieces, then pieces over {a, b, space} with tied and distinct scores."""
    pieces = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    pieces += [b"a", b"b", b" ", b"ab", b"ba", b"aa", b" a", b"bab", b"aab", b" ab", b"abab", b"a a"]
    scores = [0.0] * 259 + [0, 0, 0, 1, 1, 2, 1, 3, 3, 2, 5, 4]
    with tempfile.TemporaryDirectory() as folder:
        save_llama2c_tokenizer(Path(folder) / "tiny.bin", pieces, scores)
        return load_tokenizer(Path(folder) / "tiny.bin")


@settings(max_examples=settings().max_examples * 10)
@given(text=st.text(alphabet="ab é", max_size=40))
def test_heap_merge_equals_the_rescanning_rule(text):
    tokenizer = tiny_tokenizer()
    units = [tokenizer.lookup.get(c.encode()) for c in " " + text]
    units = [u if u is not None else tokenizer.byte_ids[b] for c, u in zip(" " + text, units)
             for b in ([0] if u is not None else c.encode())]
    assert tokenizer._merge(list(units)) == naive_merge(tokenizer, units)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encoding_a_long_text_takes_linear_time():
    tokenizer = tiny_tokenizer()
    start = time.perf_counter()
    ids = tokenizer.encode("ab " * 30_000)
    assert time.perf_counter() - start < 3 and tokenizer.decode(ids) == "ab " * 30_000
