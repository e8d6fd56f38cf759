"""Checkpoint formats beyond llama2.c's `.bin` (which lives in refimpl.checkpoints).

- `hf`: Hugging Face directories (config.json + safetensors), see refimpl.formats.hf;
- `safetensors`: the tensor file format itself, read memory-mapped with every offset checked;
- `gguf`: llama.cpp's GGUF files (F32/F16/BF16 Llama models), see refimpl.formats.gguf.

`detect(path)` names the format of a path (None: not one of these);
`read_dense(path)` gives (ModelConfig, dense weights) in Model.from_dense's names.
"""
from __future__ import annotations

from pathlib import Path


def detect(path: Path) -> str | None:
    """'hf' for a directory holding config.json, 'gguf' for a file starting with GGUF, else None."""
    from refimpl.formats.gguf import is_gguf
    from refimpl.formats.hf import is_hf_dir

    if is_hf_dir(path):
        return "hf"
    if is_gguf(path):
        return "gguf"
    return None


def read_dense(path: Path, fmt: str):
    """(config, dense weights) of a checkpoint in format `fmt` (from `detect`)."""
    if fmt == "hf":
        from refimpl.formats.hf import read_hf

        return read_hf(path)
    if fmt == "gguf":
        from refimpl.formats.gguf import read_gguf

        return read_gguf(path)
    raise ValueError(f"unknown format {fmt!r}")
