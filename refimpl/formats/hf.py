"""Hugging Face checkpoint directories: config.json + model.safetensors (or a sharded
model.safetensors.index.json): Llama, Mistral, Qwen2 (q/k/v biases), Qwen3 (per-head
q/k RMSNorm, head_dim independent of hidden_size), and GPT-2 (refimpl.formats.gpt2).

Tensors in F32, F16 or BF16 are read memory-mapped and used as float32. HF stores
q_proj/k_proj rows in the "rotate-half" RoPE layout (dimension k of a head
rotates with k + head_dim/2); the model uses llama2.c's interleaved pairs
(2k, 2k+1). Both layouts compute the same attention scores, because q and k of a
head are permuted alike and a dot product does not care about the order of its
terms, so the loader permutes the rows of wq/wk (and Qwen's q/k biases and per-head q/k
norm weights) once (`rotate_half_to_interleaved`) and no RoPE kernel changes. config.json is read in both spellings: transformers 4.x
(`rope_theta`, `rope_scaling`) and 5.x (`rope_parameters`). BOS/EOS come from
generation_config.json, else config.json.

The context is capped at MAX_CONTEXT tokens (the KV cache is preallocated), and at
Mistral's sliding window, so that full attention is what the checkpoint computes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from refimpl.errors import InputError
from refimpl.formats.safetensors import read_safetensors, to_float32, write_safetensors
from refimpl.model import ModelConfig
from refimpl.rope import LLAMA3_KEYS, ROPE_TYPES

MAX_CONTEXT = 4096
# model_type -> what it adds to the Llama block
ARCHITECTURES = {
    "llama": {},
    "mistral": {"sliding_window": True},
    "qwen2": {"qkv_bias": True},
    "qwen3": {"qk_norm": True},
}
MODEL_TYPES = tuple(ARCHITECTURES) + ("gpt2",)  # gpt2: refimpl.formats.gpt2
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# our dense name -> HF name pattern ({l}: layer index)
LAYER_TENSORS = {
    "attn_norm": "model.layers.{l}.input_layernorm.weight",
    "wq": "model.layers.{l}.self_attn.q_proj.weight",
    "wk": "model.layers.{l}.self_attn.k_proj.weight",
    "wv": "model.layers.{l}.self_attn.v_proj.weight",
    "wo": "model.layers.{l}.self_attn.o_proj.weight",
    "ffn_norm": "model.layers.{l}.post_attention_layernorm.weight",
    "w1": "model.layers.{l}.mlp.gate_proj.weight",
    "w2": "model.layers.{l}.mlp.down_proj.weight",
    "w3": "model.layers.{l}.mlp.up_proj.weight",
}
BIAS_TENSORS = {"bq": "model.layers.{l}.self_attn.q_proj.bias", "bk": "model.layers.{l}.self_attn.k_proj.bias",
                "bv": "model.layers.{l}.self_attn.v_proj.bias"}
QK_NORM_TENSORS = {"q_norm": "model.layers.{l}.self_attn.q_norm.weight",
                   "k_norm": "model.layers.{l}.self_attn.k_norm.weight"}
GLOBAL_TENSORS = {"token_embedding": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
                  "classifier": "lm_head.weight"}


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object")
    return value


def rope_settings(raw: dict, where: str) -> tuple[float, tuple | None]:
    """(rope_theta, rope_scaling as sorted pairs or None) from either spelling of config.json."""
    params = raw.get("rope_parameters")
    if params is None:
        params = dict(raw.get("rope_scaling") or {})
        params.setdefault("rope_theta", raw.get("rope_theta", 10000.0))
    if not isinstance(params, dict):
        raise InputError(f"{where}: rope_parameters is not an object")
    params = dict(params)
    kind = params.pop("rope_type", params.pop("type", "default"))
    theta = params.pop("rope_theta", raw.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)) or theta <= 1:
        raise InputError(f"{where}: rope_theta {theta!r} must be a number above 1")
    if kind not in ROPE_TYPES:
        raise InputError(f"{where}: RoPE type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if kind == "default":
        return float(theta), None
    missing = [k for k in LLAMA3_KEYS if not isinstance(params.get(k), (int, float))]
    if missing:
        raise InputError(f"{where}: llama3 RoPE scaling lacks {', '.join(missing)}")
    return float(theta), (("rope_type", "llama3"),) + tuple((k, float(params[k])) for k in LLAMA3_KEYS)


def _ids(value) -> tuple[int, ...] | None:
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        return None
    return tuple(values)


def read_hf_config(folder: Path) -> ModelConfig:
    """The ModelConfig of an HF directory, every field checked."""
    where = folder / "config.json"
    raw = _read_json(where)
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise InputError(f"{where}: model_type {model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})")

    def integer(key, default=None):
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"{where}: {key} {value!r} is not an integer")
        return value

    if model_type == "gpt2":
        from refimpl.formats.gpt2 import read_gpt2_config

        return read_gpt2_config(raw, where, _special_ids(folder, raw))
    arch = ARCHITECTURES[model_type]
    dim, n_heads = integer("hidden_size"), integer("num_attention_heads")
    head_dim = raw.get("head_dim")
    if head_dim is not None and (not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0):
        raise InputError(f"{where}: head_dim {head_dim!r} is not a positive integer")
    if head_dim is None and model_type == "qwen3":
        head_dim = 128  # transformers' Qwen3Config default
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise InputError(f"{where}: hidden_act {act!r} is not supported (only silu)")
    for flag in ("attention_bias", "mlp_bias"):
        if raw.get(flag):
            raise InputError(f"{where}: {flag} is not supported for {model_type}")
    seq_len = min(integer("max_position_embeddings"), MAX_CONTEXT)
    window = raw.get("sliding_window")
    windowed = arch.get("sliding_window") or raw.get("use_sliding_window")
    if windowed and isinstance(window, int) and not isinstance(window, bool) and window > 0:
        seq_len = min(seq_len, window)  # within the window, sliding attention is full attention
    theta, scaling = rope_settings(raw, str(where))
    eps = raw.get("rms_norm_eps", 1e-6)
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise InputError(f"{where}: rms_norm_eps {eps!r} must be in (0, 1)")
    bos, eos = _special_ids(folder, raw)
    config = ModelConfig(
        dim=dim, hidden_dim=integer("intermediate_size"), n_layers=integer("num_hidden_layers"),
        n_heads=n_heads, n_kv_heads=integer("num_key_value_heads", n_heads), vocab_size=integer("vocab_size"),
        seq_len=seq_len, shared_classifier=bool(raw.get("tie_word_embeddings", False)), norm_eps=float(eps),
        rope_theta=theta, rope_scaling=scaling, bos_id=bos, eos_ids=eos, stop_at_bos=False,
        head_size=head_dim if head_dim is not None and head_dim * n_heads != dim else None,
        qkv_bias=bool(arch.get("qkv_bias")), qk_norm=bool(arch.get("qk_norm")), arch=model_type)
    config.validate(str(where))
    return config


def _special_ids(folder: Path, raw: dict) -> tuple[int | None, tuple[int, ...]]:
    """BOS and EOS ids: generation_config.json first (what generation uses), then config.json."""
    generation = folder / "generation_config.json"
    sources = ([_read_json(generation)] if generation.is_file() else []) + [raw]
    bos = next((_ids(s["bos_token_id"])[0] for s in sources if _ids(s.get("bos_token_id"))), None)
    eos = next((_ids(s["eos_token_id"]) for s in sources if _ids(s.get("eos_token_id"))), ())
    return bos, eos


def _open_tensors(folder: Path) -> dict[str, tuple[str, np.ndarray, Path]]:
    """{HF name: (dtype, mapped array, file)} from model.safetensors or the sharded index."""
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InputError(f"{index}: weight_map is not an object of file names")
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard:
                raise InputError(f"{index}: shard name {shard!r} is not a file in the directory")
            for name, (dtype, array) in read_safetensors(folder / shard).items():
                if weight_map.get(name) != shard:
                    raise InputError(f"{folder / shard}: tensor {name!r} is not listed for this shard in {index}")
                tensors[name] = (dtype, array, folder / shard)
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise InputError(f"{index}: tensor {absent[0]!r} is listed but absent from {weight_map[absent[0]]}")
        return tensors
    single = folder / SINGLE_NAME
    if not single.is_file():
        raise InputError(f"{folder}: neither {SINGLE_NAME} nor {INDEX_NAME} found")
    return {name: (dtype, array, single) for name, (dtype, array) in read_safetensors(single).items()}


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Dense name -> per-layer (or global) shape."""
    c = config
    return {"attn_norm": (c.dim,), "wq": (c.q_dim, c.dim), "wk": (c.kv_dim, c.dim), "wv": (c.kv_dim, c.dim),
            "wo": (c.dim, c.q_dim), "ffn_norm": (c.dim,), "w1": (c.hidden_dim, c.dim),
            "w2": (c.dim, c.hidden_dim), "w3": (c.hidden_dim, c.dim),
            "token_embedding": (c.vocab_size, c.dim), "final_norm": (c.dim,), "classifier": (c.vocab_size, c.dim),
            "bq": (c.q_dim,), "bk": (c.kv_dim,), "bv": (c.kv_dim,), "q_norm": (c.head_dim,), "k_norm": (c.head_dim,)}


