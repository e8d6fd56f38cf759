"""Latency of one forward pass of a model shape on a device.

For n query tokens per sequence, batch B, KV context L, tensor-parallel degree G
and the blocks [a, b) (plus, optionally, the final norm and classifier):

    per component (the blocks; the classifier):
        c = flops / (peak[dtype] * compute_efficiency) + dots * dot_overhead + scores * score_overhead
        m = bytes / (bandwidth * memory_efficiency)
        t = max(c, m) + (1 - overlap) * min(c, m)
    overhead      = layer_overhead * (b - a) + pass_overhead if a == 0
    communication = collectives * (alpha * log2(G) + beta * message)

Work per device (one of G): weights once per pass, KV-cache reads of the L + n
keys and writes of the n new ones, and the activations in and out of every
matmul, all divided by G; FLOPs are 2 per multiply-add of the matmuls plus the
two attention products over the average key count L + (n + 1) / 2. `dots`
counts the dot products (one per matmul output element, per attention score
and per attention output element): a fixed cost per dot product (loop set-up
and horizontal sum) is what makes narrow models slow on the CPU reference
kernels, and `scores` (one per query, key and head) carries the per-score cost
of the softmax (exp, max, the weighted accumulation of V); both are 0 on the
GPU and NPU entries, where fused kernels hide them.

Collectives: Megatron tensor parallelism does 2 all-reduces per block; SPD-style
sharding (Mirror-SD's draft) splits the blocks into `spd_segments` contiguous
segments with one all-reduce at the end of each. The cost of one all-reduce is
alpha * log2(G) + beta * m (Mirror-SD, arXiv 2510.13161 §3.4), where m is the
bytes each device sends in a bandwidth-optimal (reduce-scatter + all-gather)
all-reduce of the B * n * hidden activations: m = 2 (G - 1) / G * B * n *
hidden * bytes. (The paper writes the message as B * n * hidden / G; that
undercounts the traffic by 2 (G - 1) and cannot fit FasterTransformer's TP=2
prefill, see data/measurements/fastertransformer_13b.csv.)

The pass overhead belongs to the range that starts at block 0, so timing blocks
[0, e) and [e, N) separately adds up exactly to timing [0, N). The breakdown
charges each component's bound term to its category ('compute' or 'memory') and
the unhidden part of the other term to the other, so the four parts add up to
`seconds`; `compute_time` and `memory_time` are the raw roofline terms.

Scaling: every term is a rate divided into work, or a fixed time, so on
`device.scaled(f)` (rates times f, fixed times and link α, β divided by f) the
latency and each part of its breakdown are exactly the original divided by f.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .devices import get_device, get_link
from .hardware import Device, Link, blocked_rows
from .dtypes import activation_bytes_per_element, check_dtype, weight_bytes_per_element
from .errors import InputError
from .models import ModelShape, get_model

SHARDINGS = ("megatron", "spd")


def allreduce_time(link: Link, nbytes, group):
    """One all-reduce over `group` devices: alpha * log2(G) + beta * nbytes (0 for G = 1).

    Works elementwise on numpy arrays (the calibration evaluates many passes at once).
    """
    group = np.asarray(group, dtype=float)
    cost = link.alpha_s * np.log2(np.maximum(group, 1.0)) + link.beta_s_per_byte * np.asarray(nbytes, dtype=float)
    cost = np.where(group > 1, cost, 0.0)
    return float(cost) if cost.ndim == 0 else cost


@dataclass(frozen=True)
class Work:
    """What one device does in one pass, before any device rate is applied."""

    block_flops: float
    block_bytes: float
    block_dots: float
    block_scores: float
    head_flops: float
    head_bytes: float
    head_dots: float
    n_blocks: int
    starts_pass: bool
    collectives: int
    message_bytes: float
    tp: int


@dataclass(frozen=True)
class Latency:
    """The time of one forward pass and where it goes."""

    seconds: float
    breakdown: dict
    bound: str
    compute_time: float
    memory_time: float
    flops: float
    bytes: float
    collectives: int
    message_bytes: float
    device: str
    model: str
    n_tokens: int
    context: int
    batch: int
    tp: int
    dtype: str
    layers: tuple
    classifier: bool
    sharding: str

    def to_dict(self) -> dict:
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out


def _int_option(name: str, value, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected an integer, got {value!r}") from None
    if number != value and not isinstance(value, str):
        raise InputError(f"{name}: expected an integer, got {value!r}")
    if number < minimum:
        raise InputError(f"{name}: must be >= {minimum}, got {number}")
    return number


def _collectives(shape: ModelShape, a: int, b: int, sharding: str, spd_segments: int) -> int:
    if sharding == "megatron":
        return 2 * (b - a)
    ends = {round(shape.n_layers * k / spd_segments) for k in range(1, spd_segments + 1)}
    return sum(1 for end in ends if a < end <= b)


def pass_work(shape: ModelShape, n_tokens: int, context: int, *, batch: int = 1, tp: int = 1,
              dtype: str = "fp16", layers=None, classifier=None, sharding: str = "megatron",
              spd_segments: int = 2, row_block: int = 1) -> Work:
    """The FLOPs, bytes and collectives of one pass on one of `tp` devices; the matmuls
    compute their rows in blocks of `row_block` (the device's, `blocked_rows`)."""
    n = _int_option("tokens", n_tokens, 1)
    L = _int_option("context", context, 0)
    B = _int_option("batch", batch, 1)
    G = _int_option("tp", tp, 1)
    dtype = check_dtype(dtype)
    if G > shape.n_heads:
        raise InputError(f"tp: {G} exceeds the {shape.n_heads} attention heads of model {shape.name}")
    if sharding not in SHARDINGS:
        raise InputError(f"sharding: expected one of {', '.join(SHARDINGS)}, got {sharding!r}")
    segments = _int_option("spd_segments", spd_segments, 1)
    a, b = shape.check_layers(layers)
    with_head = (b == shape.n_layers) if classifier is None else bool(classifier)
    wb, ab = weight_bytes_per_element(dtype), activation_bytes_per_element(dtype)

    tokens = B * n
    rows = blocked_rows(tokens, row_block)   # what the matmuls compute
    matmuls = shape.block_matmuls()
    keys_read = L + n                    # the cache plus the new keys, read once per sequence
    mean_keys = L + (n + 1) / 2          # causal: token i sees L + i + 1 keys
    block_flops = (2 * rows * sum(i * o for i, o in matmuls)
                   + 4 * tokens * mean_keys * shape.q_dim) / G
    block_bytes = (shape.block_params() * wb
                   + B * (keys_read + n) * 2 * shape.kv_dim * ab
                   + tokens * sum(i + o for i, o in matmuls) * ab) / G
    block_dots = tokens * (sum(o for _, o in matmuls) + mean_keys * shape.n_heads + shape.q_dim) / G
    block_scores = tokens * mean_keys * shape.n_heads / G
    head_flops = head_bytes = head_dots = 0.0
    if with_head:
        h, v = shape.hidden_size, shape.vocab_size
        head_flops = 2 * rows * v * h / G
        head_bytes = (v * h * wb + tokens * (h + v) * ab) / G
        head_dots = tokens * v / G
    collectives = _collectives(shape, a, b, sharding, segments) if G > 1 else 0
    return Work(block_flops=block_flops * (b - a), block_bytes=block_bytes * (b - a),
                block_dots=block_dots * (b - a), block_scores=block_scores * (b - a), head_flops=head_flops, head_bytes=head_bytes,
                head_dots=head_dots, n_blocks=b - a, starts_pass=a == 0,
                collectives=collectives, message_bytes=2 * (G - 1) / G * tokens * shape.hidden_size * ab, tp=G)


def _roofline(flops, nbytes, dots, scores, peak, device: Device):
    """(charged to compute, charged to memory, raw compute, raw memory) of one component."""
    c = flops / (peak * device.compute_efficiency) + dots * device.dot_overhead_s + scores * device.score_overhead_s
    m = nbytes / (device.memory_bandwidth * device.memory_efficiency)
    hidden = (1.0 - device.overlap) * np.minimum(c, m)
    compute_bound = c > m
    return (np.where(compute_bound, c, hidden), np.where(compute_bound, hidden, m), c, m)


def time_parts(work: Work, device: Device, peak, link: Link | None) -> dict:
    """Seconds per category; works elementwise when the Work fields are numpy arrays."""
    blocks = _roofline(work.block_flops, work.block_bytes, work.block_dots, work.block_scores, peak, device)
    head = _roofline(work.head_flops, work.head_bytes, work.head_dots, 0.0, peak, device)
    overhead = device.layer_overhead_s * work.n_blocks + device.pass_overhead_s * work.starts_pass
    comm = 0.0 * work.collectives if link is None else work.collectives * allreduce_time(link, work.message_bytes, work.tp)
    return {"compute": blocks[0] + head[0], "memory": blocks[1] + head[1], "overhead": overhead,
            "communication": comm, "compute_time": blocks[2] + head[2], "memory_time": blocks[3] + head[3]}


def matmuls_seconds(device: Device, matmuls, tokens: int, dtype: str = "fp16", tp: int = 1) -> float:
    """The roofline time of dense layers outside a transformer block (draft heads, fusing layers).

    `matmuls` lists (in, out) weight shapes applied to `tokens` rows: 2 FLOP per
    multiply-add, the weights read once, activations in and out, split over `tp`
    devices; timed like a block's matmuls (compute efficiency, memory efficiency,
    overlap), with no fixed overhead of its own.
    """
    wb, ab = weight_bytes_per_element(check_dtype(dtype)), activation_bytes_per_element(dtype)
    weights = sum(i * o for i, o in matmuls)
    rows = blocked_rows(tokens, device.row_block)
    flops = 2 * rows * weights / tp
    nbytes = (weights * wb + tokens * sum(i + o for i, o in matmuls) * ab) / tp
    dots = tokens * sum(o for _, o in matmuls) / tp
    charged_compute, charged_memory, _, _ = _roofline(flops, nbytes, dots, 0.0, device.peak(dtype), device)
    return float(charged_compute + charged_memory)


def _tp_link(device: Device, tp: int, link) -> Link | None:
    if link is not None:
        return get_link(link)
    if tp > 1 and device.tp_link is None:
        raise InputError(f"tp: device {device.key} has no tensor-parallel link; use tp=1 or name a link")
    return device.tp_link


def forward_latency(shape_or_name, device_or_name, n_tokens: int, context: int, *, batch: int = 1,
                    tp: int = 1, dtype: str = "fp16", layers=None, classifier=None,
                    sharding: str = "megatron", spd_segments: int = 2, link=None) -> Latency:
    """Seconds of one forward pass (see the module docstring for the model).

    layers=(a, b) is half-open over the transformer blocks (default: all);
    classifier defaults to True iff the range ends at the last block;
    sharding="spd" is Mirror-SD's draft sharding (2 all-reduces per pass);
    link overrides the device's tensor-parallel link.
    """
    shape = get_model(shape_or_name)
    device = get_device(device_or_name)
    peak = device.peak(dtype)
    work = pass_work(shape, n_tokens, context, batch=batch, tp=tp, dtype=dtype, layers=layers,
                     classifier=classifier, sharding=sharding, spd_segments=spd_segments,
                     row_block=device.row_block)
    parts = {k: float(v) for k, v in time_parts(work, device, peak, _tp_link(device, work.tp, link)).items()}
    breakdown = {k: parts[k] for k in ("compute", "memory", "overhead", "communication")}
    a, b = shape.check_layers(layers)
    return Latency(
        seconds=sum(breakdown.values()), breakdown=breakdown,
        bound="compute" if parts["compute_time"] > parts["memory_time"] else "memory",
        compute_time=parts["compute_time"], memory_time=parts["memory_time"],
        flops=work.block_flops + work.head_flops, bytes=work.block_bytes + work.head_bytes,
        collectives=work.collectives, message_bytes=work.message_bytes, device=device.key,
        model=shape.name, n_tokens=int(n_tokens), context=int(context), batch=int(batch), tp=work.tp,
        dtype=check_dtype(dtype), layers=(a, b), classifier=work.head_flops > 0, sharding=sharding)
