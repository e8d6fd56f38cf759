"""Training speculative parameters on the CPU with numpy (BLAS; no batch invariance needed).

The base model stays frozen, and under v1 semantics the main stream never sees the
streams, so every main-stream quantity is a constant of the data: the hidden state at
layer N - N_s, the main keys (after RoPE) and values of the last N_s layers, the final
normed hidden state. `base_constants` computes them once per sequence with the model's
own kernels. Only the speculative parameters get gradients, by a hand-written backward
pass (checked against finite differences in float64, tests/refimpl/test_train.py):

- stream embeddings P (gamma, dim): forward through the last N_s layers as in
  refimpl.streams (stream j at position t sees main keys/values at positions <= t and
  streams <= j of t; RoPE position t), final norm, classifier; the future n-gram loss
  alpha_j * CE(stream j at t, token t + 1 + j), alpha_j = 0.1, alpha_0 = 0 (lossless:
  the main stream is not trained);
- the pruning adapter (down, up): early-exit logits head(x + x@down@up) at layer N - N_s,
  next-token cross entropy;
- Medusa-1 heads (refimpl.decoding.medusa): head k is classifier(h + silu(W_k h + b_k))
  on the final normed hidden state h, trained on token t + 1 + k.

Optimiser: Adam with global-norm gradient clipping and a linear learning-rate decay.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from refimpl.streams import PRUNE_RANK, Streams, dense_classifier, dense_layer, model_identity

ALPHA = 0.1


# -- constants of the frozen base ---------------------------------------------------------------

@dataclass
class Constants:
    """Frozen base-model quantities of a batch of B sequences of length T (zero-padded)."""
    tokens: np.ndarray        # (B, T) int64
    valid: np.ndarray         # (B, T) bool
    split_hidden: np.ndarray  # (B, T, D): main stream at layer N - N_s
    keys: list                # per MSA layer (B, T, KV): main keys after RoPE
    values: list              # per MSA layer (B, T, KV)
    final: np.ndarray         # (B, T, D): final-normed main hidden state (Medusa's input)


def base_constants(model, sequences: list[list[int]], n_stream_layers: int) -> Constants:
    """Run each sequence through the model (its own kernels) and collect the constants."""
    c = model.config
    split = c.n_layers - n_stream_layers
    B, T = len(sequences), max(len(s) for s in sequences)
    tokens = np.zeros((B, T), np.int64)
    valid = np.zeros((B, T), bool)
    split_hidden = np.zeros((B, T, c.dim), np.float32)
    final = np.zeros((B, T, c.dim), np.float32)
    keys = [np.zeros((B, T, c.kv_dim), np.float32) for _ in range(n_stream_layers)]
    values = [np.zeros((B, T, c.kv_dim), np.float32) for _ in range(n_stream_layers)]
    for b, seq in enumerate(sequences):
        n = len(seq)
        tokens[b, :n], valid[b, :n] = seq, True
        cache = model.new_cache(n)
        hidden = model.embed(np.asarray(seq, np.int64))
        taps = model.run_layers(hidden, np.arange(n), cache, taps=(split,))
        split_hidden[b, :n] = taps[split]
        final[b, :n] = rmsnorm(hidden.astype(np.float64), model.final_norm.astype(np.float64), c.norm_eps)[0]
        for i, l in enumerate(range(split, c.n_layers)):
            keys[i][b, :n] = cache.k[l, :n]
            values[i][b, :n] = cache.v[l, :n]
    return Constants(tokens, valid, split_hidden, keys, values, final)


class Frozen:
    """Dense weights of the last N_s layers, final norm, classifier and RoPE tables, in `dtype`."""

    def __init__(self, model, n_stream_layers: int, dtype=np.float32):
        c = model.config
        self.config, self.dtype, self.eps = c, dtype, c.norm_eps
        split = c.n_layers - n_stream_layers
        self.layers = [{k: v.astype(dtype) for k, v in dense_layer(model, l).items()}
                       for l in range(split, c.n_layers)]
        self.final_norm = model.final_norm.astype(dtype)
        self.classifier = dense_classifier(model).astype(dtype)
        self.cos, self.sin = model.rope_cos.astype(dtype), model.rope_sin.astype(dtype)
        self.label_index = np.arange(c.vocab_size)

    def restrict(self, vocabulary) -> None:
        """Softmax over `vocabulary` only (the tokens of the training text: the classifier,
        most of the cost, shrinks tenfold; the labels are all in it)."""
        vocabulary = np.unique(np.asarray(vocabulary, np.int64))
        self.classifier = np.ascontiguousarray(self.classifier[vocabulary])
        self.label_index = np.zeros(self.config.vocab_size, np.int64)
        self.label_index[vocabulary] = np.arange(len(vocabulary))


# -- building blocks, forward and backward ------------------------------------------------------

def rmsnorm(x, w, eps):
    r = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    return x * r * w, r


def rmsnorm_back(dy, x, w, r):
    g = dy * w
    return r * g - x * r ** 3 * (g * x).mean(axis=-1, keepdims=True)


def rope(x, cos, sin, sign=1.0):
    """Interleaved-pair RoPE on the last axis of x (..., T, G, hd) with cos/sin (T, hd/2);
    sign=-1 rotates back (the backward pass of a rotation)."""
    c, s = cos[:, None, :], sign * sin[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = even * s + odd * c
    return out


def softmax_xent(logits, labels, weight):
    """(sum of weight * CE, dlogits, correct) for logits (N, V), labels (N,), weight (N,)."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    loss = -(weight * np.log(np.maximum(p[rows, labels], 1e-300))).sum()
    correct = logits.argmax(axis=1) == labels
    p[rows, labels] -= 1.0
    p *= weight[:, None].astype(p.dtype)
    return loss, p, correct


