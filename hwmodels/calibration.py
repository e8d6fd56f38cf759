"""Calibration: fit device efficiencies and overheads to measured pass times.

A measurement table is a CSV with the columns device, model, n, L, B, G,
seconds (one forward pass of n new tokens per sequence over a KV context of L,
batch B, tensor-parallel degree G) and optional dtype, layers ("a:b"),
classifier (0/1) and sharding columns; any other column (source, note) is kept
but ignored. Fitting minimises the relative error of the predicted times with
scipy's least squares, over the parameters named in `free` (one value per
device in the table) and `shared` (one value for all of them). Leave-one-out
refits without each point in turn and predicts it.

Shipped calibrations live in data/calibrations/NAME.json: the fitted parameters
per device, the settings of the fit, its errors and the source of the data.
`get_device("DEVICE@NAME")` applies one; a device entry's `calibration` field
names its default.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
from dataclasses import dataclass


import numpy as np
from scipy.optimize import least_squares

from .errors import InputError
from .paths import DATA_DIR
from pathlib import Path

REQUIRED_COLUMNS = ("device", "model", "n", "L", "B", "G", "seconds")

#: Parameters a calibration may fit, with their bounds.
PARAM_BOUNDS = {
    "compute_efficiency": (1e-4, 1.0),
    "memory_efficiency": (1e-3, 1.0),
    "overlap": (0.0, 1.0),
    "pass_overhead_s": (0.0, 10.0),
    "layer_overhead_s": (0.0, 1.0),
    "dot_overhead_s": (0.0, 1e-3),
    "score_overhead_s": (0.0, 1e-3),
    "link_alpha_s": (0.0, 0.1),
    "link_beta_s_per_byte": (1e-14, 1e-6),
}

#: Smallest scale of each parameter's prior (a fitted value's distance from its
#: starting value is measured in units of max(|start|, this)).
PRIOR_FLOOR = {
    "compute_efficiency": 0.1, "memory_efficiency": 0.1, "overlap": 0.1, "pass_overhead_s": 1e-4,
    "layer_overhead_s": 1e-5, "dot_overhead_s": 1e-9, "score_overhead_s": 1e-9, "link_alpha_s": 1e-6, "link_beta_s_per_byte": 1e-13,
}


# ----- measurement tables ------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    device: str
    model: str
    n: int
    L: int
    B: int
    G: int
    seconds: float
    dtype: str = "fp16"
    layers: tuple | None = None
    classifier: bool | None = None
    sharding: str = "megatron"


def _number(path, row_no: int, column: str, text: str, kind=float):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InputError(f"{path}: row {row_no}: column {column} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{path}: row {row_no}: column {column} is not finite: {text!r}")
    if kind is int:
        if value != int(value):
            raise InputError(f"{path}: row {row_no}: column {column} must be an integer, got {text!r}")
        return int(value)
    return value


def _parse_row(path, row_no: int, row: dict) -> Measurement:
    for column in REQUIRED_COLUMNS:
        if not (row.get(column) or "").strip():
            raise InputError(f"{path}: row {row_no}: column {column} is empty")
    n, L, B, G = (_number(path, row_no, c, row[c], int) for c in ("n", "L", "B", "G"))
    seconds = _number(path, row_no, "seconds", row["seconds"])
    if seconds <= 0 or n < 1 or L < 0 or B < 1 or G < 1:
        raise InputError(f"{path}: row {row_no}: need seconds > 0, n >= 1, L >= 0, B >= 1, G >= 1")
    layers = None
    if (row.get("layers") or "").strip():
        a, _, b = row["layers"].partition(":")
        layers = (_number(path, row_no, "layers", a, int), _number(path, row_no, "layers", b, int))
    classifier = None
    if (row.get("classifier") or "").strip():
        classifier = bool(_number(path, row_no, "classifier", row["classifier"], int))
    return Measurement(device=row["device"].strip(), model=row["model"].strip(), n=n, L=L, B=B, G=G,
                       seconds=seconds, dtype=(row.get("dtype") or "fp16").strip(), layers=layers,
                       classifier=classifier, sharding=(row.get("sharding") or "megatron").strip())


def read_measurements(path) -> list[Measurement]:
    """Rows of a measurement CSV; InputError naming the file and what is wrong."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read measurement table ({exc.strerror or exc})") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} "
                         f"(need {', '.join(REQUIRED_COLUMNS)})")
    rows = [_parse_row(path, i, row) for i, row in enumerate(reader, start=2)]
    if not rows:
        raise InputError(f"{path}: no measurements")
    return rows


