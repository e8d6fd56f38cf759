"""The time of one speculative decoding step, per method, as real implementations pay it.

A step of a speculative method costs more than the forward pass that verifies
it. Each term below is named after what pays it, and each fixed time is a
device field (`Device.step_overhead_s`, ...), fitted to published step times
(data/measurements/hf_eager_a100.csv, experiments/calibrate_methods.py):

    verify    the target's pass over the step's `rows` query rows (a chain, or a
              token tree under its ancestor mask), `latency.forward_latency`:
              the weights once, attention over the L + rows keys, and small-n
              GEMMs whose compute the device's `overlap` leaves partly unhidden
              (at 64 rows a 7B model does 0.9 TFLOP: on an A100 that is ~3 ms
              that a perfectly overlapped roofline would price at 0)
    draft     the method's proposals:
              medusa  H heads on the hidden states of the verified rows, each a
                      residual block (h x h) and its own classifier (V x h), one
                      launch group (draft_pass_overhead_s); refimpl's layout
                      (`shared_classifier`): the heads run on one row (the last
                      committed node's), their H rows through the target's own
                      classifier, or its `vocab`-row shortlist, read once
              ss      per stream pass (the deferred schedule): the pass's stream
                      rows through the last `stream_layers` blocks (no pass
                      overhead: the pass starts mid-model) and the draft
                      classifier (`vocab` rows: a shortlist, or the vocabulary),
                      + draft_pass_overhead_s; riding in the verification pass
                      (the fused schedule, `alongside` = its rows): what the
                      extra rows add to those blocks, plus the classifier, a
                      call of its own after the pass (+ draft_pass_overhead_s)
              eagle   per draft pass: the fusing layer (2h -> h), one decoder
                      block of the target's shape and the target's classifier,
                      over that pass's rows, + draft_pass_overhead_s
              hydra   per draft pass (one per tree depth): the head's MLP
                      (2h -> h, hidden state and previous token's embedding) and
                      its classifier, + draft_pass_overhead_s
              sd      per draft pass: a forward pass of the draft model (its own
                      device's pass and layer overheads)
              lookup  none: matching n-grams in the context is host work
    host      step_overhead_s (the host work a speculative step adds over an
              autoregressive step: building candidates, sampling and verifying,
              updating the cache) + tree_row_overhead_s x rows (per verified row:
              tree mask, candidate gather, KV-cache compaction); Mirror-SD also
              pays logit_overhead_s per logit of its early exit's top-κ and
              log-softmax (rows x vocabulary; 0 where the device fuses them)

Autoregressive decoding pays `verify` with one row and nothing else; its own
host work (sampling one token, the Python loop) is in the device's
pass_overhead_s, calibrated on autoregressive step times.
"""
from __future__ import annotations

from .devices import get_device
from .errors import InputError
from .latency import forward_latency, matmuls_seconds
from .models import get_model

METHODS = ("ar", "lookup", "sd", "medusa", "eagle", "hydra", "ss")
#: Methods whose draft passes run on the target's device, from its own hidden states.
HEAD_METHODS = ("medusa", "eagle", "hydra")
#: Medusa heads per step when not told (the 4-deep sparse tree mc_sim_7b_63 uses 4).
MEDUSA_HEADS = 4


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"method: unknown {method!r} (known: {', '.join(METHODS)})")
    return method


def head_pass_seconds(kind: str, shape, device, rows: int, context: int, *, batch: int = 1, tp: int = 1,
                      dtype: str = "fp16", heads: int = MEDUSA_HEADS, vocab: int | None = None,
                      shared_classifier: bool = False) -> float:
    """One drafting pass of a method that drafts from the target's hidden states (see the module docstring).

    `vocab`: rows of the classifier the draft logits use (default the whole vocabulary; fewer: a
    shortlist); `shared_classifier` (medusa): the heads share one classifier, read once for
    their heads x rows rows, instead of one each."""
    if kind not in HEAD_METHODS:
        raise InputError(f"method: {kind!r} has no head passes (those that do: {', '.join(HEAD_METHODS)})")
    shape, device = get_model(shape), get_device(device)
    h, tokens = shape.hidden_size, batch * rows
    v = _draft_vocab(shape, vocab)
    if kind == "medusa":
        if heads < 1:
            raise InputError(f"heads: medusa needs at least 1 head, got {heads}")
        if shared_classifier:
            seconds = (matmuls_seconds(device, [(h, h)] * heads, tokens, dtype, tp)
                       + matmuls_seconds(device, [(h, v)], heads * tokens, dtype, tp))
        else:
            seconds = matmuls_seconds(device, [(h, h), (h, v)] * heads, tokens, dtype, tp)
    elif kind == "eagle":
        block = forward_latency(shape, device, rows, context, batch=batch, tp=tp, dtype=dtype,
                                layers=(shape.n_layers - 1, shape.n_layers), classifier=True).seconds
        seconds = matmuls_seconds(device, [(2 * h, h)], tokens, dtype, tp) + block
    else:
        seconds = matmuls_seconds(device, [(2 * h, h), (h, v)], tokens, dtype, tp)
    return seconds + device.draft_pass_overhead_s