def head_loss(frozen: Frozen, hidden, labels, weight, normed_input=False):
    """Final norm (unless normed_input), classifier, weighted CE. hidden (N, D).
    Returns (loss, dhidden, correct)."""
    if normed_input:
        y, r = hidden, None
    else:
        y, r = rmsnorm(hidden, frozen.final_norm, frozen.eps)
    loss, dlogits, correct = softmax_xent(y @ frozen.classifier.T, frozen.label_index[labels], weight)
    dy = dlogits.astype(frozen.dtype) @ frozen.classifier
    dh = dy if normed_input else rmsnorm_back(dy, hidden, frozen.final_norm, r)
    return loss, dh, correct


def lin(x, w):
    """x (..., in) @ w.T as one 2-D BLAS call."""
    return (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*x.shape[:-1], w.shape[0])


def lin_t(dy, w):
    """dy (..., out) @ w: the backward of lin."""
    return (dy.reshape(-1, dy.shape[-1]) @ w).reshape(*dy.shape[:-1], w.shape[1])


def bmm(a, b):
    """Batched matmul over the leading axes, one 2-D BLAS call per matrix (several times
    faster here than np.matmul's loop over stacks)."""
    lead = a.shape[:-2]
    a2, b2 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    out = np.empty((a2.shape[0], a.shape[-2], b.shape[-1]), np.result_type(a, b))
    for i in range(a2.shape[0]):
        np.matmul(a2[i], b2[i], out=out[i])
    return out.reshape(*lead, a.shape[-2], b.shape[-1])


def heads_split(x, n_heads, head_dim):
    """(B, T, G, n*hd) -> (B, n, T, G, hd)."""
    B, T, G, _ = x.shape
    return x.reshape(B, T, G, n_heads, head_dim).transpose(0, 3, 1, 2, 4)


def heads_merge(x):
    B, n, T, G, hd = x.shape
    return x.transpose(0, 2, 3, 1, 4).reshape(B, T, G, n * hd)