# ----- fitting ------------------------------------------------------------------
def _check_params(names, option: str) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in PARAM_BOUNDS]
    if unknown:
        raise InputError(f"{option}: unknown parameter(s) {', '.join(unknown)} "
                         f"(fittable: {', '.join(PARAM_BOUNDS)})")
    return names


def _current(device, name: str) -> float:
    if name.startswith("link_"):
        if device.tp_link is None:
            raise InputError(f"calibration: device {device.key} has no link for {name}")
        return getattr(device.tp_link, name[len("link_"):])
    return getattr(device, name)


class _Problem:
    """Precomputed work of every measurement, stacked per device, so one evaluation is a few numpy ops."""

    def __init__(self, rows, devices):
        from .latency import Work, pass_work
        from .models import get_model
        self.rows = rows
        self.devices = devices  # key -> base Device
        self.device_of = [r.device for r in rows]
        self.measured = np.array([r.seconds for r in rows])
        works = [pass_work(get_model(r.model), r.n, r.L, batch=r.B, tp=r.G, dtype=r.dtype,
                           layers=r.layers, classifier=r.classifier, sharding=r.sharding) for r in rows]
        self.groups = {}  # device key -> (row indices, stacked Work, peak FLOP/s per row)
        for key in devices:
            idx = np.array([i for i, d in enumerate(self.device_of) if d == key])
            stacked = Work(**{f: np.array([getattr(works[i], f) for i in idx], dtype=float)
                              for f in Work.__dataclass_fields__})
            peaks = np.array([devices[key].peak(rows[i].dtype) for i in idx])
            self.groups[key] = (idx, stacked, peaks)

    def predict(self, params_by_device, indices) -> np.ndarray:
        from .latency import time_parts
        out = np.full(len(self.rows), np.nan)
        for key, params in params_by_device.items():
            idx, work, peaks = self.groups[key]
            device = self.devices[key].with_params(**params)
            parts = time_parts(work, device, peaks, device.tp_link)
            out[idx] = parts["compute"] + parts["memory"] + parts["overhead"] + parts["communication"]
        return out[np.asarray(indices)]


def _unpack(x, keys, free, shared):
    values = dict(zip(shared, x[:len(shared)]))
    out, pos = {}, len(shared)
    for key in keys:
        out[key] = {**values, **dict(zip(free, x[pos:pos + len(free)]))}
        pos += len(free)
    return out


def _fit(problem: _Problem, indices, free, shared, prior_weight: float) -> dict:
    keys = sorted({problem.device_of[i] for i in indices})
    names = list(shared) + [name for _ in keys for name in free]
    owners = [keys[0]] * len(shared) + [k for k in keys for _ in free]
    lower = np.array([PARAM_BOUNDS[n][0] for n in names])
    upper = np.array([PARAM_BOUNDS[n][1] for n in names])
    x0 = np.array([_current(problem.devices[k], n) for n, k in zip(names, owners)], dtype=float)
    x0 = np.clip(x0, lower + 1e-12 * (upper - lower), upper - 1e-12 * (upper - lower))
    measured = problem.measured[indices]
    scale = np.array([max(abs(v), PRIOR_FLOOR[n]) for v, n in zip(x0, names)])

    def residuals(x):
        fit = problem.predict(_unpack(x, keys, free, shared), indices) / measured - 1.0
        return np.concatenate([fit, prior_weight * (x - x0) / scale])

    if names:
        x = least_squares(residuals, x0, bounds=(lower, upper), x_scale="jac", method="trf").x
    else:
        x = x0
    return _unpack(x, keys, free, shared)


@dataclass
class CalibrationResult:
    params: dict          # device key -> {parameter: value}
    rows: list
    predicted: np.ndarray
    loo_predicted: np.ndarray
    free: list
    shared: list

    @property
    def errors(self) -> np.ndarray:
        return self.predicted / np.array([r.seconds for r in self.rows]) - 1.0

    @property
    def loo_errors(self) -> np.ndarray:
        return self.loo_predicted / np.array([r.seconds for r in self.rows]) - 1.0

    def table(self) -> list[dict]:
        return [{"device": r.device, "model": r.model, "n": r.n, "L": r.L, "B": r.B, "G": r.G,
                 "measured_s": r.seconds, "fitted_s": float(p), "error": float(e),
                 "loo_s": float(q), "loo_error": float(le)}
                for r, p, e, q, le in zip(self.rows, self.predicted, self.errors,
                                          self.loo_predicted, self.loo_errors)]

    def summary(self) -> dict:
        """Max and mean |relative error| of the fit and of leave-one-out (None where not computed)."""
        err, loo = np.abs(self.errors), np.abs(self.loo_errors)
        loo = loo[~np.isnan(loo)]
        return {"points": len(self.rows), "free": self.free, "shared": self.shared,
                "max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
                "max_abs_loo_error": float(loo.max()) if loo.size else None,
                "mean_abs_loo_error": float(loo.mean()) if loo.size else None}


