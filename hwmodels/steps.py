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
                      launch group (draft_pass_overhead_s)
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
              tree mask, candidate gather, KV-cache compaction)

Autoregressive decoding pays `verify` with one row and nothing else; its own
host work (sampling one token, the Python loop) is in the device's
pass_overhead_s, calibrated on autoregressive step times.
"""
from __future__ import annotations

from .devices import get_device
from .errors import InputError
from .latency import forward_latency, matmuls_seconds
from .models import get_model

METHODS = ("ar", "lookup", "sd", "medusa", "eagle", "hydra")
#: Methods whose draft passes run on the target's device, from its own hidden states.
HEAD_METHODS = ("medusa", "eagle", "hydra")
#: Medusa heads per step when not told (the 4-deep sparse tree mc_sim_7b_63 uses 4).
MEDUSA_HEADS = 4


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"method: unknown {method!r} (known: {', '.join(METHODS)})")
    return method


def head_pass_seconds(kind: str, shape, device, rows: int, context: int, *, batch: int = 1, tp: int = 1,
                      dtype: str = "fp16", heads: int = MEDUSA_HEADS) -> float:
    """One drafting pass of a method that drafts from the target's hidden states (see the module docstring)."""
    if kind not in HEAD_METHODS:
        raise InputError(f"method: {kind!r} has no head passes (those that do: {', '.join(HEAD_METHODS)})")
    shape, device = get_model(shape), get_device(device)
    h, v, tokens = shape.hidden_size, shape.vocab_size, batch * rows
    if kind == "medusa":
        if heads < 1:
            raise InputError(f"heads: medusa needs at least 1 head, got {heads}")
        seconds = matmuls_seconds(device, [(h, h), (h, v)] * heads, tokens, dtype, tp)
    elif kind == "eagle":
        block = forward_latency(shape, device, rows, context, batch=batch, tp=tp, dtype=dtype,
                                layers=(shape.n_layers - 1, shape.n_layers), classifier=True).seconds
        seconds = matmuls_seconds(device, [(2 * h, h)], tokens, dtype, tp) + block
    else:
        seconds = matmuls_seconds(device, [(2 * h, h), (h, v)], tokens, dtype, tp)
    return seconds + device.draft_pass_overhead_s


def host_seconds(method: str, device, rows: int, batch: int = 1) -> float:
    """Host work a step of `method` adds over an autoregressive step (0 for ar)."""
    if _check_method(method) == "ar":
        return 0.0
    device = get_device(device)
    return device.step_overhead_s + device.tree_row_overhead_s * rows * batch


def step_parts(method: str, shape, device, rows: int, context: int, *, draft_rows=(), heads: int = MEDUSA_HEADS,
               batch: int = 1, tp: int = 1, dtype: str = "fp16", draft_shape=None, draft_device=None) -> dict:
    """Seconds of one step of `method` by term: {'verify', 'draft', 'host'} (module docstring).

    `rows`: the verification pass's query rows per sequence; `draft_rows`: the
    query rows of each draft pass (medusa: ignored, its heads run on `rows`).
    sd needs `draft_shape` (and `draft_device`, default the target's).
    """
    _check_method(method)
    shape, device = get_model(shape), get_device(device)
    rows = 1 if method == "ar" else rows
    verify = forward_latency(shape, device, rows, context, batch=batch, tp=tp, dtype=dtype).seconds
    draft = 0.0
    if method == "medusa":
        draft = head_pass_seconds("medusa", shape, device, rows, context, batch=batch, tp=tp, dtype=dtype,
                                  heads=heads)
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
