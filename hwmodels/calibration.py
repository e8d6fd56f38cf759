"""Calibration: fit device efficiencies and overheads to measured pass times.

A measurement table is a CSV with the columns device, model, n, L, B, G,
seconds (one forward pass of n new tokens per sequence over a KV context of L,
batch B, tensor-parallel degree G) and optional dtype, layers ("a:b"),
classifier (0/1) and sharding columns; any other column (source, note) is kept
but ignored. Fitting minimises the relative error of the predicted times with
scipy's least squares, over the parameters named in `free` (one value per
device in the table) and `shared` (one value for all of them). Leave-one-out
refits without each point in turn and predicts it.

A row may instead time one step of a speculative method (hwmodels.steps):
columns method (ar, lookup, medusa, eagle, hydra), draft_rows ("4;4;8", the
rows of each draft pass), heads (Medusa) and, in place of seconds,
ratio_to_ar (the step's time over an autoregressive step of the same model),
the form in which papers report step overheads (mean accepted tokens per
step / speedup). A fit is refused (InputError) when it has no more points than
free parameters, or when it pins an efficiency at 1 that would go beyond
1 + PHYSICAL_TOLERANCE if allowed.

Shipped calibrations live in data/calibrations/NAME.json (written by
experiments/calibrate_gpus.py and calibrate_cpu.py; loaded by `fitted`).
`get_device("DEVICE@NAME")` applies one; a device entry's `calibration` field
names its default.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from .devices import get_device
from .errors import InputError
from .fitted import check_params
from .hardware import PARAM_BOUNDS
from .latency import Work, pass_work, time_parts
from .models import get_model
from .paths import DATA_DIR
from .steps import step_seconds

REQUIRED_COLUMNS = ("device", "model", "n", "L", "B", "G", "seconds")

#: Methods a measurement table may time a step of (sd would need its draft model too).
TABLE_METHODS = ("ar", "lookup", "medusa", "eagle", "hydra")

#: Parameters that are fractions of a datasheet rate: a fit that pins one at 1
#: wants the device to beat its datasheet, which no measurement can justify.
EFFICIENCIES = ("compute_efficiency", "memory_efficiency")
#: LOSSES: "linear" is plain least squares of the relative errors; "soft_l1" (scipy's) counts
#: a relative error beyond ROBUST_SCALE about linearly, not squared, so that a few points a
#: shared host's other jobs slowed (tens of %) do not pull the fit off the rest.
LOSSES = ("linear", "soft_l1")
ROBUST_SCALE = 0.05

#: How far past 1 an efficiency may want to go (the rounding of published figures) before a fit is refused.
PHYSICAL_TOLERANCE = 0.02

#: Largest values a table may hold: a forward pass longer than an hour, or
#: shapes beyond these, are typing errors, not measurements.
LIMITS = {"seconds": 3600.0, "ratio_to_ar": 1000.0, "n": 10**7, "draft_rows": 10**7, "L": 10**8, "B": 10**6, "G": 4096}

#: A table larger than this is not a measurement table.
MAX_TABLE_BYTES = 16 * 2**20

#: Smallest scale of each parameter's prior (a fitted value's distance from its
#: starting value is measured in units of max(|start|, this)).
PRIOR_FLOOR = {
    "compute_efficiency": 0.1, "memory_efficiency": 0.1, "overlap": 0.1, "pass_overhead_s": 1e-4,
    "layer_overhead_s": 1e-5, "dot_overhead_s": 1e-9, "score_overhead_s": 1e-9, "link_alpha_s": 1e-6, "link_beta_s_per_byte": 1e-13,
    "step_overhead_s": 1e-4, "tree_row_overhead_s": 1e-6, "draft_pass_overhead_s": 1e-4,
}


def measurements_path(name: str):
    """Path of a shipped measurement CSV (data/measurements/NAME.csv)."""
    return DATA_DIR / "measurements" / f"{name}.csv"


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
    method: str = ""             # "": one forward pass; else one step of this method (hwmodels.steps)
    draft_rows: tuple = ()       # a step's draft passes, rows each
    heads: int = 4               # medusa: heads per step
    ratio: bool = False          # `seconds` holds T(step) / T(autoregressive step), not seconds
    where: str = field(default="", compare=False)  # "FILE: line N", for error messages


def _number(where: str, column: str, text: str, kind=float):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InputError(f"{where}: column {column} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: column {column} is not finite: {text!r}")
    if column in LIMITS and abs(value) > LIMITS[column]:
        raise InputError(f"{where}: column {column} = {text} is beyond {LIMITS[column]:g} (not a plausible measurement)")
    if kind is int:
        if value != int(value):
            raise InputError(f"{where}: column {column} must be an integer, got {text!r}")
        return int(value)
    return value


def _parse_step(where: str, row: dict) -> dict:
    """The optional step columns: method, draft_rows ("4;4;8"), heads, ratio_to_ar."""
    method = (row.get("method") or "").strip()
    if not method:
        return {}
    if method not in TABLE_METHODS:
        raise InputError(f"{where}: column method: unknown {method!r} (known: {', '.join(TABLE_METHODS)})")
    text = (row.get("draft_rows") or "").strip()
    draft_rows = tuple(_number(where, "draft_rows", t, int) for t in text.split(";")) if text else ()
    if any(r < 1 for r in draft_rows) or len(draft_rows) > 64:
        raise InputError(f"{where}: column draft_rows: need at most 64 passes of >= 1 row each, got {text!r}")
    heads = _number(where, "heads", row["heads"], int) if (row.get("heads") or "").strip() else 4
    if not 1 <= heads <= 64:
        raise InputError(f"{where}: column heads: need 1..64, got {heads}")
    return {"method": method, "draft_rows": draft_rows, "heads": heads}


def _parse_row(where: str, row: dict) -> Measurement:
    ratio_text = (row.get("ratio_to_ar") or "").strip()
    for column in REQUIRED_COLUMNS:
        if column == "seconds" and ratio_text:
            continue
        if not (row.get(column) or "").strip():
            raise InputError(f"{where}: column {column} is empty")
    n, L, B, G = (_number(where, c, row[c], int) for c in ("n", "L", "B", "G"))
    step = _parse_step(where, row)
    if ratio_text and not step:
        raise InputError(f"{where}: column ratio_to_ar needs a method (a step to compare with autoregressive)")
    seconds = _number(where, "ratio_to_ar" if ratio_text else "seconds", ratio_text or row["seconds"])
    if seconds <= 0 or n < 1 or L < 0 or B < 1 or G < 1:
        raise InputError(f"{where}: need seconds > 0, n >= 1, L >= 0, B >= 1, G >= 1")
    layers = None
    if (row.get("layers") or "").strip():
        a, _, b = row["layers"].partition(":")
        layers = (_number(where, "layers", a, int), _number(where, "layers", b, int))
    classifier = None
    if (row.get("classifier") or "").strip():
        classifier = bool(_number(where, "classifier", row["classifier"], int))
    return Measurement(device=row["device"].strip(), model=row["model"].strip(), n=n, L=L, B=B, G=G,
                       seconds=seconds, dtype=(row.get("dtype") or "fp16").strip(), layers=layers,
                       classifier=classifier, sharding=(row.get("sharding") or "megatron").strip(),
                       ratio=bool(ratio_text), where=where, **step)


def _table_text(path: Path) -> str:
    """The file as text (UTF-8, a byte-order mark allowed); InputError naming the file and line."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{path}: not a regular file (a measurement table is a CSV file)")
        if info.st_size > MAX_TABLE_BYTES:
            raise InputError(f"{path}: larger than {MAX_TABLE_BYTES // 2**20} MiB; not a measurement table")
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read measurement table ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: not UTF-8 text (byte {exc.start})") from None


