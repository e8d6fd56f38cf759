"""Loading llama2.c checkpoints, and finding models by name.

Formats (both float32, little-endian):

* legacy (headerless): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
  vocab_size, seq_len; a negative vocab_size means an untied classifier), then
  token embedding, attention norms, wq, wk, wv, wo, ffn norms, w1, w2, w3, final
  norm, the RoPE cos and sin tables (seq_len * head_dim/2 each, unused here),
  and the classifier when untied.
* version 1 export: uint32 magic 0x616b3432 ("ak42"), int32 version 1, the 7
  int32 values, one byte `shared_classifier`, zero padding to 256 bytes; then
  attention norms, ffn norms, final norm, token embedding, wq, wk, wv, wo, w1,
  w2, w3, and the classifier when untied.

The file is memory-mapped; the embedding and norms are used in place, the
linear weights are packed once into the batch-invariant tile layout.
"""
from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from refimpl import formats
from refimpl.errors import InputError, regular_file_size
from refimpl.model import Model, ModelConfig

MAGIC = 0x616B3432
HEADER_V1_BYTES = 256
LEGACY_HEADER_BYTES = 28


def read_config(path: Path) -> tuple[ModelConfig, int, str]:
    """(config, byte offset of the first weight, format name) from a checkpoint header."""
    size = _checkpoint_size(path)
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_V1_BYTES)
    except OSError as exc:
        raise InputError(f"{path}: cannot read checkpoint ({exc.strerror})") from None
    if len(head) < LEGACY_HEADER_BYTES:
        raise InputError(f"{path}: file of {size} bytes is too short to be a llama2.c checkpoint")
    (magic,) = struct.unpack_from("<I", head, 0)
    if magic == MAGIC:
        if len(head) < HEADER_V1_BYTES:
            raise InputError(f"{path}: truncated version header")
        (version,) = struct.unpack_from("<i", head, 4)
        if version != 1:
            raise InputError(f"{path}: llama2.c export version {version} is not supported (only fp32 version 1)")
        values = struct.unpack_from("<7i", head, 8)
        shared = bool(head[36])
        config = _config(values, shared)
        fmt, offset = "llama2c-v1", HEADER_V1_BYTES
    else:
        values = struct.unpack_from("<7i", head, 0)
        shared = values[5] > 0
        config = _config(values[:5] + (abs(values[5]),) + values[6:], shared)
        fmt, offset = "llama2c-legacy", LEGACY_HEADER_BYTES
    config.validate(str(path))
    return config, offset, fmt


def _checkpoint_size(path: Path) -> int:
    """The size of a checkpoint file; InputError when it is missing or not a regular file
    (a FIFO would block the open, a device would never end)."""
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{path}: checkpoint file not found")
    return regular_file_size(path, "checkpoint")


def _config(values: tuple[int, ...], shared: bool) -> ModelConfig:
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = values
    return ModelConfig(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads,
                       n_kv_heads=n_kv_heads, vocab_size=vocab, seq_len=seq_len,
                       shared_classifier=shared)


