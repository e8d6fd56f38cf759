"""An independent float64 numpy Llama forward pass (plain causal attention, no cache),
written from the architecture's definition, to check the numba model's numerics."""
import numpy as np


def reference_logits(config, weights, tokens):
    if config.arch == "gpt2":
        return gpt2_reference_logits(config, weights, tokens)
    c = config
    hd = c.head_dim
    x = weights["token_embedding"][tokens].astype(np.float64)
    n = len(tokens)
    pair = np.arange(0, hd, 2) / hd
    angle = np.arange(n)[:, None] * (1.0 / c.rope_theta ** pair)[None, :]
    cos, sin = np.cos(angle), np.sin(angle)

    def norm(v, w):
        return w * v / np.sqrt((v * v).mean(-1, keepdims=True) + c.norm_eps)

    def rope(v):  # v (n, heads, hd), interleaved pairs
        even, odd = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2] = even * cos[:, None] - odd * sin[:, None]
        out[..., 1::2] = even * sin[:, None] + odd * cos[:, None]
        return out

    def project(h, l, name):  # a q/k/v projection with its bias (Qwen2) when the model has one
        out = h @ weights["w" + name][l].T
        return out + weights["b" + name][l] if c.qkv_bias else out

    for l in range(c.n_layers):
        h = norm(x, weights["attn_norm"][l])
        q = project(h, l, "q").reshape(n, c.n_heads, hd)
        k = project(h, l, "k").reshape(n, c.n_kv_heads, hd)
        if c.qk_norm:  # Qwen3: RMSNorm of each head before RoPE
            q, k = norm(q, weights["q_norm"][l]), norm(k, weights["k_norm"][l])
        q, k = rope(q), rope(k)
        v = project(h, l, "v").reshape(n, c.n_kv_heads, hd)
        group = c.n_heads // c.n_kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        scores = np.where(np.tri(n, dtype=bool)[None], scores, -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", p, v).reshape(n, c.n_heads * hd)
        x = x + att @ weights["wo"][l].T
        h = norm(x, weights["ffn_norm"][l])
        gate, up = h @ weights["w1"][l].T, h @ weights["w3"][l].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ weights["w2"][l].T
    classifier = weights.get("classifier", weights["token_embedding"])
    return norm(x, weights["final_norm"]) @ classifier.T


def gpt2_reference_logits(config, weights, tokens):
    """GPT-2: LayerNorm with bias, learned positions, no RoPE, biased projections, tanh GELU."""
    c, n = config, len(tokens)
    hd = c.head_dim
    x = weights["token_embedding"][tokens].astype(np.float64) + weights["position_embedding"][:n]

    def norm(v, w, b):
        mean = v.mean(-1, keepdims=True)
        return w * (v - mean) / np.sqrt(((v - mean) ** 2).mean(-1, keepdims=True) + c.norm_eps) + b

    for l in range(c.n_layers):
        h = norm(x, weights["attn_norm"][l], weights["attn_norm_b"][l])
        q, k, v = ((h @ weights["w" + p][l].T + weights["b" + p][l]).reshape(n, c.n_heads, hd) for p in "qkv")
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        scores = np.where(np.tri(n, dtype=bool)[None], scores, -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", p, v).reshape(n, c.dim) @ weights["wo"][l].T + weights["bo"][l]
        h = norm(x, weights["ffn_norm"][l], weights["ffn_norm_b"][l])
        u = h @ weights["w1"][l].T + weights["b1"][l]
        gelu = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))
        x = x + gelu @ weights["w2"][l].T + weights["b2"][l]
    return norm(x, weights["final_norm"], weights["final_norm_b"]) @ weights["token_embedding"].T
