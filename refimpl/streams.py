"""Speculative streams (Bhendawade et al., arXiv:2402.11131v1): multi-stream attention in
the target's last N_s layers, with the paper's v1 semantics.

A `Streams` object holds the speculative parameters for one base model:

- `embeddings` P_j (gamma, dim): stream j of a node starts at layer N - N_s as the
  node's main-stream hidden state plus P_j (f_eta = identity, as in all the paper's runs);
- `n_layers` N_s: the streams exist in the last N_s layers only;
- the pruning adapter o(x) = x + (x @ prune_down) @ prune_up (rank 8) on the main
  stream at layer N - N_s; final norm and classifier then give the early-exit
  logits whose softmax scores each parent -> child edge of a tree.

Stream rows reuse every base weight. They attend to the main-stream keys/values of
the committed prefix and of their node's ancestors (node included), and to streams
1..j of their own node; the main stream never attends to them (refimpl.trees.stream_mask),
so the target's own rows are the bits of plain decoding. Stream rows write their
keys/values after the tree's rows in the cache's uncommitted region, where `KVCache.keep`
drops them. Their RoPE positions: `refimpl.trees.stream_positions`.

Two schedules compute the streams of the node a step accepts, with the same bits:
- fused (the paper's): every tree node's streams ride along in the verification pass;
- deferred: the verification pass runs the tree alone; once the verdict is known, the
  accepted node's gamma streams run through the last N_s layers over the cache, which
  then holds exactly the keys/values the fused pass showed them (prefix + path).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refimpl import kernels
from refimpl.errors import InputError
from refimpl.trees import TokenTree, stream_mask, stream_positions

PRUNE_RANK = 8
FORMAT = "mirrorstream.streams"


@dataclass
class Streams:
    """Speculative-stream parameters for one base model (see the module docstring)."""
    embeddings: np.ndarray                 # (gamma, dim) float32
    n_layers: int                          # N_s
    prune_down: np.ndarray                 # (dim, PRUNE_RANK)
    prune_up: np.ndarray                   # (PRUNE_RANK, dim)
    identity: dict = field(default_factory=dict)   # the base model's, see model_identity
    vocabulary: np.ndarray | None = None           # draft shortlist of token ids (None: all)
    init_down: np.ndarray | None = None            # f_eta: (gamma, dim, eta), applied to stream rows only
    init_up: np.ndarray | None = None              # (gamma, eta, dim)
    packed: dict = field(default_factory=dict, repr=False)

    @property
    def gamma(self) -> int:
        return self.embeddings.shape[0]

    def check_for(self, model, source: str = "streams") -> None:
        """Raise InputError naming `source` unless these streams fit `model`."""
        c = model.config
        if self.vocabulary is not None and (self.vocabulary.ndim != 1 or len(self.vocabulary) == 0
                                            or self.vocabulary.min() < 0 or self.vocabulary.max() >= c.vocab_size):
            raise InputError(f"{source}: its draft vocabulary does not fit the model's {c.vocab_size} tokens")
        if self.embeddings.ndim != 2 or self.embeddings.shape[1] != c.dim:
            raise InputError(f"{source}: stream embeddings of shape {self.embeddings.shape} do not fit "
                             f"the model's hidden size {c.dim}")
        if not 1 <= self.n_layers <= c.n_layers - 1:
            raise InputError(f"{source}: {self.n_layers} stream layers; the model has {c.n_layers} layers "
                             f"(N_s must be between 1 and {c.n_layers - 1})")
        if self.prune_down.shape != (c.dim, PRUNE_RANK) or self.prune_up.shape != (PRUNE_RANK, c.dim):
            raise InputError(f"{source}: pruning adapter shapes {self.prune_down.shape}, {self.prune_up.shape} "
                             f"do not fit the model's hidden size {c.dim}")
        if self.identity:
            mine = model_identity(model)
            for key in ("dim", "n_layers", "vocab_size", "n_heads", "n_kv_heads", "hidden_dim"):
                if self.identity.get(key) != mine[key]:
                    raise InputError(f"{source}: trained for a model with {key}={self.identity.get(key)}, "
                                     f"this one has {mine[key]}")
            if self.identity.get("checksum") != mine["checksum"]:
                raise InputError(f"{source}: trained for another model (weights checksum "
                                 f"{str(self.identity.get('checksum'))[:12]}…, this model's {mine['checksum'][:12]}…)")

    def logits(self, model, hidden: np.ndarray) -> np.ndarray:
        """Draft logits (n, vocab) of stream rows: final norm and classifier, restricted to the
        shortlist when there is one (-inf elsewhere; proposals only, so still lossless)."""
        return shortlist_logits(model, self.vocabulary, self.packed, hidden)

    def top_tokens(self, model, hidden: np.ndarray) -> list[int]:
        """Each row's most likely token under `logits` (ties: the lower id, the shortlist being
        sorted), without building full-vocabulary rows."""
        if self.vocabulary is None:
            return np.argmax(model.head(hidden), axis=1).tolist()
        normed = np.empty_like(hidden)
        kernels.rmsnorm(hidden, model.final_norm, model.eps, normed)
        columns = shortlist_columns(model, self.vocabulary, self.packed, normed)
        return self.vocabulary[np.argmax(columns, axis=1)].tolist()

    def split(self, model) -> int:
        """The layer where the streams start, N - N_s."""
        return model.config.n_layers - self.n_layers

    def packed_adapter(self):
        """The pruning adapter packed for the batch-invariant matmul (cached)."""
        if "down" not in self.packed:
            self.packed["down"] = kernels.pack_linear(np.ascontiguousarray(self.prune_down.T))
            self.packed["up"] = kernels.pack_linear(np.ascontiguousarray(self.prune_up.T))
        return self.packed["down"], self.packed["up"]


def random_streams(model, gamma: int, n_layers: int, seed: int = 0, scale: float = 1.0) -> Streams:
    """Random stream parameters (tests, and the starting point of training)."""
    rng = np.random.default_rng(seed)
    dim = model.config.dim
    return Streams(embeddings=(scale * rng.standard_normal((gamma, dim))).astype(np.float32), n_layers=n_layers,
                   prune_down=(rng.standard_normal((dim, PRUNE_RANK)) / np.sqrt(dim)).astype(np.float32),
                   prune_up=(scale * rng.standard_normal((PRUNE_RANK, dim)) / np.sqrt(PRUNE_RANK)).astype(np.float32))


def shortlist_logits(model, vocabulary, packed: dict, hidden: np.ndarray) -> np.ndarray:
    """Final norm + classifier on `hidden` (n, dim), computing only the rows of the classifier
    in `vocabulary` (packed once into packed["classifier"]); the rest of the vocabulary gets -inf.
    A frequency-ranked draft vocabulary as in FR-Spec (Zhao et al., 2025): the classifier is
    most of a small model's cost, and draft logits need not be exact."""
    if vocabulary is None:
        return model.head(hidden)
    normed = np.empty_like(hidden)
    kernels.rmsnorm(hidden, model.final_norm, model.eps, normed)
    return classifier_rows(model, vocabulary, packed, normed)


