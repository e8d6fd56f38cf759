"""Calibration of device efficiencies and overheads against measured pass times."""
from __future__ import annotations

import functools
import json
from importlib import resources

from .errors import InputError


def _calibration_dir():
    return resources.files("hwmodels").joinpath("data", "calibrations")


@functools.cache
def shipped_calibrations() -> list[str]:
    return sorted(p.name[:-5] for p in _calibration_dir().iterdir() if p.name.endswith(".json"))


@functools.cache
def load_calibration(name: str) -> dict:
    if name not in shipped_calibrations():
        raise InputError(f"calibration: unknown {name!r} (known: {', '.join(shipped_calibrations())})")
    return json.loads(_calibration_dir().joinpath(f"{name}.json").read_text())
