"""Random tiny models and hypothesis strategies, for this project's tests and for
anyone checking a decoder against the reference. hypothesis is imported lazily,
so the runtime does not need it."""
from __future__ import annotations

import numpy as np

from refimpl.model import Model, ModelConfig


def random_weights(config: ModelConfig, seed: int = 0, logit_scale: float = 4.0) -> dict[str, np.ndarray]:
    """Dense random weights (names of Model.from_dense); logit_scale sharpens the output distribution."""
    rng = np.random.default_rng(seed)
    c = config
    L, D, H, KV, V = c.n_layers, c.dim, c.hidden_dim, c.kv_dim, c.vocab_size

    def normal(*shape, fan_in):
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    weights = {
        "token_embedding": normal(V, D, fan_in=1),
        "attn_norm": (1 + 0.1 * rng.standard_normal((L, D))).astype(np.float32),
        "wq": normal(L, D, D, fan_in=D), "wk": normal(L, KV, D, fan_in=D),
        "wv": normal(L, KV, D, fan_in=D), "wo": normal(L, D, D, fan_in=D),
        "ffn_norm": (1 + 0.1 * rng.standard_normal((L, D))).astype(np.float32),
        "w1": normal(L, H, D, fan_in=D), "w2": normal(L, D, H, fan_in=H), "w3": normal(L, H, D, fan_in=D),
        "final_norm": np.ones(D, dtype=np.float32),
    }
    if not c.shared_classifier:
        weights["classifier"] = normal(V, D, fan_in=D) * np.float32(logit_scale)
    return weights


def random_model(config: ModelConfig, seed: int = 0) -> Model:
    return Model.from_dense(config, random_weights(config, seed), name=f"random-{seed}")


def tiny_configs():
    """hypothesis strategy of small, varied model shapes (GQA, odd sizes, tied or not)."""
    from hypothesis import strategies as st

    @st.composite
    def configs(draw):
        n_kv_heads = draw(st.integers(1, 3))
        n_heads = n_kv_heads * draw(st.integers(1, 3))
        head_dim = 2 * draw(st.integers(1, 6))
        return ModelConfig(dim=n_heads * head_dim, hidden_dim=draw(st.integers(3, 70)),
                           n_layers=draw(st.integers(1, 3)), n_heads=n_heads, n_kv_heads=n_kv_heads,
                           vocab_size=draw(st.integers(5, 90)), seq_len=draw(st.integers(24, 80)),
                           shared_classifier=draw(st.booleans()))

    return configs()