def read_measurements(path) -> list[Measurement]:
    """Rows of a measurement CSV; InputError naming the file (and line) and what is wrong."""
    path = Path(path)
    numbered = [(no, line) for no, line in enumerate(_table_text(path).splitlines(), start=1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise InputError(f"{path}: no header line (need columns {', '.join(REQUIRED_COLUMNS)})")
    try:
        header = [name.strip() for name in next(csv.reader([numbered[0][1]]))]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise InputError(f"{path}: line {numbered[0][0]}: missing column(s) {', '.join(missing)} "
                             f"(need {', '.join(REQUIRED_COLUMNS)})")
        rows = []
        for no, line in numbered[1:]:
            cells = next(csv.reader([line]))
            if len(cells) > len(header):
                raise InputError(f"{path}: line {no}: {len(cells)} cells for {len(header)} columns")
            rows.append(_parse_row(f"{path}: line {no}", dict(zip(header, cells))))
    except csv.Error as exc:
        raise InputError(f"{path}: not a CSV table ({exc})") from None
    if not rows:
        raise InputError(f"{path}: no measurements")
    return rows


# ----- fitting ------------------------------------------------------------------
def _current(device, name: str) -> float:
    if name.startswith("link_"):
        if device.tp_link is None:
            raise InputError(f"calibration: device {device.key} has no link for {name}")
        return getattr(device.tp_link, name[len("link_"):])
    return getattr(device, name)


class _Problem:
    """Precomputed work of every measurement, stacked per device, so one evaluation is a few numpy ops."""

    def __init__(self, rows, devices):
        self.rows = rows
        self.devices = devices  # key -> base Device
        self.device_of = [r.device for r in rows]
        self.measured = np.array([r.seconds for r in rows])
        self.steps = [i for i, r in enumerate(rows) if r.method]   # priced one by one by hwmodels.steps
        for i in self.steps:
            try:
                _step_value(rows[i], devices[rows[i].device])
            except InputError as exc:
                raise InputError(f"{rows[i].where or 'calibration'}: {exc}") from None
        works = {i: _row_work(r, devices[r.device].row_block) for i, r in enumerate(rows) if not r.method}
        self.groups = {}  # device key -> (forward-pass row indices, stacked Work, peak FLOP/s per row)
        for key in devices:
            idx = np.array([i for i, d in enumerate(self.device_of) if d == key and i in works], dtype=int)
            if not idx.size:
                continue
            stacked = Work(**{f: np.array([getattr(works[i], f) for i in idx], dtype=float)
                              for f in Work.__dataclass_fields__})
            peaks = np.array([_row_peak(devices[key], rows[i]) for i in idx], dtype=float)
            self.groups[key] = (idx, stacked, peaks)

    def predict(self, params_by_device, indices) -> np.ndarray:
        """Predicted seconds; an efficiency above 1 (only in the check for unphysical fits) scales the rate."""
        out = np.full(len(self.rows), np.nan)
        devices = {}
        for key, params in params_by_device.items():
            params = dict(params)
            compute_gain = max(params.get("compute_efficiency", 0.0), 1.0)
            memory_gain = max(params.get("memory_efficiency", 0.0), 1.0)
            for name in EFFICIENCIES:
                if name in params:
                    params[name] = min(params[name], 1.0)
            device = self.devices[key].with_params(**params)
            if memory_gain > 1.0:
                device = device.with_params(memory_bandwidth=device.memory_bandwidth * memory_gain)
            if key in self.groups:
                idx, work, peaks = self.groups[key]
                parts = time_parts(work, device, peaks * compute_gain, device.tp_link)
                out[idx] = parts["compute"] + parts["memory"] + parts["overhead"] + parts["communication"]
            if compute_gain > 1.0:   # the forward rows took it through `peaks`; the step rows read the device
                device = device.with_params(peak_flops={k: v * compute_gain for k, v in device.peak_flops.items()})
            devices[key] = device
        for i in self.steps:
            if self.device_of[i] in devices:
                out[i] = _step_value(self.rows[i], devices[self.device_of[i]])
        return out[np.asarray(indices)]


def _row_work(row: Measurement, row_block: int) -> Work:
    try:
        return pass_work(get_model(row.model), row.n, row.L, batch=row.B, tp=row.G, dtype=row.dtype,
                         layers=row.layers, classifier=row.classifier, sharding=row.sharding,
                         row_block=row_block)
    except InputError as exc:
        raise InputError(f"{row.where or 'calibration'}: {exc}") from None


def _step_value(row: Measurement, device) -> float:
    """A step row's prediction: seconds of the step, or its ratio to an autoregressive step."""
    kwargs = dict(draft_rows=row.draft_rows, heads=row.heads, batch=row.B, tp=row.G, dtype=row.dtype)
    seconds = step_seconds(row.method, row.model, device, row.n, row.L, **kwargs)
    return seconds / step_seconds("ar", row.model, device, 1, row.L, **kwargs) if row.ratio else seconds


def _row_peak(device, row: Measurement) -> float:
    try:
        return device.peak(row.dtype)
    except InputError as exc:
        raise InputError(f"{row.where or 'calibration'}: {exc}") from None


def _unpack(x, keys, free, shared):
    values = dict(zip(shared, x[:len(shared)]))
    out, pos = {}, len(shared)
    for key in keys:
        out[key] = {**values, **dict(zip(free, x[pos:pos + len(free)]))}
        pos += len(free)
    return out


def _fit(problem: _Problem, indices, free, shared, prior_weight: float,
         efficiency_cap: float = 1.0, loss: str = "linear") -> tuple[dict, list]:
    """(parameters per device, [(device, name)] of efficiencies the fit pins at their upper bound).

    efficiency_cap > 1 lets the efficiencies exceed 1, to ask how far the data
    would push them (see `_check_physical`)."""
    keys = sorted({problem.device_of[i] for i in indices})
    names = list(shared) + [name for _ in keys for name in free]
    owners = [keys[0]] * len(shared) + [k for k in keys for _ in free]
    lower = np.array([PARAM_BOUNDS[n][0] for n in names])
    upper = np.array([efficiency_cap if n in EFFICIENCIES else PARAM_BOUNDS[n][1] for n in names])
    x0 = np.array([_current(problem.devices[k], n) for n, k in zip(names, owners)], dtype=float)
    x0 = np.clip(x0, lower + 1e-12 * (upper - lower), upper - 1e-12 * (upper - lower))
    measured = problem.measured[indices]
    scale = np.array([max(abs(v), PRIOR_FLOOR[n]) for v, n in zip(x0, names)])

    def residuals(x):
        fit = problem.predict(_unpack(x, keys, free, shared), indices) / measured - 1.0
        return np.concatenate([fit, prior_weight * (x - x0) / scale])

    if not names:
        return _unpack(x0, keys, free, shared), []
    solution = least_squares(residuals, x0, bounds=(lower, upper), x_scale="jac", method="trf", loss=loss,
                             f_scale=ROBUST_SCALE)
    pinned = [("all devices" if i < len(shared) else owner, name)
              for i, (name, owner, active) in enumerate(zip(names, owners, solution.active_mask))
              if name in EFFICIENCIES and active == 1]
    return _unpack(solution.x, keys, free, shared), pinned


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
        return [{"device": r.device, "model": r.model, "method": r.method or "pass", "n": r.n, "L": r.L,
                 "B": r.B, "G": r.G, "ratio": r.ratio, "measured_s": r.seconds, "fitted_s": float(p), "error": float(e),
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


def _check_enough_points(rows, free, shared) -> None:
    """A fit reports an error only if it has more points than free parameters, overall and per device."""
    per_device = {}
    for r in rows:
        per_device[r.device] = per_device.get(r.device, 0) + 1
    total = len(shared) + len(free) * len(per_device)
    if len(rows) < total + 1:
        raise InputError(f"calibration: {len(rows)} measurement(s) for {total} free parameter(s): a fit needs at "
                         f"least {total + 1} (one more than it fits) before its error means anything")
    for device, count in per_device.items():
        if free and count < len(free) + 1:
            raise InputError(f"calibration: device {device} has {count} measurement(s) for its {len(free)} "
                             f"parameter(s) ({', '.join(free)}): need at least {len(free) + 1}")


def _check_physical(problem, indices, free, shared, prior_weight, pinned, loss: str = "linear") -> None:
    """InputError if an efficiency the fit pins at 1 would go beyond 1 + PHYSICAL_TOLERANCE if it could.

    A fit whose optimum lies just past 1 (within the rounding of published
    figures) is kept, at 1; one that wants the device materially faster than
    its datasheet is refused: a parameter is standing in for a missing term, or
    the table names the wrong device, model or dtype.
    """
    if not pinned:
        return
    relaxed, _ = _fit(problem, indices, free, shared, prior_weight, efficiency_cap=4.0, loss=loss)
    for device, name in pinned:
        key = next(iter(relaxed)) if device == "all devices" else device
        value = relaxed[key][name]
        if value > 1.0 + PHYSICAL_TOLERANCE:
            raise InputError(f"calibration: the fit for {device} needs {name} = {value:.3g} > 1 (unphysical: the "
                             f"measurements are faster than the datasheet rates allow); check the table's device, "
                             f"model and dtype, or fit other parameters (--free)")


def calibrate(rows, free=("memory_efficiency", "pass_overhead_s"), shared=(), base="datasheet",
              leave_one_out: bool = True, prior_weight: float = 0.01, devices=None,
              loss: str = "linear") -> CalibrationResult:
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
    `loss` is one of LOSSES ("soft_l1": robust to a few outliers).

    InputError when the table has no more points than free parameters (overall,
    or for one device), or when the fit pins an efficiency at 1 (the data want
    the device faster than its datasheet).
    """
    free, shared = check_params(free, "free"), check_params(shared, "shared")
    if loss not in LOSSES:
        raise InputError(f"loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
    if set(free) & set(shared):
        raise InputError(f"shared: {sorted(set(free) & set(shared))} cannot be both free and shared")
    given = dict(devices or {})
    devices = {}
    canonical = {}  # the spelling in the table -> catalog key
    for r in rows:
        if r.device not in canonical:
            try:
                device = given.get(r.device) or get_device(f"{r.device}@{base}" if base else r.device)
            except InputError as exc:
                raise InputError(f"{r.where or 'calibration'}: {exc}") from None
            canonical[r.device] = device.key
            devices.setdefault(device.key, device)
    rows = [dataclasses.replace(r, device=canonical[r.device]) for r in rows]
    _check_enough_points(rows, free, shared)
    problem = _Problem(rows, devices)
    everything = list(range(len(rows)))
    params, pinned = _fit(problem, everything, free, shared, prior_weight, loss=loss)
    _check_physical(problem, everything, free, shared, prior_weight, pinned, loss)
    predicted = problem.predict(params, everything)
    loo = np.full(len(rows), np.nan)
    if leave_one_out:
        for i in everything:
            rest = [j for j in everything if j != i]
            if problem.device_of[i] not in {problem.device_of[j] for j in rest}:
                continue  # no other point for this device: nothing to predict it from
            loo[i] = problem.predict(_fit(problem, rest, free, shared, prior_weight, loss=loss)[0], [i])[0]
    return CalibrationResult(params={k: {n: float(v) for n, v in p.items()} for k, p in params.items()},
                             rows=rows, predicted=predicted, loo_predicted=loo, free=free, shared=shared)


def write_calibration_file(path, result: "CalibrationResult", csv_path) -> None:
    """Save a fit so that get_device('DEVICE@PATH') can use it."""
    content = {"params": result.params, "free": result.free, "shared": result.shared,
               "measurements": str(csv_path), "summary": result.summary(), "points": result.table()}
    try:
        Path(path).write_text(json.dumps(content, indent=2) + "\n")
    except OSError as exc:
        raise InputError(f"--output: cannot write {path} ({exc.strerror or exc})") from None