def msa_layer(frozen: Frozen, w: dict, S, main_k, main_v):
    """One MSA layer on the stream rows S (B, T, G, D); main_k/main_v (B, T, KV) constants.
    Returns (output, saved for the backward pass)."""
    c = frozen.config
    B, T, G, D = S.shape
    H, KVH, hd = c.n_heads, c.n_kv_heads, c.head_dim
    rep = H // KVH
    cos, sin = frozen.cos[:T], frozen.sin[:T]
    x1, r1 = rmsnorm(S, w["attn_norm"], frozen.eps)
    q = rope(heads_split(lin(x1, w["wq"]), H, hd), cos, sin)
    k = rope(heads_split(lin(x1, w["wk"]), KVH, hd), cos, sin)
    v = heads_split(lin(x1, w["wv"]), KVH, hd)
    ks, vs = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)               # (B, H, T, G, hd)
    km = np.repeat(main_k.reshape(B, T, KVH, hd).transpose(0, 2, 1, 3), rep, axis=1).astype(S.dtype)
    vm = np.repeat(main_v.reshape(B, T, KVH, hd).transpose(0, 2, 1, 3), rep, axis=1).astype(S.dtype)
    scale = 1.0 / np.sqrt(hd)
    s_main = bmm(q.reshape(B, H, T * G, hd), km.transpose(0, 1, 3, 2)).reshape(B, H, T, G, T) * scale
    s_own = np.einsum("bhtgd,bhtkd->bhtgk", q, ks) * scale
    main_ok = (np.arange(T)[None, :] <= np.arange(T)[:, None])[None, None, :, None, :]
    own_ok = np.tri(G, dtype=bool)[None, None, None]
    scores = np.concatenate([np.where(main_ok, s_main, -np.inf), np.where(own_ok, s_own, -np.inf)], axis=-1)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    p_main, p_own = p[..., :T], p[..., T:]
    att = bmm(p_main.reshape(B, H, T * G, T), vm).reshape(B, H, T, G, hd) + np.einsum("bhtgk,bhtkd->bhtgd", p_own, vs)
    S1 = S + lin(heads_merge(att), w["wo"])
    x2, r2 = rmsnorm(S1, w["ffn_norm"], frozen.eps)
    a, b = lin(x2, w["w1"]), lin(x2, w["w3"])
    sig = 1.0 / (1.0 + np.exp(-a))
    act = a * sig * b
    out = S1 + lin(act, w["w2"])
    saved = dict(S=S, x1=x1, r1=r1, q=q, ks=ks, vs=vs, km=km, vm=vm, p=p, att=att, S1=S1, x2=x2, r2=r2,
                 a=a, b=b, sig=sig, act=act)
    return out, saved


