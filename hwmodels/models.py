"""Model shapes built from config.json-style dicts, and the shipped shape catalog.

A shape is what the latency model needs: layer count, widths, heads, vocabulary,
MLP kind and whether the classifier is tied to the embedding. Parameter counts
and bytes are computed from it (and checked in the tests against the totals the
model authors publish). Any Hugging Face `config.json` can be added with
`ModelShape.from_config(name, config)`; llama2.c headers (`dim`, `hidden_dim`,
`n_layers`, ...) are accepted too.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

from .dtypes import activation_bytes_per_element, weight_bytes_per_element
from .errors import InputError
from .paths import DATA_DIR
from .names import build_index, resolve

# Families whose MLP is gated (SwiGLU: gate, up, down) and whose norms are RMSNorm.
_GATED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only transformer."""

    name: str
    family: str
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 0
    gated_mlp: bool = True
    linear_bias: bool = False      # OPT: every projection has a bias
    qkv_bias: bool = False         # Qwen2: q/k/v projections have a bias
    qk_norm: bool = False          # Qwen3: RMSNorm on q and k heads
    layer_norm_bias: bool = False  # LayerNorm (OPT) has a bias; RMSNorm has none
    learned_positions: int = 0     # OPT: a learned position table of this many rows
    published_params: float | None = None
    source: str = ""
    aliases: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        for attr in ("n_layers", "hidden_size", "intermediate_size", "n_heads", "n_kv_heads",
                     "head_dim", "vocab_size"):
            if int(getattr(self, attr)) <= 0:
                raise InputError(f"model {self.name}: {attr} must be positive, got {getattr(self, attr)}")
        if self.n_heads % self.n_kv_heads:
            raise InputError(f"model {self.name}: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    # ----- construction -------------------------------------------------
    @classmethod
    def from_config(cls, name: str, config: dict, **extra) -> "ModelShape":
        """Build a shape from a Hugging Face config.json dict (or a llama2.c header dict)."""
        cfg = dict(config)
        if "dim" in cfg and "hidden_size" not in cfg:  # llama2.c: dim, hidden_dim (= FFN width)
            cfg = {
                "model_type": "llama", "hidden_size": cfg["dim"], "intermediate_size": cfg["hidden_dim"],
                "num_hidden_layers": cfg["n_layers"], "num_attention_heads": cfg["n_heads"],
                "num_key_value_heads": cfg.get("n_kv_heads", cfg["n_heads"]),
                "vocab_size": abs(cfg["vocab_size"]), "max_position_embeddings": cfg.get("seq_len", 0),
                "tie_word_embeddings": cfg.get("tie_word_embeddings", cfg["vocab_size"] > 0),
            }
        family = str(cfg.get("model_type", "llama")).lower()

        def get(*keys, default=None):
            for key in keys:
                if key in cfg:
                    return cfg[key]
            if default is None:
                raise InputError(f"model {name}: config lacks {' / '.join(keys)}")
            return default

        hidden = int(get("hidden_size", "d_model", "n_embd"))
        n_heads = int(get("num_attention_heads", "n_head"))
        is_opt = family == "opt"
        kwargs = dict(
            name=name,
            family=family,
            n_layers=int(get("num_hidden_layers", "n_layer")),
            hidden_size=hidden,
            intermediate_size=int(get("intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)),
            n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            head_dim=int(cfg.get("head_dim") or hidden // n_heads),
            vocab_size=int(get("vocab_size")),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", is_opt)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 0)),
            gated_mlp=family in _GATED_FAMILIES,
            linear_bias=is_opt or bool(cfg.get("enable_bias", False)),
            qkv_bias=family == "qwen2" or bool(cfg.get("attention_bias", False)),
            qk_norm=family == "qwen3",
            layer_norm_bias=is_opt,
            # OPT's learned position table has 2 extra rows (its padding offset).
            learned_positions=int(cfg.get("max_position_embeddings", 0)) + 2 if is_opt else 0,
        )
        kwargs.update(extra)
        return cls(**kwargs)

    # ----- widths -------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def block_matmuls(self) -> list[tuple[int, int]]:
        """(in, out) of each weight matrix of one block, in the order they run."""
        h, i = self.hidden_size, self.intermediate_size
        mlp = [(h, 2 * i), (i, h)] if self.gated_mlp else [(h, i), (i, h)]
        return [(h, self.q_dim + 2 * self.kv_dim), (self.q_dim, h), *mlp]

    # ----- parameter counts -----------------------------------------------
    def _norm_params(self) -> int:
        return self.hidden_size * (2 if self.layer_norm_bias else 1)

    def block_params(self) -> int:
        """Parameters of one transformer block (projections, biases, norms)."""
        params = sum(a * b for a, b in self.block_matmuls())
        if self.linear_bias:
            params += sum(b for _, b in self.block_matmuls())
        elif self.qkv_bias:
            params += self.q_dim + 2 * self.kv_dim
        if self.qk_norm:
            params += 2 * self.head_dim
        return params + 2 * self._norm_params()

    def embedding_params(self) -> int:
        return (self.vocab_size + self.learned_positions) * self.hidden_size

    def classifier_params(self) -> int:
        """The output projection (counted in the total only when it is not tied)."""
        return self.vocab_size * self.hidden_size

    def param_count(self) -> int:
        """Total parameters, counting a tied classifier once."""
        total = self.embedding_params() + self.n_layers * self.block_params() + self._norm_params()
        return total + (0 if self.tie_word_embeddings else self.classifier_params())

    def weight_bytes(self, dtype: str = "fp16") -> float:
        return self.param_count() * weight_bytes_per_element(dtype)

    def kv_bytes_per_token(self, dtype: str = "fp16") -> float:
        """KV-cache bytes one token occupies over all layers."""
        return self.n_layers * 2 * self.kv_dim * activation_bytes_per_element(dtype)

    def check_layers(self, layers, option: str = "layers") -> tuple[int, int]:
        """(a, b) half-open with 0 <= a < b <= n_layers, or InputError."""
        if layers is None:
            return 0, self.n_layers
        try:
            a, b = (int(x) for x in layers)
        except (TypeError, ValueError):
            raise InputError(f"{option}: expected a layer range a:b, got {layers!r}") from None
        if not 0 <= a < b <= self.n_layers:
            raise InputError(f"{option}: layer range {a}:{b} is outside model {self.name} "
                             f"(layers 0:{self.n_layers}, need 0 <= a < b <= {self.n_layers})")
        return a, b

    def summary(self) -> dict:
        """Plain-dict view for tables and JSON."""
        return {
            "name": self.name, "family": self.family, "layers": self.n_layers, "hidden": self.hidden_size,
            "intermediate": self.intermediate_size, "heads": self.n_heads, "kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim, "vocab": self.vocab_size, "tied": self.tie_word_embeddings,
            "params": self.param_count(), "published_params": self.published_params, "source": self.source,
        }


# ----- catalog ------------------------------------------------------------
@functools.cache
def _catalog() -> dict[str, ModelShape]:
    data = json.loads((DATA_DIR / "models.json").read_text())
    shapes = {}
    for key, entry in data["models"].items():
        published = entry.get("published_params")
        shapes[key] = ModelShape.from_config(
            key, entry["config"],
            published_params=published["value"] if published else None,
            source="; ".join(filter(None, [entry.get("config_source"),
                                          published and f"total: {published['source']}"])),
            aliases=tuple(entry.get("aliases", ())),
        )
    return shapes


@functools.cache
def _index() -> dict[str, str]:
    return build_index({key: list(shape.aliases) for key, shape in _catalog().items()})


def known_models() -> list[str]:
    """Catalog keys of the shipped model shapes."""
    return sorted(_catalog())


def get_model(name_or_shape) -> ModelShape:
    """A shape by name or alias (case-insensitive); a ModelShape passes through."""
    if isinstance(name_or_shape, ModelShape):
        return name_or_shape
    return _catalog()[resolve(name_or_shape, _index(), "model", "model")]
