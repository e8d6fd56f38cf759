"""Devices and links: the catalogs (with the source of every number) and lookup.

A `Device` holds datasheet rates (peak FLOP/s per dtype, memory bandwidth and
capacity), efficiency factors, fixed overheads, and the link its tensor-parallel
group talks over. A `Link` is α (seconds per hop) and β (seconds per byte).

Scaling: `device.scaled(f)` multiplies every rate (FLOP/s, bytes/s, link
bandwidth) by f and divides every fixed time (overheads, link α) by f, so every
latency computed on it is exactly the original divided by f.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from dataclasses import dataclass, field

from .dtypes import check_dtype
from .errors import InputError
from .paths import DATA_DIR
from .names import build_index, normalise, resolve

RAW_SUFFIX = "datasheet"  # "h100-sxm@datasheet": the entry without its calibration


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
                  "layer_overhead_s", "dot_overhead_s", "score_overhead_s", "memory_usable_fraction", "calibration")
        out = {name: getattr(self, name) for name in fields}
        out["peak_flops"] = dict(self.peak_flops)
        out["tp_link"] = self.tp_link.key if self.tp_link else None
        out["sources"] = dict(self.sources)
        return out


# ----- catalog loading ------------------------------------------------------
def _data(name: str) -> dict:
    return json.loads((DATA_DIR / name).read_text())


def _value(entry, default_source: str = "") -> tuple[float, str]:
    """A catalog number: [value, source], {"value": v, "source": s}, or a bare number."""
    if isinstance(entry, dict):
        return float(entry["value"]), str(entry["source"])
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        return float(entry), default_source
    value, source = entry
    return float(value), str(source)


@functools.cache
def _links() -> dict[str, Link]:
    links = {}
    for key, entry in _data("links.json")["links"].items():
        alpha, alpha_src = _value(entry["alpha_s"])
        bandwidth, bw_src = _value(entry["bandwidth_bytes_per_s"])
        links[key] = Link(key=key, name=entry["name"], alpha_s=alpha, beta_s_per_byte=1.0 / bandwidth,
                          sources={"alpha_s": alpha_src, "beta_s_per_byte": f"1 / bandwidth; {bw_src}"},
                          aliases=tuple(entry.get("aliases", ())))
    return links


@functools.cache
def _link_index() -> dict[str, str]:
    return build_index({key: list(link.aliases) for key, link in _links().items()})


def known_links() -> list[str]:
    return sorted(_links())


def get_link(name_or_link) -> Link:
    """A link by name or alias (case-insensitive); a Link passes through."""
    if isinstance(name_or_link, Link):
        return name_or_link
    return _links()[resolve(name_or_link, _link_index(), "link", "link")]


def link_latency(link_or_name, nbytes: float) -> float:
    """Seconds to send `nbytes` over one hop: alpha + beta * nbytes."""
    return get_link(link_or_name).time(nbytes)


_SCALAR_FIELDS = ("compute_efficiency", "memory_efficiency", "overlap", "pass_overhead_s",
                  "layer_overhead_s", "dot_overhead_s", "score_overhead_s", "memory_usable_fraction")


def _datasheet_device(key: str, entry: dict, defaults: dict, default_source: str = "") -> Device:
    sources = {}
    peak = {}
    for dtype, item in entry["peak_flops"].items():
        peak[check_dtype(dtype, f"device {key}: peak_flops")], sources[f"peak_flops.{dtype}"] = \
            _value(item, default_source)
    scalars = {}
    for name in ("memory_bandwidth", "memory_capacity", *_SCALAR_FIELDS):
        scalars[name], sources[name] = _value(entry.get(name, defaults.get(name)), default_source)
    link = get_link(entry["tp_link"]) if entry.get("tp_link") else None
    return Device(key=key, name=entry.get("name", key), kind=entry.get("kind", "gpu"), peak_flops=peak,
                  tp_link=link, sources=sources, aliases=tuple(entry.get("aliases", ())), **scalars)


def load_device_file(path) -> Device:
    """A device described in a JSON file, in the catalog's format (bare numbers allowed).

    Needs peak_flops ({dtype: FLOP/s}), memory_bandwidth and memory_capacity;
    every other field falls back to the catalog defaults. The key is the file
    name without '.json'.
    """
    path = Path(path)
    try:
        entry = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read device file ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(entry, dict):
        raise InputError(f"{path}: a device file holds one JSON object")
    missing = [f for f in ("peak_flops", "memory_bandwidth", "memory_capacity") if f not in entry]
    if missing:
        raise InputError(f"{path}: device file lacks {', '.join(missing)}")
    try:
        return _datasheet_device(path.stem, entry, _data("devices.json")["defaults"], f"device file {path}")
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        if isinstance(exc, InputError):
            raise InputError(f"{path}: {exc}") from None
        raise InputError(f"{path}: malformed device entry ({exc})") from None


@functools.cache
def _catalog() -> tuple[dict[str, Device], dict[str, str]]:
    """(datasheet devices, default calibration name per device)."""
    data = _data("devices.json")
    devices, calibrations = {}, {}
    for key, entry in data["devices"].items():
        devices[key] = _datasheet_device(key, entry, data["defaults"])
        if entry.get("calibration"):
            calibrations[key] = entry["calibration"]
    return devices, calibrations


@functools.cache
def _device_index() -> dict[str, str]:
    devices, _ = _catalog()
    entries = {key: list(dev.aliases) for key, dev in devices.items()}
    entries["cpu"] = ["this-cpu", "host-cpu", "local-cpu", "host"]
    return build_index(entries)


def known_devices() -> list[str]:
    """Catalog keys, plus 'cpu' (this machine, measured on first use)."""
    return sorted([*_catalog()[0], "cpu"])


def known_calibrations() -> list[str]:
    from .calibration import shipped_calibrations
    return shipped_calibrations()


def apply_calibration(device: Device, calibration_name: str) -> Device:
    """The device with the fitted parameters of a shipped calibration (or of a calibration file)."""
    from .calibration import load_calibration, load_calibration_file
    if calibration_name.endswith(".json"):
        cal = load_calibration_file(calibration_name, device.key)
    else:
        cal = load_calibration(calibration_name)
    params = dict(cal["params"])
    sources = dict(device.sources)
    for name in params:
        sources[name] = f"calibration {calibration_name}: {cal['source']}"
    # A measured device (the CPU) is calibrated against the rates its micro-benchmark
    # gave when the fit was made; pinning them keeps the calibrated device independent
    # of the noise of later micro-benchmarks on a shared machine.
    rates = cal.get("rates", {})
    if "peak_flops" in rates:
        params["peak_flops"] = {**device.peak_flops, **rates["peak_flops"]}
        for dtype in rates["peak_flops"]:
            sources[f"peak_flops.{dtype}"] = f"calibration {calibration_name}: micro-benchmark at fit time"
    if "memory_bandwidth" in rates:
        params["memory_bandwidth"] = rates["memory_bandwidth"]
        sources["memory_bandwidth"] = f"calibration {calibration_name}: micro-benchmark at fit time"
    calibrated = device.with_params(calibration=calibration_name, **params)
    return dataclasses.replace(calibrated, sources=sources)


def get_device(name_or_device) -> Device:
    """A device by name or alias (case-insensitive); a Device passes through.

    'NAME@CALIBRATION' applies a shipped calibration, 'NAME@FILE.json' one
    written by `mirrorstream hw calibrate --output`; 'NAME@datasheet' is the
    entry with its literature defaults and no calibration. A NAME ending in
    '.json' is a device file (see `load_device_file`). 'cpu' is this
    machine, measured by a short micro-benchmark on first use.
    """
    if isinstance(name_or_device, Device):
        return name_or_device
    text = str(name_or_device)
    base_name, _, cal_name = text.partition("@")
    if base_name.endswith(".json"):
        device = load_device_file(base_name)
        return apply_calibration(device, cal_name) if cal_name and cal_name != RAW_SUFFIX else device
    key = resolve(base_name, _device_index(), "device", "device")
    if key == "cpu":
        from .cpu import CPU_CALIBRATION, cpu_device
        device = cpu_device()
        default_cal = CPU_CALIBRATION if CPU_CALIBRATION in known_calibrations() else None
    else:
        devices, calibrations = _catalog()
        device, default_cal = devices[key], calibrations.get(key)
    chosen = (cal_name if cal_name.endswith(".json") else normalise(cal_name)) if cal_name else default_cal
    if chosen in (None, RAW_SUFFIX):
        return device
    if not chosen.endswith(".json") and chosen not in known_calibrations():
        raise InputError(f"device: unknown calibration {cal_name!r} in {text!r} "
                         f"(known: {', '.join([RAW_SUFFIX, *known_calibrations()])})")
    return apply_calibration(device, chosen)
