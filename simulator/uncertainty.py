"""Error bars: how far a prediction moves over what the hardware models do not know.

Two sources of doubt, both read from `hwmodels`:

- **parameters marked unconfirmed**: every number of the devices and links in
  use whose source says "[unconfirmed]" or is an "assumption" (and is not 0).
  With no range given, its range is the stated prior ×[1/2, 2] around the
  catalog value (a factor of two either way: these are order-of-magnitude
  guesses, e.g. the Neural Engine's bandwidth or a Core ML call's overhead);
  `ranges` sets an absolute (low, high) for any parameter, confirmed or not.
  The TP all-reduce link of a device is its `link_alpha_s` /
  `link_beta_s_per_byte`.
- **calibration residuals**: a calibrated device's pass latencies are scaled
  by 1 ± its calibration's largest leave-one-out error.

The prediction is rerun with each parameter at its low and at its high end,
the others at their catalog values (one at a time: 2k + 1 runs for k
parameters). The interval of a metric is the nominal value minus/plus the
root-sum-square of the downward/upward moves, which treats the parameters as
independent; each parameter's own moves are reported too, so the largest
lever is visible.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import hwmodels
from hwmodels.fitted import load_calibration

from .config import SimConfig, default_link
from .costs import HardwareCosts
from .errors import InputError
from .simulate import simulate

PRIOR_FACTOR = 2.0


@dataclass(frozen=True)
class Uncertain:
    """One parameter with a range: `role` (target/draft/link), the catalog key, the field, low..high."""

    role: str
    key: str
    param: str
    nominal: float
    low: float
    high: float
    why: str

    @property
    def name(self) -> str:
        return f"{self.key}.{self.param}"


def _doubtful(source: str) -> bool:
    text = source.lower()
    return "[unconfirmed]" in text or text.startswith("assumption")


def _device_params(device, dtype: str) -> dict[str, tuple[float, str]]:
    """Parameter name -> (value, source) of a device, its TP link's parameters prefixed 'link_'."""
    params = {}
    for name, source in device.sources.items():
        if name.startswith("peak_flops."):
            if name != f"peak_flops.{dtype}":
                continue
            params[name] = (device.peak_flops[dtype], source)
        elif hasattr(device, name) and isinstance(getattr(device, name), (int, float)):
            params[name] = (float(getattr(device, name)), source)
    if device.tp_link is not None:
        for name, source in device.tp_link.sources.items():
            params[f"link_{name}"] = (float(getattr(device.tp_link, name)), source)
    return params


def _link_params(link) -> dict[str, tuple[float, str]]:
    return {name: (float(getattr(link, name)), source) for name, source in link.sources.items()}


def parameters(config: SimConfig, ranges: dict[str, tuple[float, float]] | None = None) -> list[Uncertain]:
    """The uncertain parameters of `config`'s devices and link, with their ranges (see the module docstring).

    `ranges` maps "KEY.PARAM" (e.g. "m2-ultra-ane.memory_bandwidth", "thunderbolt-5.alpha_s",
    "m2-ultra-gpu.link_alpha_s") to an absolute (low, high)."""
    ranges = dict(ranges or {})
    target, draft = hwmodels.get_device(config.target.device), hwmodels.get_device(config.draft.device)
    link = hwmodels.get_link(config.link or default_link(target, draft))
    found, seen = [], set()
    tables = (("target", target.key, _device_params(target, config.dtype)),
              ("draft", draft.key, _device_params(draft, config.draft_dtype or config.dtype)),
              ("link", link.key, _link_params(link)))
    for role, key, params in tables:
        for param, (value, source) in params.items():
            name = f"{key}.{param}"
            if name in seen:
                continue
            if name in ranges:
                low, high = ranges.pop(name)
                found.append(Uncertain(role, key, param, value, low, high, "range given"))
            elif _doubtful(source) and value > 0:
                found.append(Uncertain(role, key, param, value, value / PRIOR_FACTOR, value * PRIOR_FACTOR,
                                       f"prior x[1/{PRIOR_FACTOR:g}, {PRIOR_FACTOR:g}]: {source[:80]}"))
            else:
                continue
            seen.add(name)
    if ranges:
        raise InputError(f"--range: {', '.join(sorted(ranges))} is not a parameter of the devices or link "
                         f"simulated (e.g. {found[0].name if found else 'm2-ultra-ane.memory_bandwidth'})")
    return found


def _residual(device) -> float:
    """The largest leave-one-out error of the device's calibration, 0 without one."""
    name = getattr(device, "calibration", None)
    if not name:
        return 0.0
    try:
        fit = load_calibration(str(name))["fit"]
    except (hwmodels.InputError, OSError, KeyError):
        return 0.0
    return float(fit.get("max_abs_loo_error") or 0.0)


