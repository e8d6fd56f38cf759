"""Tokenizers reproduce llama.cpp's reference ids for the Llama-2 vocabulary and decode back."""
import pytest

from conftest import checkpoint_file
from refimpl.errors import InputError
from refimpl.tokenizer import StreamDecoder, load_tokenizer


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