def _tensor_shapes(config: ModelConfig, fmt: str) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the stored tensors, in file order."""
    c = config
    L, D, H, KV, V = c.n_layers, c.dim, c.hidden_dim, c.kv_dim, c.vocab_size
    linear = [("wq", (L, D, D)), ("wk", (L, KV, D)), ("wv", (L, KV, D)), ("wo", (L, D, D))]
    mlp = [("w1", (L, H, D)), ("w2", (L, D, H)), ("w3", (L, H, D))]
    if fmt == "llama2c-legacy":
        half = c.seq_len * c.head_dim // 2
        shapes = [("token_embedding", (V, D)), ("attn_norm", (L, D)), *linear, ("ffn_norm", (L, D)),
                  *mlp, ("final_norm", (D,)), ("rope_cos", (half,)), ("rope_sin", (half,))]
    else:
        shapes = [("attn_norm", (L, D)), ("ffn_norm", (L, D)), ("final_norm", (D,)),
                  ("token_embedding", (V, D)), *linear, *mlp]
    if not c.shared_classifier:
        shapes.append(("classifier", (V, D)))
    return shapes


def load_model(path: str | os.PathLike) -> Model:
    """Load and validate a checkpoint: llama2.c (legacy or version 1), or a format of
    refimpl.formats (a Hugging Face directory, a GGUF file).

    Nothing is allocated before a llama2.c file's size matches the shape in its header,
    and what the header alone decides (the RoPE tables of the version-1 format, which
    does not store them) may be no larger than the file."""
    path = Path(path)
    fmt = formats.detect(path)
    if fmt is not None:
        config, weights = formats.read_dense(path, fmt)
        return Model.from_dense(config, weights, name=path.stem if path.is_file() else path.name)
    config, weights = read_llama2c(path)
    return Model.from_dense(config, weights, name=path.stem)


def read_llama2c(path: Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, dense weights in Model.from_dense's names) of a llama2.c checkpoint, mapped."""
    config, offset, fmt = read_config(path)
    shapes = _tensor_shapes(config, fmt)
    expected = offset + 4 * sum(math.prod(s) for _, s in shapes)
    size = path.stat().st_size
    if size < expected:
        raise InputError(f"{path}: truncated checkpoint: {size} bytes, the header implies {expected}")
    if size > expected:
        raise InputError(f"{path}: oversized checkpoint: {size} bytes, the header implies {expected}")
    rope_bytes = 4 * config.seq_len * config.head_dim   # float32 cos and sin, seq_len x head_dim/2 each
    if rope_bytes > size:
        raise InputError(f"{path}: seq_len={config.seq_len} would need {rope_bytes} bytes of RoPE tables, "
                         f"more than the {size}-byte checkpoint itself; the header is implausible")
    data = np.memmap(path, dtype="<f4", mode="r", offset=offset, shape=((size - offset) // 4,))
    weights, at = {}, 0
    for name, shape in shapes:
        count = math.prod(shape)
        tensor = data[at:at + count].reshape(shape)
        at += count
        if not _all_finite(tensor):
            raise InputError(f"{path}: tensor {name} holds non-finite values")
        weights[name] = tensor
    return config, weights


def _all_finite(tensor: np.ndarray, chunk: int = 1 << 22) -> bool:
    """np.isfinite(tensor).all(), a chunk at a time (no temporary as large as the tensor)."""
    flat = tensor.reshape(-1)
    return all(np.isfinite(flat[i:i + chunk]).all() for i in range(0, flat.size, chunk))


def models_dir() -> Path:
    """The models directory: $MIRRORSTREAM_MODELS if set, else `models` under the user's
    data directory (~/.local/share/mirrorstream/models on Linux), where `mirrorstream pull` installs."""
    env = os.environ.get("MIRRORSTREAM_MODELS")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("mirrorstream", appauthor=False)) / "models"


def resolve_model(spec: str) -> Path:
    """A checkpoint path from a path or a bare name found in the models directory
    (NAME/NAME.bin as ../shared/checkpoints lays them out, NAME/NAME.gguf, or NAME/ holding
    a Hugging Face checkpoint)."""
    path = Path(spec)
    if path.exists() or os.sep in spec or spec.endswith((".bin", ".gguf")):
        return path
    root = models_dir()
    found = model_in(root / spec)
    if found is None:
        known = [name for name, _ in installed_models(root)]
        hint = "" if os.environ.get("MIRRORSTREAM_MODELS") else \
            " (MIRRORSTREAM_MODELS is not set; `mirrorstream pull NAME` installs a known model there)"
        raise InputError(f"--model {spec}: no {root / spec / (spec + '.bin')}; models in {root}: "
                         f"{', '.join(known) or 'none'}{hint}")
    return found


def model_in(folder: Path) -> Path | None:
    """The checkpoint a models-directory entry holds: the folder itself when it is a Hugging
    Face directory, else NAME/NAME.bin or NAME/NAME.gguf; None when it holds none."""
    if formats.detect(folder) == "hf":
        return folder
    for suffix in (".bin", ".gguf"):
        if (folder / f"{folder.name}{suffix}").is_file():
            return folder / f"{folder.name}{suffix}"
    return None


def installed_models(root: Path) -> list[tuple[str, Path]]:
    """(name, checkpoint path) of every model in a models directory, by name."""
    if not root.is_dir():
        return []
    entries = ((p.name, model_in(p)) for p in sorted(root.iterdir()) if p.is_dir())
    return [(name, path) for name, path in entries if path is not None]


def find_tokenizer(checkpoint: Path) -> Path | None:
    """The tokenizer beside a checkpoint file, or inside a checkpoint directory:
    tokenizer.json, tokenizer.model, tokenizer.bin or tok*.bin."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer.bin"):
        if (folder / name).is_file():
            return folder / name
    matches = sorted(folder.glob("tok*.bin"))
    return matches[0] if matches else None


def save_llama2c(path: str | os.PathLike, config: ModelConfig, weights: dict[str, np.ndarray],
                 version: int | None = 1) -> None:
    """Write dense weights (the names of Model.from_dense) as a llama2.c checkpoint:
    version=1 for the versioned fp32 export, None for the legacy headerless format."""
    if version not in (None, 1):
        raise ValueError("only the legacy format (None) and version 1 can be written")
    fmt = "llama2c-legacy" if version is None else "llama2c-v1"
    c = config
    values = (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len)
    tensors = dict(weights)
    if fmt == "llama2c-legacy":
        cos, sin = (t.reshape(-1) for t in _legacy_rope_tables(c))
        tensors.update(rope_cos=cos, rope_sin=sin)
    with open(path, "wb") as f:
        if fmt == "llama2c-legacy":
            vocab = c.vocab_size if c.shared_classifier else -c.vocab_size
            f.write(struct.pack("<7i", *values[:5], vocab, values[6]))
        else:
            header = struct.pack("<Ii7iB", MAGIC, 1, *values, int(c.shared_classifier))
            f.write(header + bytes(HEADER_V1_BYTES - len(header)))
        for name, shape in _tensor_shapes(c, fmt):
            f.write(np.ascontiguousarray(tensors[name], dtype="<f4").reshape(shape).tobytes())


def _legacy_rope_tables(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    from refimpl.kernels import rope_tables

    return rope_tables(config.seq_len, config.head_dim, config.rope_theta)