def classifier_rows(model, vocabulary, packed: dict, x: np.ndarray) -> np.ndarray:
    """x (n, dim) times the classifier, only its rows in `vocabulary` (all when None); -inf elsewhere."""
    if vocabulary is None:
        out = np.empty((len(x), model.classifier.shape[0] * kernels.TILE), np.float32)
        kernels.matmul(np.ascontiguousarray(x, dtype=np.float32), model.classifier, out)
        return out[:, :model.config.vocab_size]
    out = np.full((len(x), model.config.vocab_size), -np.inf, np.float32)
    out[:, vocabulary] = shortlist_columns(model, vocabulary, packed, x)
    return out


def shortlist_columns(model, vocabulary, packed: dict, x: np.ndarray) -> np.ndarray:
    """x (n, dim) times the classifier's rows in `vocabulary`: (n, len(vocabulary))."""
    if "classifier" not in packed:
        packed["classifier"] = kernels.pack_linear(dense_classifier(model)[vocabulary])
    small = np.empty((len(x), kernels.padded_width(len(vocabulary))), np.float32)
    kernels.matmul(np.ascontiguousarray(x, dtype=np.float32), packed["classifier"], small)
    return small[:, :len(vocabulary)]


# -- the base model's identity ------------------------------------------------------------------

def unpack_linear(packed: np.ndarray, n_out: int) -> np.ndarray:
    """The (out, in) weight that kernels.pack_linear packed."""
    groups, strips, n_in, width = packed.shape
    return packed.transpose(0, 1, 3, 2).reshape(groups * strips * width, n_in)[:n_out]