def msa_layer_back(frozen: Frozen, w: dict, dout, s: dict):
    """Gradient of the layer's input from the gradient of its output."""
    c = frozen.config
    B, T, G, D = dout.shape
    H, KVH, hd = c.n_heads, c.n_kv_heads, c.head_dim
    rep = H // KVH
    cos, sin = frozen.cos[:T], frozen.sin[:T]
    scale = 1.0 / np.sqrt(hd)
    # feed-forward
    dact = lin_t(dout, w["w2"])
    a, b, sig = s["a"], s["b"], s["sig"]
    da = dact * b * sig * (1.0 + a * (1.0 - sig))
    db = dact * a * sig
    dx2 = lin_t(da, w["w1"]) + lin_t(db, w["w3"])
    dS1 = dout + rmsnorm_back(dx2, s["S1"], w["ffn_norm"], s["r2"])
    # attention
    datt = heads_split(lin_t(dS1, w["wo"]), H, hd)
    p = s["p"]
    p_main, p_own = p[..., :T], p[..., T:]
    dp_main = bmm(datt.reshape(B, H, T * G, hd), s["vm"].transpose(0, 1, 3, 2)).reshape(B, H, T, G, T)
    dp_own = np.einsum("bhtgd,bhtkd->bhtgk", datt, s["vs"])
    dvs = np.einsum("bhtgk,bhtgd->bhtkd", p_own, datt)
    dp = np.concatenate([dp_main, dp_own], axis=-1)
    dscores = p * (dp - (p * dp).sum(axis=-1, keepdims=True)) * scale
    ds_main, ds_own = dscores[..., :T], dscores[..., T:]
    dq = bmm(ds_main.reshape(B, H, T * G, T), s["km"]).reshape(B, H, T, G, hd)
    dq += np.einsum("bhtgk,bhtkd->bhtgd", ds_own, s["ks"])
    dks = np.einsum("bhtgk,bhtgd->bhtkd", ds_own, s["q"])
    dk = dks.reshape(B, KVH, rep, T, G, hd).sum(axis=2)
    dv = dvs.reshape(B, KVH, rep, T, G, hd).sum(axis=2)
    dq = heads_merge(rope(dq, cos, sin, -1.0))
    dk = heads_merge(rope(dk, cos, sin, -1.0))
    dx1 = lin_t(dq, w["wq"]) + lin_t(dk, w["wk"]) + lin_t(heads_merge(dv), w["wv"])
    return dS1 + rmsnorm_back(dx1, s["S"], w["attn_norm"], s["r1"])


def stream_targets(consts: Constants, gamma: int):
    """labels (B, T, G) and weights (B, T, G): stream g (0-based) at t predicts token t + 2 + g."""
    B, T = consts.tokens.shape
    labels = np.zeros((B, T, gamma), np.int64)
    weight = np.zeros((B, T, gamma))
    for g in range(gamma):
        shift = 2 + g
        if shift < T:
            labels[:, :T - shift, g] = consts.tokens[:, shift:]
            weight[:, :T - shift, g] = consts.valid[:, shift:]
    counts = weight.sum(axis=(0, 1))
    return labels, weight * (ALPHA / np.maximum(counts, 1.0))[None, None, :]


def stream_loss(frozen: Frozen, embeddings, consts: Constants, backward: bool = True, init=None):
    """(loss, d embeddings, per-stream accuracy) of the future n-gram loss; with init =
    (down (G, D, eta), up (G, eta, D)), the low-rank f_eta of refimpl.streams.stream_inputs too,
    and the gradient is (d embeddings, d down, d up)."""
    dtype = frozen.dtype
    G = embeddings.shape[0]
    B, T, D = consts.split_hidden.shape
    M = consts.split_hidden.astype(dtype)
    S = M[:, :, None, :] + embeddings.astype(dtype)[None, None]
    if init is not None:
        low = np.einsum("btd,gde->btge", M, init[0])
        S = S + np.einsum("btge,ged->btgd", low, init[1])
    saved = []
    for i, w in enumerate(frozen.layers):
        S, s = msa_layer(frozen, w, S, consts.keys[i], consts.values[i])
        saved.append(s)
    labels, weight = stream_targets(consts, G)
    loss, dS, correct = head_loss(frozen, S.reshape(-1, D), labels.reshape(-1), weight.reshape(-1))
    correct = correct.reshape(B, T, G)
    accuracy = [(correct[..., g] & (weight[..., g] > 0)).sum() / max((weight[..., g] > 0).sum(), 1) for g in range(G)]
    if not backward:
        return loss, None, accuracy
    dS = dS.reshape(B, T, G, D)
    for w, s in zip(reversed(frozen.layers), reversed(saved)):
        dS = msa_layer_back(frozen, w, dS, s)
    if init is None:
        return loss, dS.sum(axis=(0, 1)), accuracy
    d_up = np.einsum("btge,btgd->ged", low, dS)
    d_down = np.einsum("btd,btge->gde", M, np.einsum("btgd,ged->btge", dS, init[1]))
    return loss, (dS.sum(axis=(0, 1)), d_down, d_up), accuracy


