"""Numeric formats: bytes per element of weights, KV cache and activations."""
from __future__ import annotations

from .errors import InputError

#: Bytes per element of each weight format the catalogs know.
DTYPE_BYTES = {
    "fp32": 4.0,
    "tf32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}


def check_dtype(dtype: str, option: str = "dtype") -> str:
    """Normalised dtype name, or InputError naming the option and the known names."""
    name = str(dtype).lower()
    if name not in DTYPE_BYTES:
        raise InputError(f"{option}: unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})")
    return name


def weight_bytes_per_element(dtype: str) -> float:
    return DTYPE_BYTES[check_dtype(dtype)]


def activation_bytes_per_element(dtype: str) -> float:
    """Activations and the KV cache stay in 16-bit floats unless the weights are fp32.

    Weight-only quantisation (int8/int4/fp8) is the common serving setup, so the
    KV cache and activations of a quantised model are counted at 2 bytes.
    """
    return 4.0 if check_dtype(dtype) in ("fp32", "tf32") else 2.0
