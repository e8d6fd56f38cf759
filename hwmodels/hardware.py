"""Device and Link: what the latency model knows of one accelerator and of one link.

A `Device` holds datasheet rates (peak FLOP/s per dtype, memory bandwidth and
capacity), efficiency factors, fixed overheads, and the link its tensor-parallel
group talks over. A `Link` is α (seconds per hop) and β (seconds per byte).
Both validate their numbers on construction (efficiencies in (0, 1]: a device
cannot beat its datasheet).

Scaling: `device.scaled(f)` multiplies every rate (FLOP/s, bytes/s, link
bandwidth) by f and divides every fixed time (overheads, link α) by f, so every
latency computed on it is exactly the original divided by f.

This is the bottom of the device layer: the catalogs (`devices`), the measured
CPU (`cpu`), stored calibrations (`fitted`) and the latency model build on it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .dtypes import check_dtype
from .errors import InputError

#: Parameters a calibration may set or fit, with their physical bounds
#: (efficiencies and overlap are fractions; times and link costs are >= 0).
PARAM_BOUNDS = {
    "compute_efficiency": (1e-4, 1.0),
    "memory_efficiency": (1e-3, 1.0),
    "overlap": (0.0, 1.0),
    "pass_overhead_s": (0.0, 10.0),
    "layer_overhead_s": (0.0, 1.0),
    "dot_overhead_s": (0.0, 1e-3),
    "score_overhead_s": (0.0, 1e-3),
    "step_overhead_s": (0.0, 1.0),
    "tree_row_overhead_s": (0.0, 0.01),
    "draft_pass_overhead_s": (0.0, 1.0),
    "logit_overhead_s": (0.0, 1e-6),
    "link_alpha_s": (0.0, 0.1),
    "link_beta_s_per_byte": (1e-14, 1e-6),
}

#: The fixed times a speculative step adds (hwmodels.steps), all 0 unless calibrated.
STEP_FIELDS = ("step_overhead_s", "tree_row_overhead_s", "draft_pass_overhead_s", "logit_overhead_s")


def blocked_rows(rows: int, row_block: int) -> int:
    """The rows a matmul over `rows` rows computes on a device of `row_block`: a whole number
    of blocks (a single row: just itself)."""
    return rows if rows <= 1 else -(-rows // row_block) * row_block


def _positive(owner: str, what: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{owner}: {what} must be a positive number, got {value}")
    return value


def _non_negative(owner: str, what: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{owner}: {what} must be >= 0, got {value}")
    return value


@dataclass(frozen=True)
class Link:
    """A point-to-point link: a message of m bytes takes alpha_s + beta_s_per_byte * m."""

    key: str
    name: str
    alpha_s: float
    beta_s_per_byte: float
    sources: dict = field(default_factory=dict, compare=False)
    aliases: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        _non_negative(f"link {self.key}", "alpha_s", self.alpha_s)
        _positive(f"link {self.key}", "beta_s_per_byte", self.beta_s_per_byte)

    @property
    def bandwidth(self) -> float:
        """Bytes per second (1 / beta)."""
        return 1.0 / self.beta_s_per_byte

    def time(self, nbytes: float) -> float:
        """alpha + beta * nbytes."""
        return self.alpha_s + self.beta_s_per_byte * _non_negative(f"link {self.key}", "message bytes", nbytes)

    def scaled(self, factor: float) -> "Link":
        """A link `factor` times faster: alpha and beta divided by factor."""
        f = _positive(f"link {self.key}", "scale factor", factor)
        return dataclasses.replace(self, alpha_s=self.alpha_s / f, beta_s_per_byte=self.beta_s_per_byte / f)

    def with_params(self, **params) -> "Link":
        return dataclasses.replace(self, **params)

    def summary(self) -> dict:
        return {"key": self.key, "name": self.name, "alpha_s": self.alpha_s,
                "beta_s_per_byte": self.beta_s_per_byte, "bandwidth_bytes_per_s": self.bandwidth,
                "sources": dict(self.sources)}


@dataclass(frozen=True)
class Device:
    """One accelerator (or CPU) as the latency model sees it."""

    key: str
    name: str
    kind: str
    peak_flops: dict            # dtype -> FLOP/s
    memory_bandwidth: float     # bytes/s
    memory_capacity: float      # bytes
    compute_efficiency: float   # fraction of peak FLOP/s reached by matmuls
    memory_efficiency: float    # fraction of peak bandwidth reached by streaming reads
    overlap: float              # 1: time = max(compute, memory); 0: their sum
    pass_overhead_s: float      # fixed cost of a forward pass (launches, scheduling, sampling)
    layer_overhead_s: float     # fixed cost per transformer block (kernel launches)
    memory_usable_fraction: float
    dot_overhead_s: float = 0.0    # fixed cost per dot product (CPU loop set-up; 0 on GPUs/NPUs)
    score_overhead_s: float = 0.0  # fixed cost per attention score (CPU softmax; 0 on GPUs/NPUs)
    # Costs of the engine running on the device that a speculative step adds (see hwmodels.steps):
    step_overhead_s: float = 0.0        # host work per speculative step beyond an AR step's
    tree_row_overhead_s: float = 0.0    # per verified row: tree mask, candidate gather, cache compaction
    draft_pass_overhead_s: float = 0.0  # launch cost of one draft/head pass (a small forward of its own)
    logit_overhead_s: float = 0.0       # per logit the host scans for Mirror-SD's early-exit candidates
    # Rows per matmul block: a matmul over two or more rows computes them in blocks of this many
    # (the last one filled up: its spare rows cost what real ones do); a single row runs a
    # matrix-vector loop of its own. 1 (the default) is a roofline with no blocking.
    row_block: int = 1
    tp_link: Link | None = None
    calibration: str | None = None
    sources: dict = field(default_factory=dict, compare=False)
    aliases: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        owner = f"device {self.key}"
        if not self.peak_flops:
            raise InputError(f"{owner}: peak_flops lists no dtype")
        for dtype, rate in self.peak_flops.items():
            _positive(owner, f"peak_flops[{dtype}]", rate)
        _positive(owner, "memory_bandwidth", self.memory_bandwidth)
        _positive(owner, "memory_capacity", self.memory_capacity)
        for name in ("compute_efficiency", "memory_efficiency", "memory_usable_fraction"):
            if not 0 < _positive(owner, name, getattr(self, name)) <= 1:
                raise InputError(f"{owner}: {name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= float(self.overlap) <= 1:
            raise InputError(f"{owner}: overlap must be in [0, 1], got {self.overlap}")
        _non_negative(owner, "pass_overhead_s", self.pass_overhead_s)
        _non_negative(owner, "layer_overhead_s", self.layer_overhead_s)
        _non_negative(owner, "dot_overhead_s", self.dot_overhead_s)
        _non_negative(owner, "score_overhead_s", self.score_overhead_s)
        for name in STEP_FIELDS:
            _non_negative(owner, name, getattr(self, name))
        if isinstance(self.row_block, bool) or not isinstance(self.row_block, int) or self.row_block < 1:
            raise InputError(f"{owner}: row_block must be an integer >= 1, got {self.row_block!r}")

    # ----- rates ---------------------------------------------------------
    def peak(self, dtype: str) -> float:
        """Peak FLOP/s for weights in `dtype`; InputError if the device lacks it."""
        name = check_dtype(dtype)
        if name not in self.peak_flops:
            raise InputError(f"dtype: device {self.key} does not support {name} "
                             f"(supported: {', '.join(sorted(self.peak_flops))})")
        return self.peak_flops[name]

    def supports(self, dtype: str) -> bool:
        return check_dtype(dtype) in self.peak_flops

    def effective_flops(self, dtype: str) -> float:
        return self.peak(dtype) * self.compute_efficiency

    def effective_bandwidth(self) -> float:
        return self.memory_bandwidth * self.memory_efficiency

    # ----- derived devices -------------------------------------------------
    def scaled(self, factor: float) -> "Device":
        """Every rate times `factor`, every fixed time divided by it (capacity unchanged)."""
        f = _positive(f"device {self.key}", "scale factor", factor)
        return dataclasses.replace(
            self,
            peak_flops={k: v * f for k, v in self.peak_flops.items()},
            memory_bandwidth=self.memory_bandwidth * f,
            pass_overhead_s=self.pass_overhead_s / f,
            layer_overhead_s=self.layer_overhead_s / f,
            dot_overhead_s=self.dot_overhead_s / f,
            score_overhead_s=self.score_overhead_s / f,
            **{name: getattr(self, name) / f for name in STEP_FIELDS},
            tp_link=self.tp_link.scaled(f) if self.tp_link else None,
        )

    def with_params(self, **params) -> "Device":
        """A copy with some fields replaced; 'link_alpha_s'/'link_beta_s_per_byte' set the TP link."""
        link_params = {k[len("link_"):]: params.pop(k) for k in list(params) if k.startswith("link_")}
        link = self.tp_link
        if link_params:
            if link is None:
                raise InputError(f"device {self.key}: has no tensor-parallel link to set {sorted(link_params)} on")
            link = link.with_params(**link_params)
        return dataclasses.replace(self, tp_link=link, **params)

    # ----- memory fit ------------------------------------------------------
    def memory_required(self, shape, dtype: str = "fp16", tp: int = 1, context: int = 0, batch: int = 1) -> float:
        """Bytes one of `tp` devices holds: its weight shard plus its KV-cache shard."""
        tp = int(tp)
        if tp < 1:
            raise InputError(f"tp: must be >= 1, got {tp}")
        kv = shape.kv_bytes_per_token(dtype) * max(int(context), 0) * max(int(batch), 1)
        return (shape.weight_bytes(dtype) + kv) / tp

    def fits(self, shape, dtype: str = "fp16", tp: int = 1, context: int = 0, batch: int = 1) -> bool:
        """Whether weights + KV cache fit in the usable memory of each of `tp` devices."""
        self.peak(dtype)
        need = self.memory_required(shape, dtype, tp, context, batch)
        return need <= self.memory_capacity * self.memory_usable_fraction

    def check_fits(self, shape, dtype: str = "fp16", tp: int = 1, context: int = 0, batch: int = 1) -> None:
        """InputError naming the shortfall if the model does not fit."""
        if not self.fits(shape, dtype, tp, context, batch):
            need = self.memory_required(shape, dtype, tp, context, batch)
            have = self.memory_capacity * self.memory_usable_fraction
            raise InputError(f"model {shape.name} ({dtype}, tp={tp}, context={context}, batch={batch}) needs "
                             f"{need / 1e9:.1f} GB per device but device {self.key} has {have / 1e9:.1f} GB usable")

    def summary(self) -> dict:
        fields = ("key", "name", "kind", "peak_flops", "memory_bandwidth", "memory_capacity",
                  "compute_efficiency", "memory_efficiency", "overlap", "pass_overhead_s",
                  "layer_overhead_s", "dot_overhead_s", "score_overhead_s", *STEP_FIELDS,
                  "row_block", "memory_usable_fraction", "calibration")
        out = {name: getattr(self, name) for name in fields}
        out["peak_flops"] = dict(self.peak_flops)
        out["tp_link"] = self.tp_link.key if self.tp_link else None
        out["sources"] = dict(self.sources)
        return out