def _draft_vocab(shape, vocab: int | None) -> int:
    if vocab is None:
        return shape.vocab_size
    if not isinstance(vocab, int) or isinstance(vocab, bool) or not 1 <= vocab <= shape.vocab_size:
        raise InputError(f"vocab: the draft classifier needs 1..{shape.vocab_size} rows (the vocabulary of "
                         f"{shape.name}), got {vocab!r}")
    return vocab


def _check_stream_layers(shape, stream_layers) -> int:
    if (not isinstance(stream_layers, int) or isinstance(stream_layers, bool)
            or not 1 <= stream_layers <= shape.n_layers):
        raise InputError(f"stream_layers: need 1..{shape.n_layers} (the layers of {shape.name}), "
                         f"got {stream_layers!r}")
    return stream_layers


def stream_pass_seconds(shape, device, rows: int, context: int, *, stream_layers: int, vocab: int | None = None,
                        logit_rows: int | None = None, alongside: int = 0, batch: int = 1, tp: int = 1,
                        dtype: str = "fp16") -> float:
    """Speculative Streaming's drafting: `rows` stream rows through the last `stream_layers`
    blocks, then `logit_rows` of them (default all) through the `vocab`-row draft classifier
    (see the module docstring). alongside=0: a pass of their own (the deferred schedule);
    alongside=n: rows riding in a verification pass of n rows (the fused schedule). Either way
    the draft classifier is a call of its own (refimpl's layout): + draft_pass_overhead_s."""
    shape, device = get_model(shape), get_device(device)
    upper = (shape.n_layers - _check_stream_layers(shape, stream_layers), shape.n_layers)

    def blocks(n: int) -> float:
        return forward_latency(shape, device, n, context, batch=batch, tp=tp, dtype=dtype, layers=upper,
                               classifier=False).seconds
    streams = blocks(alongside + rows) - blocks(alongside) if alongside else blocks(rows)
    h, logits = shape.hidden_size, rows if logit_rows is None else logit_rows
    classifier = matmuls_seconds(device, [(h, _draft_vocab(shape, vocab))], batch * logits, dtype, tp) if logits else 0.0
    return streams + classifier + device.draft_pass_overhead_s


def host_seconds(method: str, device, rows: int, batch: int = 1, vocab: int = 0) -> float:
    """Host work a step of `method` adds over an autoregressive step (0 for ar). Mirror-SD's
    adds its early exit's candidates: the top-κ and log-softmax of each of the `rows` over
    the `vocab` logits (logit_overhead_s per logit)."""
    if method != "mirror" and _check_method(method) == "ar":
        return 0.0
    device = get_device(device)
    candidates = device.logit_overhead_s * rows * vocab * batch if method == "mirror" else 0.0
    return device.step_overhead_s + device.tree_row_overhead_s * rows * batch + candidates


def step_parts(method: str, shape, device, rows: int, context: int, *, draft_rows=(), heads: int = MEDUSA_HEADS,
               batch: int = 1, tp: int = 1, dtype: str = "fp16", draft_shape=None, draft_device=None,
               stream_layers: int | None = None, vocab: int | None = None) -> dict:
    """Seconds of one step of `method` by term: {'verify', 'draft', 'host'} (module docstring).

    `rows`: the verification pass's query rows per sequence; `draft_rows`: the
    query rows of each draft pass (medusa: ignored, its heads run on `rows`; ss: the
    deferred stream passes). sd needs `draft_shape` (and `draft_device`, default the
    target's); ss needs `stream_layers`; `vocab` is the draft classifier's rows (ss, medusa).
    """
    _check_method(method)
    shape, device = get_model(shape), get_device(device)
    rows = 1 if method == "ar" else rows
    verify = forward_latency(shape, device, rows, context, batch=batch, tp=tp, dtype=dtype).seconds
    draft = 0.0
    if method == "medusa":
        draft = head_pass_seconds("medusa", shape, device, rows, context, batch=batch, tp=tp, dtype=dtype,
                                  heads=heads, vocab=vocab)
    elif method == "ss":
        if stream_layers is None:
            raise InputError("ss: a step of ss needs the stream layers N_s")
        _check_stream_layers(shape, stream_layers)
        draft = sum(stream_pass_seconds(shape, device, r, context, stream_layers=stream_layers, vocab=vocab,
                                        batch=batch, tp=tp, dtype=dtype) for r in draft_rows)
    elif method in ("eagle", "hydra"):
        draft = sum(head_pass_seconds(method, shape, device, r, context, batch=batch, tp=tp, dtype=dtype)
                    for r in draft_rows)
    elif method == "sd":
        if draft_shape is None:
            raise InputError("sd: a step of sd needs the draft model's shape")
        draft_device = get_device(draft_device) if draft_device is not None else device
        draft = sum(forward_latency(draft_shape, draft_device, r, context, batch=batch, dtype=dtype).seconds
                    for r in draft_rows)
    return {"verify": verify, "draft": draft, "host": host_seconds(method, device, rows, batch)}


def step_seconds(method: str, shape, device, rows: int, context: int, **kwargs) -> float:
    """Seconds of one step of `method`: verify + draft + host (see `step_parts`)."""
    return sum(step_parts(method, shape, device, rows, context, **kwargs).values())