def dense_layer(model, l: int) -> dict[str, np.ndarray]:
    """Layer l's weights unpacked: wq (D, D), wk, wv (KV, D), wo (D, D), w1, w3 (H, D), w2 (D, H), norms."""
    c, w = model.config, model.layers[l]
    qkv = unpack_linear(w.wqkv, c.dim + 2 * c.kv_dim)
    w13 = unpack_linear(w.w13, 2 * c.hidden_dim)
    return {"attn_norm": w.attn_norm, "wq": qkv[:c.dim], "wk": qkv[c.dim:c.dim + c.kv_dim],
            "wv": qkv[c.dim + c.kv_dim:], "wo": unpack_linear(w.wo, c.dim), "ffn_norm": w.ffn_norm,
            "w1": w13[:c.hidden_dim], "w3": w13[c.hidden_dim:], "w2": unpack_linear(w.w2, c.dim)}


def dense_classifier(model) -> np.ndarray:
    return unpack_linear(model.classifier, model.config.vocab_size)


def model_identity(model) -> dict:
    """Shape and a SHA-256 over every weight (dense, in a fixed order), cached on the model."""
    cached = getattr(model, "_identity", None)
    if cached is not None:
        return cached
    c = model.config
    digest = hashlib.sha256()
    arrays = [model.token_embedding, model.final_norm, dense_classifier(model)]
    for l in range(c.n_layers):
        arrays += list(dense_layer(model, l).values())
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    identity = {"dim": c.dim, "n_layers": c.n_layers, "vocab_size": c.vocab_size, "n_heads": c.n_heads,
                "n_kv_heads": c.n_kv_heads, "hidden_dim": c.hidden_dim, "checksum": digest.hexdigest()}
    model._identity = identity
    return identity


# -- passes ------------------------------------------------------------------------------------

def stream_inputs(hidden: np.ndarray, streams: Streams) -> np.ndarray:
    """(len(hidden) * gamma, dim): each row's gamma streams at layer N - N_s, node-major:
    S_j = M + P_j + f_eta_j(M), Eq. 3 with the optional low-rank map f_eta_j(M) = M @ down_j @ up_j
    (batch-invariant kernels: a node's streams have the same bits in any pass)."""
    rows = hidden[:, None, :] + streams.embeddings[None, :, :]
    if streams.init_down is not None:
        if "init" not in streams.packed:
            streams.packed["init"] = [(kernels.pack_linear(np.ascontiguousarray(d.T)),
                                       kernels.pack_linear(np.ascontiguousarray(u.T)))
                                      for d, u in zip(streams.init_down, streams.init_up)]
        x = np.ascontiguousarray(hidden, dtype=np.float32)
        eta = streams.init_down.shape[2]
        for j, (down, up) in enumerate(streams.packed["init"]):
            low = np.empty((len(x), kernels.padded_width(eta)), np.float32)
            kernels.matmul(x, down, low)
            delta = np.empty((len(x), kernels.padded_width(x.shape[1])), np.float32)
            kernels.matmul(np.ascontiguousarray(low[:, :eta]), up, delta)
            rows[:, j] += delta[:, :x.shape[1]]
    return rows.reshape(-1, hidden.shape[1])


def run_with_streams(model, streams: Streams, hidden: np.ndarray, positions: np.ndarray, mask: np.ndarray,
                     cache, nodes) -> tuple[np.ndarray, np.ndarray]:
    """Layers N - N_s .. N on `hidden` (the pass's main rows, at layer N - N_s, in place) with
    gamma stream rows for each row in `nodes` appended. Returns (main rows, stream rows
    (len(nodes), gamma, dim)) after the last layer."""
    split, gamma = streams.split(model), streams.gamma
    rows = np.concatenate([hidden, stream_inputs(hidden[list(nodes)], streams)])
    all_positions = np.concatenate([positions, stream_positions(positions, nodes, gamma)])
    model.run_layers(rows, all_positions, cache, stream_mask(mask, nodes, gamma), start=split)
    n = len(hidden)
    hidden[:] = rows[:n]
    return hidden, rows[n:].reshape(len(nodes), gamma, -1)