def next_token_targets(consts: Constants):
    labels = np.zeros(consts.tokens.shape, np.int64)
    labels[:, :-1] = consts.tokens[:, 1:]
    weight = np.zeros(consts.tokens.shape)
    weight[:, :-1] = consts.valid[:, 1:]
    return labels.reshape(-1), weight.reshape(-1) / max(weight.sum(), 1.0)


def prune_loss(frozen: Frozen, down, up, consts: Constants, backward: bool = True):
    """(loss, (d down, d up), accuracy) of the early-exit next-token loss of the pruning adapter."""
    x = consts.split_hidden.reshape(-1, consts.split_hidden.shape[-1]).astype(frozen.dtype)
    low = x @ down
    labels, weight = next_token_targets(consts)
    loss, dh, correct = head_loss(frozen, x + low @ up, labels, weight)
    accuracy = correct[weight > 0].mean() if (weight > 0).any() else 0.0
    if not backward:
        return loss, None, accuracy
    d_up = low.T @ dh
    d_down = x.T @ (dh @ up.T)
    return loss, (d_down, d_up), accuracy


def medusa_loss(frozen: Frozen, weights, biases, consts: Constants, backward: bool = True):
    """(loss, (d weights, d biases), per-head accuracy): head k on the final normed state."""
    K = weights.shape[0]
    B, T, D = consts.final.shape
    h = consts.final.reshape(-1, D).astype(frozen.dtype)
    labels, weight = stream_targets(consts, K)
    labels, weight = labels.reshape(-1, K), weight.reshape(-1, K)
    total, dW, db, accuracy = 0.0, np.zeros_like(weights), np.zeros_like(biases), []
    for k in range(K):
        z = h @ weights[k].T + biases[k]
        sig = 1.0 / (1.0 + np.exp(-z))
        out = h + z * sig
        loss, dout, correct = head_loss(frozen, out, labels[:, k], weight[:, k], normed_input=True)
        total += loss
        accuracy.append(correct[weight[:, k] > 0].mean() if (weight[:, k] > 0).any() else 0.0)
        if backward:
            dz = dout * sig * (1.0 + z * (1.0 - sig))
            dW[k] = dz.T @ h
            db[k] = dz.sum(axis=0)
    return total, ((dW, db) if backward else None), accuracy


# -- optimiser --------------------------------------------------------------------------------

