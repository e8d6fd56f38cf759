"""Tokenizers: llama2.c `tokenizer.bin` (pure Python), SentencePiece `tokenizer.model`, and
Hugging Face `tokenizer.json` (through the `tokenizers` package; see HFTokenizer).

Both follow SentencePiece's BPE for Llama: a dummy-prefix space before
non-empty text, spaces as part of pieces, characters absent from the vocabulary
spelled as byte tokens <0x00>..<0xFF> (ids 3..258), and pairs merged greedily by
piece score. `encode` never adds BOS; the caller does.
"""
from __future__ import annotations

import codecs
import heapq
import json
import math
import re
import struct
from pathlib import Path

from refimpl.errors import InputError, read_bytes, regular_file_size

MAX_TOKENIZER_BYTES = 64 << 20   # tokenizer files are a few MB at most (Llama 3's 128k vocabulary: 2 MB)

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
        self.max_piece_bytes = max(map(len, self.pieces), default=1)   # bounds a text's token count
        self.lookup = {piece: i for i, piece in enumerate(self.pieces)}
        self.byte_ids = {}
        for i, piece in enumerate(self.pieces):
            match = _BYTE_PIECE.match(piece)
            if match:
                self.byte_ids[int(match.group(1), 16)] = i

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        _check_utf8(text)
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
        """Repeatedly merge the adjacent pair whose joined piece scores best (leftmost on ties).

        A heap of candidate pairs keyed (-score, position) over a linked list of symbols,
        so a text of n symbols takes O(n log n), not a rescan per merge; a popped pair
        whose symbols changed since it was pushed is stale and skipped."""
        n = len(ids)
        tokens, after, before, alive = list(ids), list(range(1, n + 1)), list(range(-1, n - 1)), [True] * n
        heap: list[tuple[float, int, int, int, int]] = []

        def push(i: int) -> None:
            j = after[i]
            if j < n:
                merged = self.lookup.get(self.pieces[tokens[i]] + self.pieces[tokens[j]])
                if merged is not None:
                    heapq.heappush(heap, (-self.scores[merged], i, tokens[i], tokens[j], merged))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, left, right, merged = heapq.heappop(heap)
            j = after[i]
            if not alive[i] or j >= n or tokens[i] != left or tokens[j] != right:
                continue
            tokens[i], alive[j], after[i] = merged, False, after[j]
            if after[j] < n:
                before[after[j]] = i
            push(i)
            if before[i] >= 0:
                push(before[i])
        return [t for t, keep in zip(tokens, alive) if keep]

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
    """Pieces and scores; with vocab_size, reading stops (with an error) at the first piece
    past it, so a tokenizer of another model is refused without reading it whole."""
    data = read_bytes(path, "tokenizer", MAX_TOKENIZER_BYTES)
    pieces, scores, at = [], [], 4
    if len(data) < 4:
        raise InputError(f"{path}: too short to be a llama2.c tokenizer.bin")
    while at < len(data):
        if vocab_size is not None and len(pieces) == vocab_size:
            raise InputError(f"{path}: tokenizer has more than {vocab_size} pieces but the model's "
                             f"vocabulary is {vocab_size} (it belongs to another model)")
        if at + 8 > len(data):
            raise InputError(f"{path}: truncated tokenizer entry {len(pieces)}")
        score, length = struct.unpack_from("<fi", data, at)
        at += 8
        if length < 0 or at + length > len(data):
            raise InputError(f"{path}: tokenizer entry {len(pieces)} has an impossible length {length}")
        if math.isnan(score):
            raise InputError(f"{path}: tokenizer entry {len(pieces)} has a NaN score")
        pieces.append(data[at:at + length])
        scores.append(score)
        at += length
    return pieces, scores


class SentencePieceTokenizer:
    """A SentencePiece `tokenizer.model`, through the sentencepiece package. Every piece
    is checked once at load (UTF-8 text; byte pieces spelled <0xXX>), so that using the
    tokenizer cannot fail later."""

    def __init__(self, path: Path):
        import sentencepiece

        self.path = Path(path)
        self.sp = sentencepiece.SentencePieceProcessor()
        data = read_bytes(self.path, "tokenizer", MAX_TOKENIZER_BYTES)
        try:
            self.sp.LoadFromSerializedProto(data)
        except (OSError, RuntimeError, TypeError, ValueError):
            raise InputError(f"{path}: not a readable SentencePiece model") from None
        self.vocab_size = self.sp.GetPieceSize()
        self.piece_texts = [self._piece_text(i) for i in range(self.vocab_size)]
        self.max_piece_bytes = max((len(p.encode("utf-8")) for p in self.piece_texts), default=1)

    def _piece_text(self, token: int) -> str:
        try:
            piece = self.sp.IdToPiece(token)
        except UnicodeDecodeError:
            raise InputError(f"{self.path}: piece {token} is not UTF-8 text") from None
        if self.sp.IsByte(token) and not _BYTE_PIECE.match(piece.encode("utf-8")):
            raise InputError(f"{self.path}: byte piece {token} is spelled {piece!r}, not <0xXX>")
        return piece

    def encode(self, text: str) -> list[int]:
        return list(self.sp.EncodeAsIds(_check_utf8(text))) if text else []

    def piece_bytes(self, token: int, previous: int | None) -> bytes:
        if token in (BOS_ID, EOS_ID) or self.sp.IsControl(token):
            return b""
        piece = self.piece_texts[token]
        if self.sp.IsByte(token):
            return bytes([int(piece[3:5], 16)])
        piece = piece.replace("\u2581", " ").encode("utf-8")
        if previous in (None, BOS_ID) and piece.startswith(b" "):
            piece = piece[1:]
        return piece

    def decode(self, ids: list[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])


def _check_utf8(text: str) -> str:
    """`text`, or an InputError when it holds lone surrogates (undecodable bytes from argv,
    or "\\udcff" escapes in JSON) and so has no UTF-8 spelling to tokenize."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"text to tokenize is not valid UTF-8 (a stray byte at character {exc.start})") from None
    return text


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
        # an upper bound of the bytes one token spells (bounds a text's token count)
        self.max_piece_bytes = max((len(t.encode("utf-8")) for t in tokenizer.get_vocab()), default=1)

    @classmethod
    def from_file(cls, path: Path) -> "HFTokenizer":
        from tokenizers import Tokenizer

        text = read_bytes(path, "tokenizer", MAX_TOKENIZER_BYTES).decode("utf-8", errors="replace")
        try:
            return cls(Tokenizer.from_str(text), path)
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
        return list(self.tokenizer.encode(_check_utf8(text), add_special_tokens=False).ids) if text else []

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
    if not path.exists():
        raise InputError(f"{path}: tokenizer file not found")
    regular_file_size(path, "tokenizer")
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


def save_llama2c_tokenizer(path: str | Path, pieces: list[bytes], scores: list[float]) -> None:
    """Write pieces and scores as a llama2.c tokenizer.bin (the reader's inverse; for tests)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(map(len, pieces), default=0)))
        for piece, score in zip(pieces, scores, strict=True):
            f.write(struct.pack("<fi", score, len(piece)) + piece)
