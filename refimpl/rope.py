"""RoPE frequencies and tables for a model configuration.

Pairs are interleaved, (2k, 2k+1) rotated by angle position * inv_freq[k] (the
llama2.c layout; Hugging Face's rotate-half checkpoints are permuted into it at
load time, see refimpl.formats.hf). Types: "default" (inv_freq[k] =
theta^(-2k/head_dim)) and "llama3" (Llama 3.1's smooth long-context scaling:
wavelengths longer than original_max_position_embeddings / low_freq_factor are
slowed by `factor`, those shorter than .../high_freq_factor kept, the band
between interpolated). Computed in float64, stored as float32.
"""
from __future__ import annotations

import math

import numpy as np

from refimpl.errors import InputError

ROPE_TYPES = ("default", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> np.ndarray:
    """inv_freq[k] for k < head_dim/2, float64."""
    pair = np.arange(0, head_dim, 2, dtype=np.float64)
    inv_freq = 1.0 / theta ** (pair / head_dim)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv_freq
    if kind != "llama3":
        raise InputError(f"RoPE type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    factor, low, high, old_context = (float(scaling[key]) for key in LLAMA3_KEYS)
    wavelength = 2 * math.pi / inv_freq
    slowed = np.where(wavelength > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelength - low) / (high - low)
    blended = (1 - smooth) * slowed / factor + smooth * slowed
    medium = (wavelength >= old_context / high) & (wavelength <= old_context / low)
    return np.where(medium, blended, slowed)


def rope_tables(config) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (seq_len, head_dim/2), float32, for a ModelConfig."""
    inv_freq = inverse_frequencies(config.head_dim, config.rope_theta, dict(config.rope_scaling or ()))
    angle = np.arange(config.seq_len, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