def _with(config: SimConfig, item: Uncertain, value: float) -> SimConfig:
    """`config` with one parameter set to `value`."""
    if item.role == "link":
        target, draft = hwmodels.get_device(config.target.device), hwmodels.get_device(config.draft.device)
        link = hwmodels.get_link(config.link or default_link(target, draft))
        return dataclasses.replace(config, link=link.with_params(**{item.param: value}))
    changed = config
    for role in ("target", "draft"):
        group = getattr(config, role)
        device = hwmodels.get_device(group.device)
        if device.key != item.key:
            continue
        if item.param.startswith("peak_flops."):
            dtype = item.param.split(".", 1)[1]
            device = dataclasses.replace(device, peak_flops={**device.peak_flops, dtype: value})
        else:
            device = device.with_params(**{item.param: value})
        if config.link is None:       # keep the default link of the named devices
            changed = dataclasses.replace(changed, link=default_link(
                hwmodels.get_device(config.target.device), hwmodels.get_device(config.draft.device)))
        changed = dataclasses.replace(changed, **{role: dataclasses.replace(group, device=device)})
    return changed


def _scaled(config: SimConfig, role: str, factor: float) -> SimConfig:
    """`config` with the `role` group's device `factor` times faster."""
    group = getattr(config, role)
    device = hwmodels.get_device(group.device)
    link = config.link or default_link(hwmodels.get_device(config.target.device),
                                       hwmodels.get_device(config.draft.device))
    return dataclasses.replace(config, link=link, **{role: dataclasses.replace(group, device=device.scaled(factor))})


def _metrics(results) -> dict[str, dict[str, float]]:
    return {name: {"speedup": r.speedup, "tokens_per_s": r.metrics()["tokens_per_s"], "seconds": r.seconds}
            for name, r in results.items()}


def predict_with_uncertainty(workload, config: SimConfig, methods=("ar", "sd", "mirror"),
                             ranges: dict[str, tuple[float, float]] | None = None) -> dict:
    """Nominal metrics per method, their intervals, and each parameter's low/high moves.

    Returns {"methods": {method: {metric: {"value", "low", "high"}}}, "parameters": [...]}.
    """
    for name, (low, high) in (ranges or {}).items():
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or low > high:
            raise InputError(f"--range: {name}={low:g}:{high:g} must be finite with 0 <= low <= high")
    items = parameters(config, ranges)
    nominal = _metrics(simulate(workload, config, methods, costs=HardwareCosts(config)))
    variants = [(item.name, item.why, item.low, item.high, _with(config, item, item.low), _with(config, item, item.high))
                for item in items]
    for role in ("target", "draft"):
        e = _residual(hwmodels.get_device(getattr(config, role).device))
        if e > 0:
            variants.append((f"{role} calibration", f"max leave-one-out error {e:.1%}", 1 - e, 1 + e,
                             _scaled(config, role, 1 / (1 - e)), _scaled(config, role, 1 / (1 + e))))
    moves = []
    for name, why, low, high, at_low, at_high in variants:
        lo = _metrics(simulate(workload, at_low, methods, costs=HardwareCosts(at_low)))
        hi = _metrics(simulate(workload, at_high, methods, costs=HardwareCosts(at_high)))
        moves.append({"parameter": name, "why": why, "low": low, "high": high,
                      "at_low": lo, "at_high": hi})
    out = {}
    for method, metrics in nominal.items():
        out[method] = {}
        for metric, value in metrics.items():
            down = up = 0.0
            for move in moves:
                for end in ("at_low", "at_high"):
                    delta = move[end][method][metric] - value
                    down, up = down + min(delta, 0.0) ** 2, up + max(delta, 0.0) ** 2
            out[method][metric] = {"value": value, "low": value - math.sqrt(down), "high": value + math.sqrt(up)}
    return {"methods": out, "parameters": moves}


def parse_range(text: str) -> tuple[str, tuple[float, float]]:
    """'KEY.PARAM=LOW:HIGH' -> ("KEY.PARAM", (low, high)); InputError on anything else."""
    name, _, bounds = text.partition("=")
    low_text, _, high_text = bounds.partition(":")
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        raise InputError(f"--range: expected KEY.PARAM=LOW:HIGH, got {text[:80]!r}") from None
    if "." not in name:
        raise InputError(f"--range: expected KEY.PARAM=LOW:HIGH, got {text[:80]!r}")
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or low > high:
        raise InputError(f"--range: {name}={low_text}:{high_text} must be finite with 0 <= low <= high")
    return name, (low, high)
