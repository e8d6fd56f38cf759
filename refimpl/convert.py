"""`mirrorstream convert SRC DST --to hf|gguf|llama2c`: one checkpoint format to another.

The weights pass through unchanged as float32 (or rounded once to --dtype f16/bf16
for hf and gguf), so F32 round trips are bit for bit: llama2c (version 1) -> hf ->
llama2c and llama2c -> gguf -> llama2c give the same file, hf -> gguf -> hf the same
model.safetensors. (A legacy .bin's unused RoPE tables are not carried: they are
recomputed when writing the legacy format, `--legacy`.) The output appears under
its final name only when complete: it is written beside it under a temporary
name and renamed. The source's tokenizer goes along: copied into an hf directory,
embedded in a GGUF (SentencePiece / llama2c vocabularies), copied beside a .bin.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np

from refimpl.errors import InputError

TARGETS = ("hf", "gguf", "llama2c")
DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def read_any(path: Path):
    """(config, dense weights, format name) of any supported checkpoint."""
    from refimpl import formats
    from refimpl.checkpoints import read_llama2c

    fmt = formats.detect(path)
    if fmt is None:
        config, weights = read_llama2c(path)
        return config, weights, "llama2c"
    config, weights = formats.read_dense(path, fmt)
    return config, weights, fmt


def _check_llama2c(config, dst: Path) -> None:
    """llama2c files fix eps, theta and the special ids: refuse what they cannot hold."""
    if config.arch not in ("llama", "mistral") or config.qkv_bias or config.qk_norm or config.head_size:
        raise InputError(f"{dst}: the llama2c format holds Llama-shaped models only, not {config.arch}")
    fixed = {"norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None, "bos_id": 1}
    for name, value in fixed.items():
        got = getattr(config, name)
        if got != value and not (isinstance(value, float) and np.float32(got) == np.float32(value)):
            raise InputError(f"{dst}: the llama2c format cannot hold {name}={got!r} (it fixes {value!r})")
    if set(config.stop_ids) != {1, 2}:
        raise InputError(f"{dst}: the llama2c format stops at ids 1 and 2, this model at {list(config.stop_ids)}")


def _tokenizer_vocab(tokenizer_path: Path | None) -> dict | None:
    """A GGUF vocabulary (llama model) from a SentencePiece or llama2c tokenizer."""
    if tokenizer_path is None or tokenizer_path.suffix not in (".model", ".bin"):
        return None
    from refimpl.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    tokens, scores, types = [], [], []
    if tokenizer_path.suffix == ".model":
        sp = tokenizer.sp
        for i in range(tokenizer.vocab_size):
            tokens.append(sp.IdToPiece(i))
            scores.append(float(sp.GetScore(i)))
            types.append(2 if sp.IsUnknown(i) else 3 if sp.IsControl(i) else 6 if sp.IsByte(i) else 1)
    else:
        for i, piece in enumerate(tokenizer.pieces):
            text = piece.decode("utf-8", errors="replace").replace(" ", "\u2581")
            if i in (1, 2):   # llama2.c spells them "\n<s>\n", "\n</s>\n"; SentencePiece and llama.cpp "<s>", "</s>"
                text = text.strip("\n")
            tokens.append(text)
            scores.append(float(tokenizer.scores[i]))
            types.append(2 if i == 0 else 3 if i in (1, 2) else 6 if i in tokenizer.byte_ids.values() else 1)
    return {"model": "llama", "tokens": tokens, "scores": scores, "types": types}


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, dtype: str = "f32",
            legacy: bool = False) -> Path:
    """Convert checkpoint `src` into format `to` at `dst`; returns dst."""
    from refimpl.checkpoints import find_tokenizer, save_llama2c
    from refimpl.formats.gguf import write_gguf
    from refimpl.formats.hf import write_hf

    src, dst = Path(src), Path(dst)
    if to not in TARGETS:
        raise InputError(f"--to {to}: must be one of {', '.join(TARGETS)}")
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype}: must be one of {', '.join(DTYPES)}")
    if to == "llama2c" and dtype != "f32":
        raise InputError(f"--dtype {dtype}: the llama2c format holds float32 only")
    if dst.exists():
        raise InputError(f"{dst}: already exists (remove it first)")
    if not src.exists():
        raise InputError(f"{src}: no such checkpoint")
    config, weights, _ = read_any(src)
    tokenizer = find_tokenizer(src)
    temporary = dst.with_name(f".{dst.name}.partial")
    _remove(temporary)
    try:
        if to == "hf":
            write_hf(temporary, config, weights, DTYPES[dtype])
            if tokenizer is not None:
                shutil.copyfile(tokenizer, temporary / tokenizer.name)
        elif to == "gguf":
            write_gguf(temporary, config, weights, DTYPES[dtype], vocab=_tokenizer_vocab(tokenizer),
                       name=src.stem if src.is_file() else src.name)
        else:
            _check_llama2c(config, dst)
            save_llama2c(temporary, config, {k: np.asarray(v, np.float32) for k, v in weights.items()
                                             if k not in ("rope_cos", "rope_sin")},
                         version=None if legacy else 1)
        os.replace(temporary, dst)
    finally:
        _remove(temporary)
    if to == "llama2c" and tokenizer is not None and not (dst.parent / tokenizer.name).exists() \
            and tokenizer.suffix in (".model", ".bin"):
        shutil.copyfile(tokenizer, dst.parent / tokenizer.name)
    return dst


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert a checkpoint between llama2c, Hugging Face and GGUF",
                              description="Convert SRC (a llama2c .bin, a Hugging Face directory or a GGUF file) "
                                          "into DST in another format. F32 weights pass through bit for bit.")
    p.add_argument("src", metavar="SRC", help="source checkpoint")
    p.add_argument("dst", metavar="DST", help="destination (a directory for hf, a file otherwise); must not exist")
    p.add_argument("--to", required=True, choices=TARGETS, help="destination format")
    p.add_argument("--dtype", default="f32", choices=sorted(DTYPES), help="tensor type for hf/gguf (default f32)")
    p.add_argument("--legacy", action="store_true", help="llama2c: write the legacy headerless format")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    dst = convert(args.src, args.dst, args.to, args.dtype, args.legacy)
    print(f"wrote {dst} ({args.to}, {args.dtype})")
    return 0
