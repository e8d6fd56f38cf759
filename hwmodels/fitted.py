"""Stored calibrations: the shipped fits (data/calibrations/NAME.json), fit files, and applying one to a device.

A shipped calibration holds the fitted parameters of one device, the settings
of the fit, its errors and the source of the data; a fit file (written by
`mirrorstream hw calibrate --output`) holds parameters per device. Fitting
itself lives in `calibration`, above the latency model.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

from .errors import InputError
from .hardware import PARAM_BOUNDS, Device
from .paths import DATA_DIR


def check_params(names, option: str) -> list[str]:
    """The names, if each is a parameter a calibration may set; else InputError naming `option`."""
    names = list(names)
    unknown = [n for n in names if n not in PARAM_BOUNDS]
    if unknown:
        raise InputError(f"{option}: unknown parameter(s) {', '.join(unknown)} "
                         f"(fittable: {', '.join(PARAM_BOUNDS)})")
    return names


def _calibration_dir():
    return DATA_DIR / "calibrations"


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
    check_params(params, str(path))
    return {"params": params, "source": f"fitted by mirrorstream hw calibrate ({path})"}


def apply_calibration(device: Device, calibration_name: str) -> Device:
    """The device with the fitted parameters of a shipped calibration (or of a calibration file)."""
    if calibration_name.endswith(".json"):
        cal = load_calibration_file(calibration_name, device.key)
    else:
        cal = load_calibration(calibration_name)
    params = dict(cal["params"])
    sources = dict(device.sources)
    for name in params:
        sources[name] = f"calibration {calibration_name}: {cal['source']}"
    # settings the fit was made with, not fitted (the kernels' row blocking), each with its source
    for name, setting in cal.get("settings", {}).items():
        params[name] = setting["value"]
        sources[name] = f"calibration {calibration_name}: {setting['source']}"
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
    try:
        calibrated = device.with_params(calibration=calibration_name, **params)
    except InputError as exc:
        raise InputError(f"calibration {calibration_name}: {exc}") from None
    return dataclasses.replace(calibrated, sources=sources)
