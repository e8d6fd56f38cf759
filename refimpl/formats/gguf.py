"""GGUF files (llama.cpp's format), read and written through the `gguf` package.

Llama-family models only: metadata under `llama.*` (embedding_length,
feed_forward_length, block_count, attention.head_count[_kv],
attention.layer_norm_rms_epsilon, rope.freq_base, context_length, vocab_size) and
`tokenizer.ggml.*`; tensors token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v,
attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}, output_norm, output (absent when
tied). llama.cpp's Llama q/k rows use the interleaved-pair RoPE layout, as we do,
so no permutation is needed. F32, F16 and BF16 tensors load as float32
(memory-mapped); quantised tensors are refused with their type's name.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from refimpl.errors import InputError
from refimpl.formats.safetensors import bfloat16_bits
from refimpl.model import ModelConfig

MAGIC = b"GGUF"
MAX_CONTEXT = 4096
FLOAT_TYPES = ("F32", "F16", "BF16")
FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32}
LAYER_TENSORS = {"attn_norm": "blk.{l}.attn_norm.weight", "wq": "blk.{l}.attn_q.weight",
                 "wk": "blk.{l}.attn_k.weight", "wv": "blk.{l}.attn_v.weight", "wo": "blk.{l}.attn_output.weight",
                 "ffn_norm": "blk.{l}.ffn_norm.weight", "w1": "blk.{l}.ffn_gate.weight",
                 "w2": "blk.{l}.ffn_down.weight", "w3": "blk.{l}.ffn_up.weight"}
GLOBAL_TENSORS = {"token_embedding": "token_embd.weight", "final_norm": "output_norm.weight",
                  "classifier": "output.weight"}


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def _open(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(path, "r")
    except Exception as exc:  # the package raises many kinds on a corrupt file
        raise InputError(f"{path}: not a readable GGUF file ({exc.__class__.__name__}: {exc})") from None


def _field(reader, key: str, path: Path, default=None, kind=(int,)):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise InputError(f"{path}: GGUF metadata {key} is missing")
        return default
    try:
        value = field.contents()
    except Exception:
        raise InputError(f"{path}: GGUF metadata {key} is unreadable") from None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"{path}: GGUF metadata {key} = {value!r} has the wrong type")
    return value


def read_gguf_config(reader, path: Path, tensors: dict) -> ModelConfig:
    arch = _field(reader, "general.architecture", path, kind=(str,))
    if arch != "llama":
        raise InputError(f"{path}: GGUF architecture {arch!r} is not supported (supported: llama)")
    if "rope_freqs.weight" in tensors or reader.fields.get("llama.rope.scaling.type") is not None:
        raise InputError(f"{path}: GGUF RoPE scaling is not supported")
    embedding = tensors.get("token_embd.weight")
    if embedding is None:
        raise InputError(f"{path}: missing tensor 'token_embd.weight'")
    vocab = _field(reader, "llama.vocab_size", path, default=int(embedding.shape[1]))
    bos = _field(reader, "tokenizer.ggml.bos_token_id", path, default=-1)
    eos = _field(reader, "tokenizer.ggml.eos_token_id", path, default=-1)
    config = ModelConfig(
        dim=_field(reader, "llama.embedding_length", path), hidden_dim=_field(reader, "llama.feed_forward_length", path),
        n_layers=_field(reader, "llama.block_count", path), n_heads=_field(reader, "llama.attention.head_count", path),
        n_kv_heads=_field(reader, "llama.attention.head_count_kv", path,
                          default=_field(reader, "llama.attention.head_count", path)),
        vocab_size=vocab, seq_len=min(_field(reader, "llama.context_length", path), MAX_CONTEXT),
        shared_classifier="output.weight" not in tensors,
        norm_eps=_shortest(_field(reader, "llama.attention.layer_norm_rms_epsilon", path, default=1e-5, kind=(float,))),
        rope_theta=_shortest(_field(reader, "llama.rope.freq_base", path, default=10000.0, kind=(float,))),
        bos_id=bos if bos >= 0 else None, eos_ids=(eos,) if eos >= 0 else ())
    config.validate(str(path))
    return config


def _shortest(value: float) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _as_float32(tensor, path: Path) -> np.ndarray:
    kind = tensor.tensor_type.name
    if kind not in FLOAT_TYPES:
        raise InputError(f"{path}: tensor {tensor.name!r} is quantised ({kind}); only F32, F16 and BF16 "
                         f"are supported: convert the model from its original weights")
    shape = tuple(int(d) for d in reversed(tensor.shape))
    data = tensor.data
    if kind == "F32":
        return data.reshape(shape)
    if kind == "F16":
        return data.reshape(shape).astype(np.float32)
    bits = data.view(np.uint16).reshape(shape)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_gguf(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """(config, dense weights in Model.from_dense's names, per-layer ones as lists)."""
    path = Path(path)
    reader = _open(path)
    tensors = {t.name: t for t in reader.tensors}
    quantised = [t for t in reader.tensors if t.tensor_type.name not in FLOAT_TYPES]
    if quantised:
        _as_float32(quantised[0], path)
    config = read_gguf_config(reader, path, tensors)
    from refimpl.formats.hf import expected_shapes

    shapes = expected_shapes(config)
    names = {pattern.format(l=l): (dense, l) for l in range(config.n_layers) for dense, pattern in LAYER_TENSORS.items()}
    names.update({name: (dense, None) for dense, name in GLOBAL_TENSORS.items()
                  if dense != "classifier" or not config.shared_classifier})
    unexpected = sorted(set(tensors) - set(names))
    if unexpected:
        raise InputError(f"{path}: unexpected tensor {unexpected[0]!r} for a {config.n_layers}-layer llama model")
    weights: dict = {dense: [None] * config.n_layers for dense in LAYER_TENSORS}
    for name, (dense, layer) in names.items():
        if name not in tensors:
            raise InputError(f"{path}: missing tensor {name!r}")
        value = _as_float32(tensors[name], path)
        if value.shape != shapes[dense]:
            raise InputError(f"{path}: tensor {name!r} has shape {list(value.shape)}, the metadata implies "
                             f"{list(shapes[dense])}")
        if not np.isfinite(value).all():
            raise InputError(f"{path}: tensor {name!r} holds non-finite values")
        if layer is None:
            weights[dense] = value
        else:
            weights[dense][layer] = value
    return config, weights


def read_gguf_vocab(path: str | os.PathLike) -> dict | None:
    """The tokenizer.ggml.* vocabulary of a GGUF ({"model", "tokens", "scores", "types", "merges"}), if any."""
    path = Path(path)
    reader = _open(path)
    if "tokenizer.ggml.tokens" not in reader.fields:
        return None
    vocab = {"model": _field(reader, "tokenizer.ggml.model", path, default="llama", kind=(str,))}
    for key, name in (("tokens", "tokenizer.ggml.tokens"), ("scores", "tokenizer.ggml.scores"),
                      ("types", "tokenizer.ggml.token_type"), ("merges", "tokenizer.ggml.merges")):
        field = reader.fields.get(name)
        vocab[key] = list(field.contents()) if field is not None else None
    return vocab


def write_gguf(path: str | os.PathLike, config: ModelConfig, weights: dict, dtype: str = "F32",
               vocab: dict | None = None, name: str = "model") -> None:
    """Write a llama GGUF with the given tensor type (F32, F16 or BF16) and, when given,
    a vocabulary ({"model": "llama", "tokens": [str], "scores": [float], "types": [int]});
    without one, tokenizer.ggml.model is "none" (llama.cpp then loads it without a vocabulary)."""
    import gguf

    if dtype not in FLOAT_TYPES:
        raise ValueError(f"dtype must be one of {FLOAT_TYPES}")
    if config.arch not in ("llama", "mistral") or config.qkv_bias or config.qk_norm or config.head_size:
        raise InputError(f"{path}: writing a {config.arch} model to GGUF is not supported (only Llama-shaped ones)")
    if config.rope_scaling:
        raise InputError(f"{path}: writing RoPE scaling {dict(config.rope_scaling)['rope_type']!r} to GGUF "
                         f"is not supported")
    c = config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(c.seq_len)
    writer.add_embedding_length(c.dim)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.hidden_dim)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_vocab_size(c.vocab_size)
    writer.add_file_type(FILE_TYPES[dtype])
    if vocab is None:   # llama.cpp refuses a file without tokenizer.ggml.model; "none" loads with no vocabulary
        writer.add_tokenizer_model("none")
    else:
        writer.add_tokenizer_model(vocab["model"])
        writer.add_token_list(vocab["tokens"])
        if vocab.get("scores") is not None:
            writer.add_token_scores(vocab["scores"])
        if vocab.get("types") is not None:
            writer.add_token_types(vocab["types"])
        if vocab.get("merges"):
            writer.add_token_merges(vocab["merges"])
    if c.bos_id is not None:
        writer.add_bos_token_id(c.bos_id)
    if c.eos_ids:
        writer.add_eos_token_id(c.eos_ids[0])
    tensors = {GLOBAL_TENSORS["token_embedding"]: weights["token_embedding"]}
    for l in range(c.n_layers):
        for dense, pattern in LAYER_TENSORS.items():
            tensors[pattern.format(l=l)] = weights[dense][l]
    tensors[GLOBAL_TENSORS["final_norm"]] = weights["final_norm"]
    if not c.shared_classifier:
        tensors[GLOBAL_TENSORS["classifier"]] = weights["classifier"]
    for tensor_name, value in tensors.items():
        value = np.ascontiguousarray(value, dtype=np.float32)
        if dtype == "F32" or value.ndim == 1:  # norms stay F32, as llama.cpp's converter keeps them
            writer.add_tensor(tensor_name, value)
        elif dtype == "F16":
            writer.add_tensor(tensor_name, value.astype(np.float16))
        else:
            bits = bfloat16_bits(value)
            writer.add_tensor(tensor_name, bits.view(np.uint8).reshape(value.shape[0], -1),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