def calibrate(rows, free=("memory_efficiency", "pass_overhead_s"), shared=(), base="datasheet",
              leave_one_out: bool = True, prior_weight: float = 0.01, devices=None) -> CalibrationResult:
    """Fit `free` (per device) and `shared` parameters; leave-one-out refits per point.

    base="datasheet" starts from the uncalibrated catalog entries (literature
    defaults); a calibration name starts from that calibration instead.
    prior_weight adds a weak pull of every fitted parameter towards its
    starting value: a parameter the data do not determine (for instance the
    link's beta when the only multi-GPU prefill is left out) stays at its
    catalog value instead of drifting to a bound. Departing by one scale
    (max(|start|, PRIOR_FLOOR)) costs as much as a relative error of
    prior_weight at one point. `devices` ({key: Device}) gives the starting
    device for some keys explicitly (e.g. a CPU with pinned micro-benchmark rates).
    """
    from .devices import get_device
    free, shared = _check_params(free, "free"), _check_params(shared, "shared")
    if set(free) & set(shared):
        raise InputError(f"shared: {sorted(set(free) & set(shared))} cannot be both free and shared")
    given = dict(devices or {})
    devices = {}
    canonical = {}  # the spelling in the table -> catalog key
    for r in rows:
        if r.device not in canonical:
            device = given.get(r.device) or get_device(f"{r.device}@{base}" if base else r.device)
            canonical[r.device] = device.key
            devices.setdefault(device.key, device)
    rows = [dataclasses.replace(r, device=canonical[r.device]) for r in rows]
    problem = _Problem(rows, devices)
    everything = list(range(len(rows)))
    params = _fit(problem, everything, free, shared, prior_weight)
    predicted = problem.predict(params, everything)
    loo = np.full(len(rows), np.nan)
    if leave_one_out and len(rows) > 1:
        for i in everything:
            rest = [j for j in everything if j != i]
            if problem.device_of[i] not in {problem.device_of[j] for j in rest}:
                continue  # no other point for this device: nothing to predict it from
            loo[i] = problem.predict(_fit(problem, rest, free, shared, prior_weight), [i])[0]
    return CalibrationResult(params={k: {n: float(v) for n, v in p.items()} for k, p in params.items()},
                             rows=rows, predicted=predicted, loo_predicted=loo, free=free, shared=shared)


# ----- shipped calibrations -------------------------------------------------------
def _calibration_dir():
    return DATA_DIR / "calibrations"


def measurements_path(name: str):
    """Path of a shipped measurement CSV (data/measurements/NAME.csv)."""
    return DATA_DIR / "measurements" / f"{name}.csv"


@functools.cache
def shipped_calibrations() -> list[str]:
    return sorted(p.name[:-5] for p in _calibration_dir().iterdir() if p.name.endswith(".json"))


@functools.cache
def load_calibration(name: str) -> dict:
    """A shipped calibration: {'device', 'params', 'source', ...}."""
    if name not in shipped_calibrations():
        raise InputError(f"calibration: unknown {name!r} (known: {', '.join(shipped_calibrations())})")
    return json.loads(_calibration_dir().joinpath(f"{name}.json").read_text())


def load_calibration_file(path, device_key: str) -> dict:
    """The parameters for `device_key` from a file written by `mirrorstream hw calibrate --output`."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        params = content["params"][device_key]
    except OSError as exc:
        raise InputError(f"{path}: cannot read calibration ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: not a calibration with parameters for device {device_key}") from None
    _check_params(params, str(path))
    return {"params": params, "source": f"fitted by mirrorstream hw calibrate ({path})"}


def write_calibration_file(path, result: "CalibrationResult", csv_path) -> None:
    """Save a fit so that get_device('DEVICE@PATH') can use it."""
    content = {"params": result.params, "free": result.free, "shared": result.shared,
               "measurements": str(csv_path), "summary": result.summary(), "points": result.table()}
    try:
        Path(path).write_text(json.dumps(content, indent=2) + "\n")
    except OSError as exc:
        raise InputError(f"--output: cannot write {path} ({exc.strerror or exc})") from None