def deferred_streams(model, streams: Streams, split_hidden: np.ndarray, position: int, cache) -> np.ndarray:
    """The gamma streams (gamma, dim) of the last committed node, after the last layer, given
    its main-stream state at layer N - N_s; the cache must hold its keys/values (committed)."""
    gamma = streams.gamma
    rows = stream_inputs(split_hidden[None, :], streams)
    mask = stream_mask(np.ones((1, 1), dtype=np.bool_), [0], gamma)[1:, 1:]   # streams <= j of the node
    model.run_layers(rows, np.full(gamma, position, dtype=np.int64), cache, mask, start=streams.split(model))
    return rows


def early_exit_probabilities(model, streams: Streams, split_hidden: np.ndarray) -> np.ndarray:
    """Softmax (float64) of the early-exit logits head(o(x)) for each row of split_hidden."""
    down, up = streams.packed_adapter()
    low = np.empty((len(split_hidden), kernels.padded_width(PRUNE_RANK)), np.float32)
    kernels.matmul(np.ascontiguousarray(split_hidden), down, low)
    back = np.empty((len(split_hidden), kernels.padded_width(split_hidden.shape[1])), np.float32)
    kernels.matmul(np.ascontiguousarray(low[:, :PRUNE_RANK]), up, back)
    x = split_hidden + back[:, :split_hidden.shape[1]]
    if streams.vocabulary is None:
        return softmax64(model.head(x))
    normed = np.empty_like(x)
    kernels.rmsnorm(x, model.final_norm, model.eps, normed)
    probs = np.zeros((len(x), model.config.vocab_size))       # 0 outside the shortlist
    probs[:, streams.vocabulary] = softmax64(shortlist_columns(model, streams.vocabulary, streams.packed, normed))
    return probs


