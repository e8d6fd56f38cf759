"""GPT-2 checkpoints in Hugging Face directories (model_type "gpt2").

GPT-2 differs from the Llama block: LayerNorm with biases, learned absolute position
embeddings (no RoPE), a tanh-approximated GELU MLP without a gate, biases on every
projection, and "Conv1D" weights stored (in, out), the transpose of nn.Linear's.
The loader transposes them into the model's (out, in) and splits c_attn into q, k, v.
Names may carry a leading "transformer." (save_pretrained) or not (the original
release). The classifier is tied to the token embedding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from refimpl.errors import InputError
from refimpl.model import ModelConfig

MAX_CONTEXT = 4096
LAYER = {  # dense name -> GPT-2 name pattern
    "attn_norm": "h.{l}.ln_1.weight", "attn_norm_b": "h.{l}.ln_1.bias",
    "c_attn": "h.{l}.attn.c_attn.weight", "c_attn_b": "h.{l}.attn.c_attn.bias",
    "wo": "h.{l}.attn.c_proj.weight", "bo": "h.{l}.attn.c_proj.bias",
    "ffn_norm": "h.{l}.ln_2.weight", "ffn_norm_b": "h.{l}.ln_2.bias",
    "w1": "h.{l}.mlp.c_fc.weight", "b1": "h.{l}.mlp.c_fc.bias",
    "w2": "h.{l}.mlp.c_proj.weight", "b2": "h.{l}.mlp.c_proj.bias",
}
GLOBAL = {"token_embedding": "wte.weight", "position_embedding": "wpe.weight",
          "final_norm": "ln_f.weight", "final_norm_b": "ln_f.bias"}
CONV1D = ("c_attn", "wo", "w1", "w2")   # stored (in, out)
BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of old checkpoints, not weights


def read_gpt2_config(raw: dict, where: Path, special_ids) -> ModelConfig:
    def integer(key, default=None):
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"{where}: {key} {value!r} is not an integer")
        return value

    act = raw.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise InputError(f"{where}: activation_function {act!r} is not supported (gelu_new, gelu_pytorch_tanh)")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if raw.get(flag):
            raise InputError(f"{where}: {flag} is not supported")
    if raw.get("scale_attn_weights", True) is not True:
        raise InputError(f"{where}: scale_attn_weights false is not supported")
    dim, n_heads = integer("n_embd"), integer("n_head")
    inner = raw.get("n_inner")
    eps = raw.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise InputError(f"{where}: layer_norm_epsilon {eps!r} must be in (0, 1)")
    bos, eos = special_ids
    config = ModelConfig(
        dim=dim, hidden_dim=inner if isinstance(inner, int) and inner > 0 else 4 * dim, n_layers=integer("n_layer"),
        n_heads=n_heads, n_kv_heads=n_heads, vocab_size=integer("vocab_size"),
        seq_len=min(integer("n_positions", 1024), MAX_CONTEXT), shared_classifier=True, norm_eps=float(eps),
        bos_id=bos, eos_ids=eos, stop_at_bos=False, arch="gpt2")
    config.validate(str(where))
    return config


def gpt2_shapes(config: ModelConfig, n_positions: int) -> dict[str, tuple[int, ...]]:
    """Stored shapes (Conv1D ones as (in, out))."""
    D, H = config.dim, config.hidden_dim
    return {"attn_norm": (D,), "attn_norm_b": (D,), "c_attn": (D, 3 * D), "c_attn_b": (3 * D,),
            "wo": (D, D), "bo": (D,), "ffn_norm": (D,), "ffn_norm_b": (D,), "w1": (D, H), "b1": (H,),
            "w2": (H, D), "b2": (D,), "token_embedding": (config.vocab_size, D), "position_embedding": (n_positions, D),
            "final_norm": (D,), "final_norm_b": (D,)}


def read_gpt2_weights(folder: Path, config: ModelConfig, raw: dict, tensors: dict, to_float32) -> dict:
    """Dense weights (Model.from_dense's names for arch gpt2) from {name: (dtype, array, file)}."""
    stripped = {(n[len("transformer."):] if n.startswith("transformer.") else n): v for n, v in tensors.items()}
    names = {p.format(l=l): (d, l) for l in range(config.n_layers) for d, p in LAYER.items()}
    names.update({p: (d, None) for d, p in GLOBAL.items()})
    unexpected = sorted(n for n in stripped if n not in names and n != "lm_head.weight" and not n.endswith(BUFFERS))
    if unexpected:
        raise InputError(f"{stripped[unexpected[0]][2]}: unexpected tensor {unexpected[0]!r} for a "
                         f"{config.n_layers}-layer gpt2 model")
    n_positions = raw.get("n_positions", 1024)
    shapes = gpt2_shapes(config, n_positions)
    dense: dict = {d: [None] * config.n_layers for d in LAYER}
    for name, (d, layer) in names.items():
        if name not in stripped:
            raise InputError(f"{folder}: missing tensor {name!r} (model_type gpt2)")
        dtype, array, file = stripped[name]
        where = f"{file}: tensor {name!r}"
        if tuple(array.shape) != shapes[d]:
            raise InputError(f"{where} has shape {list(array.shape)}, config.json implies {list(shapes[d])}")
        value = to_float32(dtype, array, where)
        if not np.isfinite(value).all():
            raise InputError(f"{where} holds non-finite values")
        if d in CONV1D:
            value = value.T
        if d == "position_embedding":
            value = value[:config.seq_len]
        if layer is None:
            dense[d] = value
        else:
            dense[d][layer] = value
    D = config.dim
    dense["wq"] = [w[:D] for w in dense["c_attn"]]
    dense["wk"] = [w[D:2 * D] for w in dense["c_attn"]]
    dense["wv"] = [w[2 * D:] for w in dense["c_attn"]]
    dense["bq"] = [b[:D] for b in dense["c_attn_b"]]
    dense["bk"] = [b[D:2 * D] for b in dense["c_attn_b"]]
    dense["bv"] = [b[2 * D:] for b in dense["c_attn_b"]]
    del dense["c_attn"], dense["c_attn_b"]
    return dense
