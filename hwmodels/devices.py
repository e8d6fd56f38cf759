"""The device and link catalogs (with the source of every number) and lookup by name.

`get_device("NAME")` gives a catalog entry with its default calibration,
`"NAME@CALIBRATION"` another stored calibration (`fitted`), `"NAME@datasheet"`
the raw entry, `"cpu"` this machine (`cpu`). The dataclasses live in `hardware`.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from .cpu import CPU_CALIBRATION, cpu_device
from .dtypes import check_dtype
from .errors import InputError
from .fitted import apply_calibration, shipped_calibrations
from .hardware import STEP_FIELDS, Device, Link
from .names import build_index, normalise, resolve
from .paths import DATA_DIR

RAW_SUFFIX = "datasheet"  # "h100-sxm@datasheet": the entry without its calibration


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
                  "layer_overhead_s", "dot_overhead_s", "score_overhead_s", *STEP_FIELDS, "memory_usable_fraction")


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
        device = cpu_device()
        default_cal = CPU_CALIBRATION if CPU_CALIBRATION in shipped_calibrations() else None
    else:
        devices, calibrations = _catalog()
        device, default_cal = devices[key], calibrations.get(key)
    chosen = (cal_name if cal_name.endswith(".json") else normalise(cal_name)) if cal_name else default_cal
    if chosen in (None, RAW_SUFFIX):
        return device
    if not chosen.endswith(".json") and chosen not in shipped_calibrations():
        raise InputError(f"device: unknown calibration {cal_name!r} in {text!r} "
                         f"(known: {', '.join([RAW_SUFFIX, *shipped_calibrations()])})")
    return apply_calibration(device, chosen)
