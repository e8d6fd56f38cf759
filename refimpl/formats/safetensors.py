"""Reading and writing safetensors files, memory-mapped, with every header checked.

Layout: a little-endian uint64 N, an N-byte UTF-8 JSON header mapping each tensor
name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the
byte buffer after the header; "__metadata__" holds string pairs), then the buffer.

`read_safetensors` checks, before touching the data, that every tensor's byte
range lies inside the file, has exactly the size its dtype and shape imply, and
overlaps no other tensor; a violation is an InputError naming the file and the
tensor. Tensors come back as read-only numpy views of the mapped file in their
stored dtype (bf16 as uint16 bits); `to_float32` converts F32/F16/BF16.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from refimpl.errors import InputError

DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
FLOAT_DTYPES = ("F32", "F16", "BF16")
MAX_HEADER_BYTES = 100 << 20


def read_header(path: Path) -> tuple[dict, int]:
    """(header without __metadata__, byte offset of the data buffer), all entries validated."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(f"{path}: {size} bytes is too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise InputError(f"{path}: safetensors header length {n} exceeds the file of {size} bytes")
            raw = f.read(n)
    except FileNotFoundError:
        raise InputError(f"{path}: safetensors file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a safetensors file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    _check_entries(path, header, size - 8 - n)
    return header, 8 + n


def _check_entries(path: Path, header: dict, buffer_bytes: int) -> None:
    spans = []
    for name, entry in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise InputError(f"{where}: unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
            raise InputError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise InputError(f"{where}: data_offsets {offsets!r} is not a pair of non-negative integers")
        begin, end = offsets
        if begin > end or end > buffer_bytes:
            raise InputError(f"{where}: data_offsets [{begin}, {end}] lie outside the data buffer of "
                             f"{buffer_bytes} bytes")
        expected = int(np.prod(shape, dtype=object)) * np.dtype(DTYPES[dtype]).itemsize
        if end - begin != expected:
            raise InputError(f"{where}: {end - begin} bytes, but {dtype} of shape {shape} needs {expected}")
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise InputError(f"{path}: tensors {n0!r} [{b0}, {e0}] and {n1!r} [{b1}, {e1}] overlap")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_safetensors(path: str | os.PathLike) -> dict[str, tuple[str, np.ndarray]]:
    """{name: (dtype name, read-only array view of the mapped file)} for every tensor."""
    path = Path(path)
    header, start = read_header(path)
    size = path.stat().st_size
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros(0, np.uint8)
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        raw = data[start + begin:start + end]
        tensors[name] = (entry["dtype"], raw.view(DTYPES[entry["dtype"]]).reshape(entry["shape"]))
    return tensors


def to_float32(dtype: str, array: np.ndarray, where: str) -> np.ndarray:
    """A float32 array from F32 (the mapped view itself), F16 or BF16 (converted)."""
    if dtype == "F32":
        return array
    if dtype == "F16":
        return array.astype(np.float32)
    if dtype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    raise InputError(f"{where}: dtype {dtype} is not a float type (F32, F16 or BF16)")


def bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even (NaN kept quiet)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    nan = np.isnan(array)
    return np.where(nan, (bits >> 16) | np.uint32(0x40), rounded).astype(np.uint16)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], dtype: str = "F32",
                      metadata: dict[str, str] | None = None) -> None:
    """Write float tensors (in the given order) as F32, F16 or BF16, 8-byte aligned header."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {FLOAT_DTYPES}")
    blobs, header, at = [], {}, 0
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name, array in tensors.items():
        array = np.asarray(array, dtype=np.float32)
        if dtype == "F32":
            blob = array.astype("<f4").tobytes()
        elif dtype == "F16":
            blob = array.astype("<f2").tobytes()
        else:
            blob = bfloat16_bits(array).astype("<u2").tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [at, at + len(blob)]}
        blobs.append(blob)
        at += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for blob in blobs:
            f.write(blob)
