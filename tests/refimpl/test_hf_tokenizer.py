"""tokenizer.json through the tokenizers package: GPT-2 byte-level BPE reproduces
llama.cpp's reference tokenisations; decoding streams bytes back; bad files exit cleanly."""
import pytest

from conftest import checkpoint_file
from refimpl.errors import InputError
from refimpl.tokenizer import HFTokenizer, StreamDecoder, load_tokenizer

pytest.importorskip("tokenizers", reason="tokenizer.json support needs the tokenizers package")


def vectors(name):
    inp = checkpoint_file(f"tokenizers/{name}.inp").read_text(encoding="utf-8")
    out = checkpoint_file(f"tokenizers/{name}.out").read_text().split("\n")
    texts = inp.split("\n__ggml_vocab_test__\n")
    return [(text, [int(t) for t in ids.split()]) for text, ids in zip(texts, out)]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """The GPT-2 vocabulary of llama.cpp's vocab GGUF, saved as a tokenizer.json and loaded back."""
    built = load_tokenizer(checkpoint_file("tokenizers/ggml-vocab-gpt-2.gguf"))
    path = tmp_path_factory.mktemp("gpt2") / "tokenizer.json"
    built.tokenizer.save(str(path))
    return load_tokenizer(path, 50257)


def test_gpt2_reference_vectors(gpt2):
    cases = vectors("ggml-vocab-gpt-2.gguf")
    assert len(cases) >= 40 and gpt2.vocab_size == 50257 and gpt2.byte_level
    for text, expected in cases:
        ids = gpt2.encode(text)
        assert ids == expected, text
        assert gpt2.decode(ids) == text


def test_streaming_bytes_rebuild_every_reference_text(gpt2):
    for text, ids in vectors("ggml-vocab-gpt-2.gguf"):
        stream = StreamDecoder(gpt2, previous=None)
        assert "".join(stream.push(t) for t in ids) + stream.flush() == text


def test_sentencepiece_style_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x41>": 3, "\u2581hi": 4, "\u2581": 5, "h": 6, "i": 7, "hi": 8}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("h", "i"), ("\u2581", "hi")], unk_token="<unk>",
                               byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                          decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json", 9)
    assert not loaded.byte_level
    assert loaded.piece_bytes(4, None) == b"hi" and loaded.piece_bytes(4, 6) == b" hi"
    assert loaded.piece_bytes(3, 4) == b"A" and loaded.piece_bytes(1, None) == b""
    assert loaded.encode("hi hi") == [4, 4] and loaded.decode([1, 4, 4]) == "hi hi"


def test_bad_tokenizer_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="tokenizer.json: not a readable tokenizer.json"):
        load_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(InputError, match="is not byte-level BPE"):
        HFTokenizer.from_gguf(checkpoint_file("tokenizers/ggml-vocab-llama-spm.gguf"))
