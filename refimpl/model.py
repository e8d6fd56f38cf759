"""The Llama-family transformer: configuration, weights, KV cache and forward pass.

Float32 throughout. The forward pass is split in three public steps so that
speculative methods can tap it: `embed` (token ids -> residual stream),
`run_layers` (layers [start, stop) on the residual stream, writing their keys
and values into the cache) and `head` (final norm + classifier -> logits).
`forward` chains the three and advances the cache.

Attention structure: the new rows of a pass always see every committed cache
slot; among themselves they see what `mask` allows (mask[r, j]: row r may
attend to new row j). `mask=None` means causal. A token tree passes its
ancestor mask (see refimpl.trees), each row's own entry included.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np

from refimpl import kernels, rope
from refimpl.errors import InputError


@dataclass(frozen=True)
class ModelConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool = True
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, object], ...] | None = None  # refimpl.rope: e.g. (("rope_type", "llama3"), ...)
    bos_id: int | None = 1            # prepended to text prompts (None: nothing)
    eos_ids: tuple[int, ...] = (2,)   # end-of-sequence ids
    stop_at_bos: bool = True          # llama2.c's run.c also stops at BOS; Hugging Face models do not
    head_size: int | None = None      # per-head width when it is not dim / n_heads (Qwen3)
    qkv_bias: bool = False            # q/k/v projections have biases (Qwen2)
    qk_norm: bool = False             # RMSNorm of each q and k head before RoPE (Qwen3)
    arch: str = "llama"               # the architecture's name (model_type), for reports

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.n_heads

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids that end generation (unless ignore_eos): EOS, and BOS where stop_at_bos."""
        bos = (self.bos_id,) if self.stop_at_bos and self.bos_id is not None else ()
        return tuple(self.eos_ids) + bos

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def validate(self, source: str) -> None:
        """Raise InputError naming `source` if the shape makes no sense."""
        fields = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
        for name in fields:
            value = getattr(self, name)
            if value <= 0 or value > 1 << 24:
                raise InputError(f"{source}: header value {name}={value} is out of range")
        if self.head_size is None and self.dim % self.n_heads:
            raise InputError(f"{source}: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise InputError(f"{source}: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2 or self.head_dim > 256:
            raise InputError(f"{source}: head_dim {self.head_dim} must be even and at most 256")

    def parameter_count(self) -> int:
        """Number of weights, the classifier counted once when it is tied."""
        d, h, L = self.dim, self.hidden_dim, self.n_layers
        per_layer = 2 * d + d * self.q_dim * 2 + 2 * d * self.kv_dim + 3 * d * h
        per_layer += (self.q_dim + 2 * self.kv_dim) * self.qkv_bias + 2 * self.head_dim * self.qk_norm
        classifier = 0 if self.shared_classifier else self.vocab_size * d
        return self.vocab_size * d + L * per_layer + d + classifier


@dataclass
class LayerWeights:
    """One block's weights; the linear ones packed by kernels.pack_linear, with
    wq/wk/wv stacked into one matrix (wqkv) and w1/w3 into another (w13), so
    each takes one pass over its rows. bqkv, q_norm, k_norm are empty when the
    architecture has none."""
    attn_norm: np.ndarray
    wqkv: np.ndarray
    bqkv: np.ndarray
    q_norm: np.ndarray
    k_norm: np.ndarray
    wo: np.ndarray
    ffn_norm: np.ndarray
    w13: np.ndarray
    w2: np.ndarray
    # GPT-2 only (empty otherwise): LayerNorm biases, the output projection's and the MLP's biases
    attn_norm_b: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    bo: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    ffn_norm_b: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    b13: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    b2: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


class KVCache:
    """Preallocated keys and values.

    `k` and `v` read as (n_layers, slots, kv_dim). Keys are stored transposed,
    `k_t` (n_layers, kv_dim, slots), so attention scores consecutive keys with
    vector loads; `k` is a view of it. `length` is the number of committed
    slots; slot i holds the token at absolute position i. A pass writes its rows
    after `length`; `commit`, `keep` and `truncate` decide what stays.
    """

    def __init__(self, config: ModelConfig, slots: int):
        self.k_t = np.zeros((config.n_layers, config.kv_dim, slots), dtype=np.float32)
        self.k = self.k_t.transpose(0, 2, 1)
        self.v = np.zeros((config.n_layers, slots, config.kv_dim), dtype=np.float32)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.v.shape[1]

    def commit(self, n: int) -> None:
        """Keep all n rows written by the last pass."""
        self.length += n

    def keep(self, rows) -> None:
        """Keep only the given rows (indices into the last pass, increasing) and
        move them into place right after the committed slots."""
        base = self.length
        for target, row in enumerate(rows):
            if row != target:
                self.k[:, base + target] = self.k[:, base + row]
                self.v[:, base + target] = self.v[:, base + row]
        self.length = base + len(rows)

    def truncate(self, length: int) -> None:
        """Forget every slot from `length` on."""
        self.length = min(self.length, length)


class Model:
    """A Llama-family model ready to run: config, packed weights, RoPE tables."""

    def __init__(self, config: ModelConfig, token_embedding: np.ndarray, layers: list[LayerWeights],
                 final_norm: np.ndarray, classifier: np.ndarray, name: str = "model",
                 position_embedding: np.ndarray | None = None, final_norm_b: np.ndarray | None = None):
        self.config = config
        self.name = name
        self.token_embedding = token_embedding
        self.position_embedding = position_embedding   # GPT-2's learned positions (seq_len, dim), else None
        self.final_norm_b = final_norm_b               # GPT-2's final LayerNorm bias, else None
        self.layers = layers
        self.final_norm = final_norm
        self.classifier = kernels.pack_linear(classifier)
        self.rope_cos, self.rope_sin = rope.rope_tables(config)
        self.eps = np.float32(config.norm_eps)

    @classmethod
    def from_dense(cls, config: ModelConfig, weights: dict[str, np.ndarray], name: str = "model") -> "Model":
        """Build from unpacked arrays: token_embedding (V, D); per-layer stacks attn_norm (L, D),
        wq (L, q_dim, D), wk/wv (L, kv_dim, D), wo (L, D, q_dim), ffn_norm (L, D), w1/w3 (L, H, D),
        w2 (L, D, H); final_norm (D,); classifier (V, D) or absent when tied. With
        config.qkv_bias also bq (L, q_dim), bk/bv (L, kv_dim); with config.qk_norm also
        q_norm/k_norm (L, head_dim). Per-layer stacks may be lists of arrays."""
        if config.arch == "gpt2":
            return cls._gpt2(config, weights, name)

        def stacked(l, *names):
            return kernels.pack_linear(np.concatenate([weights[name][l] for name in names]))

        def vector(l, *names):
            return np.ascontiguousarray(np.concatenate([weights[name][l] for name in names]), dtype=np.float32)

        layers = [
            LayerWeights(
                attn_norm=np.ascontiguousarray(weights["attn_norm"][l], dtype=np.float32),
                wqkv=stacked(l, "wq", "wk", "wv"),
                bqkv=vector(l, "bq", "bk", "bv") if config.qkv_bias else np.zeros(0, np.float32),
                q_norm=vector(l, "q_norm") if config.qk_norm else np.zeros(0, np.float32),
                k_norm=vector(l, "k_norm") if config.qk_norm else np.zeros(0, np.float32),
                wo=kernels.pack_linear(weights["wo"][l]),
                ffn_norm=np.ascontiguousarray(weights["ffn_norm"][l], dtype=np.float32),
                w13=stacked(l, "w1", "w3"),
                w2=kernels.pack_linear(weights["w2"][l]),
            )
            for l in range(config.n_layers)
        ]
        classifier = weights.get("classifier")
        if classifier is None:
            classifier = weights["token_embedding"]
        return cls(config, weights["token_embedding"], layers,
                   np.ascontiguousarray(weights["final_norm"], dtype=np.float32), classifier, name)

    @classmethod
    def _gpt2(cls, config: ModelConfig, weights: dict, name: str) -> "Model":
        """GPT-2 from dense arrays: the Llama names (w1 = c_fc, w2 = c_proj, no w3) plus biases
        bq/bk/bv, bo, b1, b2, LayerNorm biases attn_norm_b/ffn_norm_b/final_norm_b and
        position_embedding (seq_len, D); the classifier is the token embedding."""
        def f32(value):
            return np.ascontiguousarray(value, dtype=np.float32)

        layers = [
            LayerWeights(
                attn_norm=f32(weights["attn_norm"][l]), attn_norm_b=f32(weights["attn_norm_b"][l]),
                wqkv=kernels.pack_linear(np.concatenate([weights[n][l] for n in ("wq", "wk", "wv")])),
                bqkv=f32(np.concatenate([weights[n][l] for n in ("bq", "bk", "bv")])),
                q_norm=np.zeros(0, np.float32), k_norm=np.zeros(0, np.float32),
                wo=kernels.pack_linear(weights["wo"][l]), bo=f32(weights["bo"][l]),
                ffn_norm=f32(weights["ffn_norm"][l]), ffn_norm_b=f32(weights["ffn_norm_b"][l]),
                w13=kernels.pack_linear(weights["w1"][l]), b13=f32(weights["b1"][l]),
                w2=kernels.pack_linear(weights["w2"][l]), b2=f32(weights["b2"][l]))
            for l in range(config.n_layers)
        ]
        return cls(config, weights["token_embedding"], layers, f32(weights["final_norm"]),
                   weights["token_embedding"], name, position_embedding=f32(weights["position_embedding"]),
                   final_norm_b=f32(weights["final_norm_b"]))

    def new_cache(self, slots: int | None = None) -> KVCache:
        """An empty cache; by default as long as the model's sequence length."""
        return KVCache(self.config, slots or self.config.seq_len)

    def first_layers(self, k: int) -> "Model":
        """A cut draft: this model's first k layers with its embedding, final norm and
        classifier, sharing their arrays (no copy); it needs its own cache (`new_cache`)."""
        if not 1 <= k <= self.config.n_layers:
            raise InputError(f"--draft-layers {k}: must be between 1 and the target's {self.config.n_layers} layers")
        draft = copy.copy(self)
        draft.config = replace(self.config, n_layers=k)
        draft.layers = self.layers[:k]
        draft.name = f"{self.name}[:{k}]"
        draft.__dict__.pop("_identity", None)      # a cut model has an identity of its own
        return draft

    def weight_bytes(self) -> int:
        """Bytes of weights one forward pass streams (embedding row excluded)."""
        c = self.config
        per_layer = 2 * c.dim + 2 * c.dim * c.q_dim + 2 * c.dim * c.kv_dim + 3 * c.dim * c.hidden_dim
        return 4 * (c.n_layers * per_layer + c.dim + c.vocab_size * c.dim)

    # -- the three steps of a forward pass ---------------------------------------------------

    def embed(self, tokens: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Residual stream (n, dim) for the given token ids (plus the learned position
        embedding of their positions, for a model that has one: GPT-2)."""
        # a plain view, so a memory-mapped checkpoint's rows skip np.memmap's indexing overhead
        hidden = np.asarray(self.token_embedding)[tokens].astype(np.float32, copy=True)
        if self.position_embedding is not None:
            if positions is None:
                raise ValueError(f"{self.name}: embedding needs the positions (learned position embedding)")
            hidden += self.position_embedding[np.asarray(positions)]
        return hidden

    def run_layers(self, hidden: np.ndarray, positions: np.ndarray, cache: KVCache,
                   mask: np.ndarray | None = None, start: int = 0, stop: int | None = None,
                   taps: tuple[int, ...] = ()) -> dict[int, np.ndarray]:
        """Run layers [start, stop) on `hidden` in place; new rows go to cache slots
        cache.length.. (not committed). Returns {l: copy of the stream after layer l}
        for each l in taps (l counts from 1: taps=(3,) is the output of the 3rd layer)."""
        stop = self.config.n_layers if stop is None else stop
        n = hidden.shape[0]
        mask = _causal_mask_of(n) if mask is None else mask
        base = cache.length
        if base + n > cache.capacity:
            raise InputError(f"a pass of {n} tokens after {base} cached ones exceeds the cache of {cache.capacity}")
        tapped = {}
        for l in range(start, stop):
            w = self.layers[l]
            if self.config.arch == "gpt2":
                kernels.gpt2_layer(hidden, base, mask, self.eps, self.config.n_heads, w.attn_norm, w.attn_norm_b,
                                   w.wqkv, w.bqkv, w.wo, w.bo, w.ffn_norm, w.ffn_norm_b, w.w13, w.b13, w.w2, w.b2,
                                   cache.k_t[l], cache.v[l])
            else:
                kernels.transformer_layer(
                    hidden, positions, base, mask, self.rope_cos, self.rope_sin, self.eps,
                    self.config.n_heads, self.config.n_kv_heads, self.config.head_dim,
                    w.attn_norm, w.wqkv, w.bqkv, w.q_norm, w.k_norm, w.wo, w.ffn_norm, w.w13, w.w2,
                    cache.k_t[l], cache.v[l])
            if l + 1 in taps:
                tapped[l + 1] = hidden.copy()
        return tapped

    def head(self, hidden: np.ndarray) -> np.ndarray:
        """Logits (n, vocab) from the residual stream: final norm, then classifier."""
        normed = np.empty_like(hidden)
        if self.final_norm_b is not None:
            kernels.layernorm(hidden, self.final_norm, self.final_norm_b, self.eps, normed)
        else:
            kernels.rmsnorm(hidden, self.final_norm, self.eps, normed)
        logits = np.empty((hidden.shape[0], self.classifier.shape[0] * kernels.TILE), np.float32)
        kernels.matmul(normed, self.classifier, logits)
        return logits[:, :self.config.vocab_size]

    def forward(self, tokens, positions, cache: KVCache, mask: np.ndarray | None = None,
                commit: bool = True) -> np.ndarray:
        """Logits (n, vocab) for n new tokens at the given absolute positions.

        Their keys and values are written after the committed slots and, with
        commit=True, committed; with commit=False the caller decides (cache.keep).
        """
        return self.head(self.hidden_states(tokens, positions, cache, mask, commit))

    def hidden_states(self, tokens, positions, cache: KVCache, mask: np.ndarray | None = None,
                      commit: bool = True) -> np.ndarray:
        """`forward` up to the final norm: the residual stream (n, dim) after the last layer.
        `head(hidden[rows])` then gives the logits of just the rows a caller needs, bit for
        bit those of `forward`."""
        tokens = np.asarray(tokens, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        self.check_tokens(tokens, positions)
        hidden = self.embed(tokens, positions)
        self.run_layers(hidden, positions, cache, mask)
        if commit:
            cache.commit(len(tokens))
        return hidden

    def check_tokens(self, tokens: np.ndarray, positions: np.ndarray) -> None:
        """Raise InputError for ids outside the vocabulary or positions past seq_len."""
        if tokens.ndim != 1 or tokens.shape != positions.shape or len(tokens) == 0:
            raise InputError("tokens and positions must be equal-length, non-empty 1-D sequences")
        if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
            bad = int(tokens[(tokens < 0) | (tokens >= self.config.vocab_size)][0])
            raise InputError(f"token id {bad} is out of range for vocabulary size {self.config.vocab_size}")
        if positions.min() < 0 or positions.max() >= self.config.seq_len:
            raise InputError(f"position {int(positions.max())} is beyond the model's sequence length {self.config.seq_len}")


def causal_mask(n: int) -> np.ndarray:
    """mask[r, j] = j <= r: each new row sees itself and the rows before it."""
    return np.tri(n, dtype=np.bool_)


_CAUSAL_MASKS: dict[int, np.ndarray] = {}


def _causal_mask_of(n: int) -> np.ndarray:
    """causal_mask(n), built once per n up to 64 (run_layers' default; never handed out)."""
    if n > 64:
        return causal_mask(n)
    if n not in _CAUSAL_MASKS:
        _CAUSAL_MASKS[n] = causal_mask(n)
    return _CAUSAL_MASKS[n]