def softmax64(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def surviving_nodes(tree: TokenTree, transition: dict[int, np.ndarray], threshold: float) -> list[int]:
    """Nodes kept by pruning: a child survives when its parent's early-exit probability of
    its token is at least `threshold` and its parent survives (subtrees go with their root)."""
    alive = [True] * len(tree)
    for node in range(1, len(tree)):
        parent = tree.parents[node]
        alive[node] = alive[parent] and transition[parent][tree.tokens[node]] >= threshold
    return [node for node in range(len(tree)) if alive[node]]


def subtree(tree: TokenTree, nodes: list[int]) -> TokenTree:
    """The tree restricted to `nodes` (closed under parents, increasing), renumbered."""
    index = {node: i for i, node in enumerate(nodes)}
    out = TokenTree.root(tree.tokens[0])
    for node in nodes[1:]:
        out.add(index[tree.parents[node]], tree.tokens[node])
    return out


def compact_rows(cache, rows: list[int], layers: int) -> None:
    """Move the uncommitted rows `rows` (increasing) of the first `layers` layers into place."""
    base = cache.length
    for target, row in enumerate(rows):
        if row != target:
            cache.k[:layers, base + target] = cache.k[:layers, base + row]
            cache.v[:layers, base + target] = cache.v[:layers, base + row]


# -- files ------------------------------------------------------------------------------------

def save_streams(path, streams: Streams, config: dict | None = None) -> None:
    """Write the parameters as safetensors; metadata: format, N_s, gamma, the base model's
    identity and the training configuration."""
    from safetensors.numpy import save_file

    metadata = {"format": FORMAT, "n_layers": str(streams.n_layers), "gamma": str(streams.gamma),
                "identity": json.dumps(streams.identity, sort_keys=True),
                "config": json.dumps(config or {}, sort_keys=True)}
    tensors = {"embeddings": np.ascontiguousarray(streams.embeddings, dtype=np.float32),
               "prune_down": np.ascontiguousarray(streams.prune_down, dtype=np.float32),
               "prune_up": np.ascontiguousarray(streams.prune_up, dtype=np.float32)}
    if streams.vocabulary is not None:
        tensors["vocabulary"] = np.ascontiguousarray(streams.vocabulary, dtype=np.int32)
    if streams.init_down is not None:
        tensors["init_down"] = np.ascontiguousarray(streams.init_down, dtype=np.float32)
        tensors["init_up"] = np.ascontiguousarray(streams.init_up, dtype=np.float32)
    save_file(tensors, str(path), metadata=metadata)


def read_safetensors(path, kind: str, fmt: str, names: tuple[str, ...]) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file of the given format, or InputError naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        raise InputError(f"{path}: no such {kind} file") from None
    except Exception as error:   # safetensors raises its own types for damaged files
        raise InputError(f"{path}: not a readable safetensors {kind} file ({str(error).splitlines()[0][:120]})") \
            from None
    if metadata.get("format") != fmt:
        raise InputError(f"{path}: missing or wrong metadata: format {metadata.get('format')!r}, expected {fmt!r}")
    missing = [name for name in names if name not in tensors]
    if missing:
        raise InputError(f"{path}: missing tensor {missing[0]!r}")
    for name in names:
        if tensors[name].dtype not in (np.float32, np.float16) or not np.isfinite(tensors[name]).all():
            raise InputError(f"{path}: tensor {name!r} must hold finite float32 or float16 values")
        tensors[name] = tensors[name].astype(np.float32)
    try:
        metadata["identity"] = json.loads(metadata.get("identity", ""))
    except json.JSONDecodeError:
        raise InputError(f"{path}: missing or unreadable base-model identity in its metadata") from None
    if not isinstance(metadata["identity"], dict) or "checksum" not in metadata["identity"]:
        raise InputError(f"{path}: missing base-model identity in its metadata")
    return tensors, metadata


DATA_DIR = Path(__file__).resolve().parent / "data"


def shipped(model, kind: str) -> Path:
    """The shipped parameter file of `kind` ("streams" or "heads") for a model, by its name."""
    path = DATA_DIR / f"{model.name}.{kind}.safetensors"
    if not path.is_file():
        option = "--streams" if kind == "streams" else "--heads"
        raise InputError(f"no shipped {kind} for model {model.name!r}: train them (mirrorstream train-{kind}) "
                         f"and give {option} FILE")
    return path


def vocabulary_of(tensors: dict, path) -> np.ndarray | None:
    """The optional draft shortlist tensor, as sorted unique int64 ids."""
    if "vocabulary" not in tensors:
        return None
    ids = tensors["vocabulary"]
    if ids.dtype != np.int32 or ids.ndim != 1 or len(np.unique(ids)) != len(ids):
        raise InputError(f"{path}: tensor 'vocabulary' must hold distinct int32 token ids")
    return np.sort(ids.astype(np.int64))


def load_streams(path, model) -> Streams:
    """Read a streams file and check it was trained for `model`."""
    tensors, metadata = read_safetensors(path, "streams", FORMAT, ("embeddings", "prune_down", "prune_up"))
    try:
        n_layers = int(metadata.get("n_layers", ""))
    except ValueError:
        raise InputError(f"{path}: missing or unreadable n_layers in its metadata") from None
    streams = Streams(tensors["embeddings"], n_layers, tensors["prune_down"], tensors["prune_up"],
                      metadata["identity"], vocabulary_of(tensors, path))
    if "init_down" in tensors or "init_up" in tensors:
        down, up = tensors.get("init_down"), tensors.get("init_up")
        gamma, dim = streams.embeddings.shape
        if (down is None or up is None or down.ndim != 3 or down.shape[:2] != (gamma, dim)
                or up.shape != (gamma, down.shape[2], dim) or down.dtype != np.float32 or up.dtype != np.float32):
            raise InputError(f"{path}: tensors 'init_down'/'init_up' must be float32 of shapes "
                             f"({gamma}, {dim}, eta) and ({gamma}, eta, {dim})")
        streams.init_down, streams.init_up = down, up
    streams.check_for(model, str(path))
    return streams