def layer_tensors(config: ModelConfig) -> dict[str, str]:
    """Dense name -> HF name pattern of every per-layer tensor of this architecture."""
    tensors = dict(LAYER_TENSORS)
    if config.qkv_bias:
        tensors.update(BIAS_TENSORS)
    if config.qk_norm:
        tensors.update(QK_NORM_TENSORS)
    return tensors


def hf_names(config: ModelConfig) -> dict[str, tuple[str, int | None]]:
    """HF tensor name -> (dense name, layer or None) for every tensor the checkpoint must hold."""
    names = {pattern.format(l=l): (dense, l) for l in range(config.n_layers)
             for dense, pattern in layer_tensors(config).items()}
    for dense, name in GLOBAL_TENSORS.items():
        if dense != "classifier" or not config.shared_classifier:
            names[name] = (dense, None)
    return names


def rotate_half_to_interleaved(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of an HF q/k projection (head h, half i, index k at h*hd + i*hd/2 + k)
    reordered to interleaved pairs (h*hd + 2k + i). A view when possible."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, 2, half, -1).transpose(0, 2, 1, 3).reshape(weight.shape)


def interleaved_to_rotate_half(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of rotate_half_to_interleaved (what HF's Llama conversion script does)."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, -1).transpose(0, 2, 1, 3).reshape(weight.shape)


def read_hf(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """(config, dense weights in Model.from_dense's names; per-layer ones as lists) of an HF directory."""
    folder = Path(path)
    config = read_hf_config(folder)
    tensors = _open_tensors(folder)
    if config.arch == "gpt2":
        from refimpl.formats.gpt2 import read_gpt2_weights

        return config, read_gpt2_weights(folder, config, _read_json(folder / "config.json"), tensors, to_float32)
    names = hf_names(config)
    ignored = {"lm_head.weight"} if config.shared_classifier else set()
    unexpected = sorted(n for n in tensors if n not in names and n not in ignored
                        and not n.endswith("rotary_emb.inv_freq"))
    if unexpected:
        raise InputError(f"{tensors[unexpected[0]][2]}: unexpected tensor {unexpected[0]!r} for {config.n_layers}-layer "
                         f"{'tied' if config.shared_classifier else 'untied'} model of {folder / 'config.json'}")
    shapes = expected_shapes(config)
    weights: dict = {dense: [None] * config.n_layers for dense in layer_tensors(config)}
    for name, (dense, layer) in names.items():
        if name not in tensors:
            raise InputError(f"{folder}: missing tensor {name!r} (model_type {config.arch})")
        dtype, array, file = tensors[name]
        where = f"{file}: tensor {name!r}"
        if tuple(array.shape) != shapes[dense]:
            raise InputError(f"{where} has shape {list(array.shape)}, config.json implies {list(shapes[dense])}")
        value = to_float32(dtype, array, where)
        if not np.isfinite(value).all():
            raise InputError(f"{where} holds non-finite values")
        value = _to_interleaved(dense, value, config)
        if layer is None:
            weights[dense] = value
        else:
            weights[dense][layer] = value
    return config, weights


def _heads_of(dense: str, config: ModelConfig) -> int | None:
    """How many RoPE heads a tensor's first axis spans (None: not rotated)."""
    return {"wq": config.n_heads, "bq": config.n_heads, "wk": config.n_kv_heads, "bk": config.n_kv_heads,
            "q_norm": 1, "k_norm": 1}.get(dense)


def _to_interleaved(dense: str, value: np.ndarray, config: ModelConfig) -> np.ndarray:
    """q/k weights, biases and per-head norm weights permuted from rotate-half to interleaved pairs."""
    heads = _heads_of(dense, config)
    if heads is None:
        return value
    return rotate_half_to_interleaved(value.reshape(value.shape[0], -1), heads).reshape(value.shape)


def hf_config_dict(config: ModelConfig) -> dict:
    """config.json (transformers 4.x spelling, which 5.x also reads)."""
    c = config
    names = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
             "qwen3": "Qwen3ForCausalLM"}
    raw = {"architectures": [names[c.arch]], "model_type": c.arch, "hidden_size": c.dim,
           "intermediate_size": c.hidden_dim, "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
           "num_key_value_heads": c.n_kv_heads, "vocab_size": c.vocab_size, "max_position_embeddings": c.seq_len,
           "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "tie_word_embeddings": c.shared_classifier,
           "hidden_act": "silu", "head_dim": c.head_dim, "torch_dtype": "float32",
           "bos_token_id": c.bos_id, "eos_token_id": list(c.eos_ids) if len(c.eos_ids) != 1 else c.eos_ids[0]}
    if c.rope_scaling:
        raw["rope_scaling"] = dict(c.rope_scaling)
    return raw


def write_hf(path: str | os.PathLike, config: ModelConfig, weights: dict, dtype: str = "F32") -> None:
    """Write an HF Llama directory: config.json, generation_config.json, model.safetensors."""
    if config.arch == "gpt2":
        raise InputError(f"{path}: writing GPT-2 checkpoints is not supported")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for l in range(config.n_layers):
        for dense, pattern in layer_tensors(config).items():
            value = np.asarray(weights[dense][l], dtype=np.float32)
            heads = _heads_of(dense, config)
            if heads is not None:
                value = interleaved_to_rotate_half(value.reshape(value.shape[0], -1), heads).reshape(value.shape)
            tensors[pattern.format(l=l)] = value
    for dense, name in GLOBAL_TENSORS.items():
        if dense != "classifier" or not config.shared_classifier:
            tensors[name] = weights[dense]
    raw = hf_config_dict(config)
    (folder / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    stops = list(config.stop_ids)  # a llama2.c model also stops at BOS: generation_config says so
    generation = {"bos_token_id": raw["bos_token_id"], "eos_token_id": stops[0] if len(stops) == 1 else stops}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    write_safetensors(folder / SINGLE_NAME, tensors, dtype, metadata={"format": "pt"})