class Adam:
    """Adam over a dict of arrays, with global-norm clipping of the gradients."""

    def __init__(self, params: dict, lr: float, clip: float = 1.0, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.clip, self.betas, self.eps, self.step_count = lr, clip, betas, eps, 0
        self.m = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}
        self.v = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}

    def step(self, params: dict, grads: dict, lr: float) -> float:
        norm = float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values())))
        factor = min(1.0, self.clip / norm) if norm > 0 else 1.0
        self.step_count += 1
        b1, b2 = self.betas
        for k, g in grads.items():
            g = g.astype(np.float64) * factor
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1 ** self.step_count)
            v_hat = self.v[k] / (1 - b2 ** self.step_count)
            params[k] -= (lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(params[k].dtype)
        return norm

    def state(self) -> dict:
        out = {f"m.{k}": v for k, v in self.m.items()}
        out.update({f"v.{k}": v for k, v in self.v.items()})
        out["step"] = np.array(self.step_count)
        return out

    def load(self, state: dict) -> None:
        for k in self.m:
            self.m[k], self.v[k] = state[f"m.{k}"], state[f"v.{k}"]
        self.step_count = int(state["step"])

    def checkpoint(self, params: dict) -> dict:
        """The parameters and the optimiser's moments, as one dict of arrays (the resume file)."""
        return {**{f"param.{k}": v.copy() for k, v in params.items()}, **self.state()}

    def resume(self, params: dict, state: dict) -> None:
        """Put `checkpoint`'s parameters back into `params` (in place) and its moments here."""
        for k in params:
            params[k] = state[f"param.{k}"].astype(np.float32)
        self.load(state)


# -- data ------------------------------------------------------------------------------------

def self_distilled(model, n_sequences: int, length: int, seed: int = 0, progress=None) -> list[list[int]]:
    """Text the target writes itself: BOS, an opening of 8-23 tokens sampled at temperature 1
    (one seed each: the first few tokens alone are nearly always "Once upon a time"), then
    its greedy continuation; `length` tokens each at most (a story may end earlier)."""
    from refimpl.decoding import autoregressive, generate
    from refimpl.sampling import SamplingSettings
    from refimpl.tokenizer import BOS_ID

    out = []
    for i in range(n_sequences):
        key = seed * 100003 + i
        opening = generate(autoregressive(model, [BOS_ID], SamplingSettings(temperature=1.0, seed=key),
                                          8 + key % 16), [BOS_ID]).tokens
        prompt = [BOS_ID] + opening
        rest = generate(autoregressive(model, prompt, SamplingSettings(), length - len(prompt)), prompt).tokens
        out.append(prompt + rest)
        if progress:
            progress(i + 1, n_sequences)
    return [s for s in out if len(s) >= 4]


def text_sequences(path, tokenizer, length: int) -> list[list[int]]:
    """Training sequences from a text file: each non-empty paragraph, BOS + its tokens, cut to length."""
    from refimpl.errors import InputError, read_text
    from refimpl.tokenizer import BOS_ID

    text = read_text(path, "--data")
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    out = []
    for p in paragraphs:
        ids = [BOS_ID] + tokenizer.encode(p)
        for start in range(0, len(ids), length):
            chunk = ids[start:start + length]
            if len(chunk) >= 4:
                out.append(chunk)
    if not out:
        raise InputError(f"--data {path}: no paragraph of at least 3 tokens")
    return out


# -- the training loop -----------------------------------------------------------------------

@dataclass
class TrainSettings:
    gamma: int = 3
    n_layers: int = 2
    steps: int = 200
    lr: float = 0.01
    batch: int = 4
    seq_len: int = 128
    seed: int = 0
    clip: float = 1.0
    eta: int = 0          # rank of the stream-initialisation map f_eta (0: identity, P_j only)


class Progress:
    """One self-rewriting line on stderr: step, rate, losses and accuracies."""

    def __init__(self, total: int, stream=None):
        self.total, self.stream, self.start = total, stream or sys.stderr, time.perf_counter()

    def __call__(self, step: int, text: str) -> None:
        elapsed = time.perf_counter() - self.start
        width = 24
        done = int(width * step / max(self.total, 1))
        self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{self.total} {elapsed:5.0f}s {text}   ")
        if step >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def batches(n: int, batch: int, seed: int, step: int) -> np.ndarray:
    """The sequence indices of a step's batch (an epoch-wise permutation keyed by seed)."""
    per_epoch = max(n // batch, 1)
    epoch, at = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[at * batch:(at + 1) * batch] if n >= batch else order


def train_streams(model, sequences: list[list[int]], settings: TrainSettings, state: dict | None = None,
                  progress=None, save_state=None, every: int = 25):
    """Train stream embeddings and the pruning adapter; returns (Streams, final metrics).
    `state` (from save_state) resumes; save_state(dict) is called every `every` steps."""
    frozen = Frozen(model, settings.n_layers)
    frozen.restrict([t for seq in sequences for t in seq])
    rng = np.random.default_rng(settings.seed)
    dim = model.config.dim
    params = {"embeddings": np.zeros((settings.gamma, dim), np.float32),
              "prune_down": (rng.standard_normal((dim, PRUNE_RANK)) / np.sqrt(dim)).astype(np.float32),
              "prune_up": np.zeros((PRUNE_RANK, dim), np.float32)}
    if settings.eta:
        params["init_down"] = (rng.standard_normal((settings.gamma, dim, settings.eta)) / np.sqrt(dim)).astype(np.float32)
        params["init_up"] = np.zeros((settings.gamma, settings.eta, dim), np.float32)
    adam = Adam(params, settings.lr, settings.clip)
    if state is not None:
        adam.resume(params, state)
    metrics = {}
    consts_cache: dict[int, Constants] = {}
    for step in range(adam.step_count, settings.steps):
        index = batches(len(sequences), settings.batch, settings.seed, step)
        key = hash(tuple(index))
        consts = consts_cache.get(key) or base_constants(model, [sequences[i] for i in index], settings.n_layers)
        if len(consts_cache) < 64:
            consts_cache[key] = consts
        init = (params["init_down"], params["init_up"]) if settings.eta else None
        s_loss, grads, s_acc = stream_loss(frozen, params["embeddings"], consts, init=init)
        p_loss, (d_down, d_up), p_acc = prune_loss(frozen, params["prune_down"], params["prune_up"], consts)
        lr = settings.lr * (1.0 - step / settings.steps)
        step_grads = {"prune_down": d_down, "prune_up": d_up}
        if settings.eta:
            step_grads.update(embeddings=grads[0], init_down=grads[1], init_up=grads[2])
        else:
            step_grads["embeddings"] = grads
        adam.step(params, step_grads, lr)
        metrics = {"stream_loss": float(s_loss), "stream_accuracy": [float(a) for a in s_acc],
                   "prune_loss": float(p_loss), "prune_accuracy": float(p_acc)}
        if progress:
            progress(step + 1, f"loss {s_loss / (ALPHA * settings.gamma):.3f} acc "
                               + "/".join(f"{a:.2f}" for a in s_acc) + f" prune {p_acc:.2f}")
        if save_state and ((step + 1) % every == 0 or step + 1 == settings.steps):
            save_state(adam.checkpoint(params))
    streams = Streams(params["embeddings"], settings.n_layers, params["prune_down"], params["prune_up"],
                      model_identity(model), training_vocabulary(sequences), params.get("init_down"),
                      params.get("init_up"))
    return streams, metrics


def training_vocabulary(sequences) -> np.ndarray:
    """The draft shortlist: every token of the training text (the softmax trained over)."""
    return np.unique(np.concatenate([np.asarray(s, np.int64) for s in sequences]))


def train_medusa(model, sequences: list[list[int]], settings: TrainSettings, state: dict | None = None,
                 progress=None, save_state=None, every: int = 25):
    """Train Medusa-1 heads (gamma of them); returns ((weights, biases), final metrics)."""
    frozen = Frozen(model, 1)
    frozen.restrict([t for seq in sequences for t in seq])
    dim = model.config.dim
    params = {"weights": np.zeros((settings.gamma, dim, dim), np.float32),
              "biases": np.zeros((settings.gamma, dim), np.float32)}
    adam = Adam(params, settings.lr, settings.clip)
    if state is not None:
        adam.resume(params, state)
    metrics = {}
    for step in range(adam.step_count, settings.steps):
        index = batches(len(sequences), settings.batch, settings.seed, step)
        consts = base_constants(model, [sequences[i] for i in index], 1)
        loss, (dW, db), acc = medusa_loss(frozen, params["weights"], params["biases"], consts)
        lr = settings.lr * (1.0 - step / settings.steps)
        adam.step(params, {"weights": dW, "biases": db}, lr)
        metrics = {"loss": float(loss), "accuracy": [float(a) for a in acc]}
        if progress:
            progress(step + 1, f"loss {loss / (ALPHA * settings.gamma):.3f} acc " + "/".join(f"{a:.2f}" for a in acc))
        if save_state and ((step + 1) % every == 0 or step + 1 == settings.steps):
            save_state(adam.checkpoint(params))
    return (params["weights"], params["biases"]), metrics


def settings_dict(settings: TrainSettings) -> dict:
    return asdict(settings)
