"""Tokenizers: llama2.c `tokenizer.bin` (pure Python), SentencePiece `tokenizer.model`, and
Hugging Face `tokenizer.json` (through the `tokenizers` package; see HFTokenizer).

Both follow SentencePiece's BPE for Llama: a dummy-prefix space before
non-empty text, spaces as part of pieces, characters absent from the vocabulary
spelled as byte tokens <0x00>..<0xFF> (ids 3..258), and pairs merged greedily by
piece score. `encode` never adds BOS; the caller does.
"""
from __future__ import annotations

import codecs
import json
import re
import struct
from pathlib import Path

from refimpl.errors import InputError

BOS_ID = 1
EOS_ID = 2
_BYTE_PIECE = re.compile(rb"^<0x([0-9A-Fa-f]{2})>$")


class Llama2cTokenizer:
    """llama2.c's tokenizer.bin: int32 max_token_length, then per piece a float32
    score, an int32 length and the piece's bytes (spaces stored as ' ')."""

    def __init__(self, path: Path, vocab_size: int | None = None):
        self.path = Path(path)
        self.pieces, self.scores = _read_llama2c_vocab(self.path, vocab_size)
        self.vocab_size = len(self.pieces)
        self.lookup = {piece: i for i, piece in enumerate(self.pieces)}
        self.byte_ids = {}
        for i, piece in enumerate(self.pieces):
            match = _BYTE_PIECE.match(piece)
            if match:
                self.byte_ids[int(match.group(1), 16)] = i

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        ids: list[int] = []
        for char in " " + text:
            piece = char.encode("utf-8")
            if piece in self.lookup:
                ids.append(self.lookup[piece])
            else:
                ids.extend(self._byte_id(b, text) for b in piece)
        return self._merge(ids)

    def _byte_id(self, byte: int, text: str) -> int:
        if byte not in self.byte_ids:
            raise InputError(f"{self.path}: cannot encode {text!r}: no byte-fallback piece for 0x{byte:02X}")
        return self.byte_ids[byte]

    def _merge(self, ids: list[int]) -> list[int]:
        """Repeatedly merge the adjacent pair whose joined piece scores best (leftmost on ties)."""
        while True:
            best_score, best_at, best_id = None, -1, -1
            for i in range(len(ids) - 1):
                merged = self.lookup.get(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if merged is not None and (best_score is None or self.scores[merged] > best_score):
                    best_score, best_at, best_id = self.scores[merged], i, merged
            if best_at < 0:
                return ids
            ids[best_at:best_at + 2] = [best_id]

    def piece_bytes(self, token: int, previous: int | None) -> bytes:
        """The bytes a token adds to the text (the leading space after BOS dropped)."""
        piece = self.pieces[token]
        match = _BYTE_PIECE.match(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        if previous in (None, BOS_ID) and piece.startswith(b" "):
            piece = piece[1:]
        if token in (BOS_ID, EOS_ID):
            return b""
        return piece

    def decode(self, ids: list[int]) -> str:
        out, previous = bytearray(), None
        for token in ids:
            out += self.piece_bytes(token, previous)
            previous = token
        return out.decode("utf-8", errors="replace")


def _read_llama2c_vocab(path: Path, vocab_size: int | None) -> tuple[list[bytes], list[float]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read tokenizer ({exc.strerror})") from None
    pieces, scores, at = [], [], 4
    if len(data) < 4:
        raise InputError(f"{path}: too short to be a llama2.c tokenizer.bin")
    while at < len(data):
        if at + 8 > len(data):
            raise InputError(f"{path}: truncated tokenizer entry {len(pieces)}")
        score, length = struct.unpack_from("<fi", data, at)
        at += 8
        if length < 0 or at + length > len(data):
            raise InputError(f"{path}: tokenizer entry {len(pieces)} has an impossible length {length}")
        pieces.append(data[at:at + length])
        scores.append(score)
        at += length
        if vocab_size is not None and len(pieces) == vocab_size:
            break
    return pieces, scores


class SentencePieceTokenizer:
    """A SentencePiece `tokenizer.model`, through the sentencepiece package."""

    def __init__(self, path: Path):
        import sentencepiece

        self.path = Path(path)
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.path))
        except (OSError, RuntimeError):
            raise InputError(f"{path}: not a readable SentencePiece model") from None
        self.vocab_size = self.sp.GetPieceSize()

    def encode(self, text: str) -> list[int]:
        return list(self.sp.EncodeAsIds(text)) if text else []

    def piece_bytes(self, token: int, previous: int | None) -> bytes:
        if token in (BOS_ID, EOS_ID) or self.sp.IsControl(token):
            return b""
        if self.sp.IsByte(token):
            return bytes([int(self.sp.IdToPiece(token)[3:5], 16)])
        piece = self.sp.IdToPiece(token).replace("\u2581", " ").encode("utf-8")
        if previous in (None, BOS_ID) and piece.startswith(b" "):
            piece = piece[1:]
        return piece

    def decode(self, ids: list[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table of byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class HFTokenizer:
    """A Hugging Face `tokenizer.json` through the `tokenizers` package (byte-level BPE as
    GPT-2/Llama 3/Qwen, or SentencePiece-style with "\u2581" and <0xNN> byte pieces).
    `encode` adds no special tokens; special tokens decode to nothing."""

    def __init__(self, tokenizer, path: Path):
        self.tokenizer, self.path = tokenizer, Path(path)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        spec = json.loads(tokenizer.to_str())
        self.byte_level = '"ByteLevel"' in json.dumps(spec.get("decoder"))
        self.special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        self.byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}

    @classmethod
    def from_file(cls, path: Path) -> "HFTokenizer":
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)), path)
        except Exception as exc:  # the package reports a malformed file in its own exception type
            raise InputError(f"{path}: not a readable tokenizer.json ({str(exc).splitlines()[0][:200]})") from None

    @classmethod
    def from_gguf(cls, path: Path) -> "HFTokenizer":
        """GPT-2-style byte-level BPE from a GGUF's tokenizer.ggml.tokens and .merges."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        from refimpl.formats.gguf import read_gguf_vocab

        vocab = read_gguf_vocab(path)
        if vocab is None or vocab["model"] != "gpt2" or not vocab.get("merges"):
            kind = None if vocab is None else vocab["model"]
            raise InputError(f"{path}: GGUF vocabulary {kind!r} is not byte-level BPE (gpt2) with merges")
        merges = [tuple(m.split(" ", 1)) for m in vocab["merges"]]
        model = models.BPE(vocab={t: i for i, t in enumerate(vocab["tokens"])}, merges=merges)
        tokenizer = Tokenizer(model)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        return cls(tokenizer, path)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids) if text else []

    def piece_bytes(self, token: int, previous: int | None) -> bytes:
        if token in self.special:
            return b""
        piece = self.tokenizer.id_to_token(int(token)) or ""
        if self.byte_level:
            return bytes(self.byte_decoder.get(c, 0x3F) for c in piece)
        match = _BYTE_PIECE.match(piece.encode("utf-8"))
        if match:
            return bytes([int(match.group(1), 16)])
        text = piece.replace("\u2581", " ").encode("utf-8")
        if previous is None or previous in self.special:
            text = text[1:] if text.startswith(b" ") else text
        return text

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def load_tokenizer(path: str | Path, vocab_size: int | None = None):
    """A tokenizer from `tokenizer.model` (SentencePiece), a llama2.c `.bin`, a Hugging Face
    `tokenizer.json`, or a GGUF's byte-level BPE vocabulary.

    With vocab_size, a vocabulary of another size is an error (it belongs to
    another model); a tokenizer.json may be smaller (HF pads embedding tables)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: tokenizer file not found")
    if path.suffix == ".json":
        tokenizer = HFTokenizer.from_file(path)
        if vocab_size is not None and tokenizer.vocab_size > vocab_size:
            raise InputError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary "
                             f"is {vocab_size}")
        return tokenizer
    if path.suffix == ".gguf":
        return HFTokenizer.from_gguf(path)
    if path.suffix == ".model":
        tokenizer = SentencePieceTokenizer(path)
    else:
        tokenizer = Llama2cTokenizer(path, vocab_size)
    if vocab_size is not None and tokenizer.vocab_size != vocab_size:
        raise InputError(f"{path}: tokenizer has {tokenizer.vocab_size} pieces but the model's vocabulary is {vocab_size}")
    return tokenizer


class StreamDecoder:
    """Turns generated ids into text chunks as they come, holding back split UTF-8."""

    def __init__(self, tokenizer, previous: int | None):
        self.tokenizer = tokenizer
        self.previous = previous
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        chunk = self.tokenizer.piece_bytes(token, self.previous)
        self.previous = token
        return self.utf8.decode(chunk)

    def flush(self) -> str:
        return self.utf8.decode(b"", final=True)
