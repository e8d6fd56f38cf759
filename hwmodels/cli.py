"""`mirrorstream hw ...`: list, show, latency, step, calibrate."""
from __future__ import annotations

import json
import sys

from tabulate import tabulate

from .calibration import calibrate, read_measurements, write_calibration_file
from .devices import get_device, get_link, known_devices, known_links
from .errors import InputError
from .fitted import load_calibration, shipped_calibrations
from .hardware import PARAM_BOUNDS
from .latency import SHARDINGS, forward_latency
from .models import get_model, known_models
from .steps import MEDUSA_HEADS, METHODS as STEP_METHODS, step_parts


def register(subparsers) -> None:
    hw = subparsers.add_parser("hw", help="device and model catalogs, forward-pass latency, calibration")
    sub = hw.add_subparsers(dest="hw_command", metavar="HW_COMMAND")
    hw.set_defaults(func=lambda args: (hw.print_help(), 2)[1])

    p = sub.add_parser("list", help="list known devices, models and links")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="every number of a device (or model or link) with its source")
    p.add_argument("name", metavar="DEVICE", help="device name (e.g. h100-sxm, m2-ultra-ane, cpu), or a model or link")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("latency", help="time of one forward pass and its breakdown")
    p.add_argument("--device", required=True,
                   help="device name (DEVICE@CALIBRATION, DEVICE@datasheet, DEVICE@FIT.json) or a device JSON file")
    p.add_argument("--model", required=True, help="model name (e.g. qwen3-32b, llama-3.1-8b)")
    p.add_argument("--tokens", type=int, default=1, help="query tokens per sequence (default 1)")
    p.add_argument("--context", type=int, default=0, help="KV context length before these tokens (default 0)")
    p.add_argument("--batch", type=int, default=1, help="sequences in the batch (default 1)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (default 1)")
    p.add_argument("--dtype", default="fp16", help="weight dtype (default fp16)")
    p.add_argument("--layers", help="half-open block range a:b (default all)")
    head = p.add_mutually_exclusive_group()
    head.add_argument("--classifier", dest="classifier", action="store_true", default=None,
                      help="include the final norm and classifier (default: iff the range ends at the last block)")
    head.add_argument("--no-classifier", dest="classifier", action="store_false")
    p.add_argument("--sharding", default="megatron", choices=SHARDINGS,
                   help="megatron: 2 all-reduces per block; spd: Mirror-SD draft, 2 per pass")
    p.add_argument("--link", help="override the device's tensor-parallel link (e.g. thunderbolt-5)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="what-if: multiply every device rate by this and divide its fixed times by it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_latency)

    p = sub.add_parser("step", help="time of one speculative step of a method, term by term (hwmodels.steps)")
    p.add_argument("--method", required=True, choices=STEP_METHODS, help="decoding method")
    p.add_argument("--device", required=True, help="device name (as for hw latency)")
    p.add_argument("--model", required=True, help="target model name")
    p.add_argument("--tokens", type=int, default=1, help="rows of the verification pass (tree nodes + 1; default 1)")
    p.add_argument("--context", type=int, default=0, help="KV context length before the step (default 0)")
    p.add_argument("--draft-rows", default="", help="rows of each draft pass, comma-separated (eagle, hydra, sd)")
    p.add_argument("--heads", type=int, default=MEDUSA_HEADS, help=f"medusa heads (default {MEDUSA_HEADS})")
    p.add_argument("--draft-model", help="sd: the draft model (on the same device)")
    p.add_argument("--stream-layers", type=int, help="ss: the last N_s layers the stream rows run through")
    p.add_argument("--vocab", type=int, help="ss, medusa: rows of the draft classifier (a shortlist; default all)")
    p.add_argument("--batch", type=int, default=1, help="sequences in the batch (default 1)")
    p.add_argument("--dtype", default="fp16", help="weight dtype (default fp16)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_step)

    p = sub.add_parser("calibrate", help="fit efficiencies/overheads to a measurement CSV")
    p.add_argument("csv", help="CSV with columns device,model,n,L,B,G,seconds (optional dtype,layers,classifier,sharding)")
    p.add_argument("--free", default="memory_efficiency,pass_overhead_s",
                   help=f"parameters fitted per device, comma-separated (from {', '.join(PARAM_BOUNDS)})")
    p.add_argument("--shared", default="", help="parameters fitted jointly for all devices of the table")
    p.add_argument("--base", default="datasheet", help="start from DEVICE@BASE (default datasheet)")
    p.add_argument("--no-loo", action="store_true", help="skip the leave-one-out refits")
    p.add_argument("--output", help="write the fit to this JSON file; use it as --device DEVICE@FILE.json")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_calibrate)


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=float)
    print()


def _fmt(x, scale=1.0, digits=4):
    return None if x is None else float(f"{x / scale:.{digits}g}")


# ----- list -------------------------------------------------------------------
def cmd_list(args) -> int:
    device_rows = []
    for key in known_devices():
        if key == "cpu":
            continue  # measured on first use: listing should not run the micro-benchmark
        dev = get_device(key)
        cal = dev.calibration
        device_rows.append({"device": key, "name": dev.name, "kind": dev.kind, "dtypes": ",".join(sorted(dev.peak_flops)),
                            "fp16_tflops": _fmt(dev.peak_flops.get("fp16"), 1e12),
                            "bandwidth_gb_s": _fmt(dev.memory_bandwidth, 1e9),
                            "memory_gb": _fmt(dev.memory_capacity, 1e9),
                            "tp_link": dev.tp_link.key if dev.tp_link else None, "calibration": cal})
    device_rows.append({"device": "cpu", "name": "this machine's CPU (measured on first use)", "kind": "cpu",
                        "dtypes": "fp32", "fp16_tflops": None, "bandwidth_gb_s": None, "memory_gb": None,
                        "tp_link": None, "calibration": None})
    model_rows = [{"model": k, "family": m.family, "layers": m.n_layers, "hidden": m.hidden_size,
                   "params_b": _fmt(m.param_count(), 1e9), "published_b": _fmt(m.published_params, 1e9)}
                  for k in known_models() for m in [get_model(k)]]
    link_rows = [{"link": k, "name": link.name, "alpha_us": _fmt(link.alpha_s, 1e-6),
                  "bandwidth_gb_s": _fmt(link.bandwidth, 1e9)} for k in known_links() for link in [get_link(k)]]
    calibration_rows = [{"calibration": name, "device": cal["device"], "points": cal["fit"]["points"],
                         "max_fit_error": _fmt(cal["fit"]["max_abs_error"], 1, 3),
                         "max_loo_error": _fmt(cal["fit"]["max_abs_loo_error"], 1, 3), "data": cal["measurements"]}
                        for name in shipped_calibrations() for cal in [load_calibration(name)]]
    if args.json:
        _print_json({"devices": device_rows, "models": model_rows, "links": link_rows,
                     "calibrations": calibration_rows})
        return 0
    for title, rows in (("Devices", device_rows), ("Models", model_rows), ("Links", link_rows),
                        ("Calibrations (use as DEVICE@NAME)", calibration_rows)):
        print(f"{title}\n{tabulate(rows, headers='keys')}\n")
    return 0


# ----- show -------------------------------------------------------------------
def _lookup_any(name: str):
    """A device, else a model, else a link; the device's error if none matches."""
    try:
        return "device", get_device(name)
    except InputError as device_error:
        for kind, getter in (("model", get_model), ("link", get_link)):
            try:
                return kind, getter(name)
            except InputError:
                pass
        raise device_error


def cmd_show(args) -> int:
    kind, obj = _lookup_any(args.name)
    info = obj.summary()
    if args.json:
        _print_json({"catalog": kind, **info})
        return 0
    sources = info.pop("sources", {})
    rows = []
    for key, value in info.items():
        if key == "peak_flops":
            rows += [[f"peak_flops.{d}", v, sources.get(f"peak_flops.{d}", "")] for d, v in sorted(value.items())]
        else:
            rows.append([key, value, sources.get(key, "")])
    if kind == "device" and obj.tp_link is not None:
        link = obj.tp_link
        rows += [["tp_link.alpha_s", link.alpha_s, link.sources.get("alpha_s", "")],
                 ["tp_link.beta_s_per_byte", link.beta_s_per_byte, link.sources.get("beta_s_per_byte", "")]]
    print(tabulate(rows, headers=[kind, "value", "source"], disable_numparse=False))
    return 0


# ----- latency ----------------------------------------------------------------
def parse_layers(text):
    if text is None:
        return None
    a, sep, b = str(text).partition(":")
    try:
        if not sep:
            raise ValueError
        return int(a), int(b)
    except ValueError:
        raise InputError(f"--layers: expected a:b (half-open block range), got {text!r}") from None


def cmd_latency(args) -> int:
    if not args.scale > 0:
        raise InputError(f"--scale: must be a positive number, got {args.scale}")
    device = get_device(args.device)
    if args.scale != 1.0:
        device = device.scaled(args.scale)
    lat = forward_latency(args.model, device, args.tokens, args.context, batch=args.batch, tp=args.tp,
                          dtype=args.dtype, layers=parse_layers(args.layers), classifier=args.classifier,
                          sharding=args.sharding, link=args.link)
    if args.json:
        _print_json(lat.to_dict())
        return 0
    a, b = lat.layers
    print(f"{lat.model} on {lat.device}: {lat.n_tokens} tokens x batch {lat.batch}, context {lat.context}, "
          f"tp {lat.tp} ({lat.sharding}), {lat.dtype}, blocks {a}:{b}{' + classifier' if lat.classifier else ''}")
    rows = [[part, seconds * 1e3, seconds / lat.seconds if lat.seconds else 0.0]
            for part, seconds in lat.breakdown.items()]
    rows.append(["total", lat.seconds * 1e3, 1.0])
    print(tabulate(rows, headers=["", "ms", "share"], floatfmt=(None, ".4f", ".1%")))
    print(f"{lat.bound}-bound: raw compute {lat.compute_time * 1e3:.4f} ms, raw memory {lat.memory_time * 1e3:.4f} ms, "
          f"{lat.collectives} all-reduces of {lat.message_bytes:.0f} bytes")
    return 0


# ----- step -------------------------------------------------------------------
def _rows_list(text: str) -> tuple[int, ...]:
    try:
        rows = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise InputError(f"--draft-rows: expected comma-separated row counts, got {text!r}") from None
    if any(r < 1 for r in rows) or len(rows) > 64:
        raise InputError(f"--draft-rows: need at most 64 passes of >= 1 row each, got {text!r}")
    return rows


def cmd_step(args) -> int:
    if args.method == "sd" and not args.draft_model:
        raise InputError("--draft-model: a step of sd needs the draft model")
    if args.method == "ss" and args.stream_layers is None:
        raise InputError("--stream-layers: a step of ss needs the stream layers N_s")
    device = get_device(args.device)
    ar = step_parts("ar", args.model, device, 1, args.context, batch=args.batch, dtype=args.dtype)
    parts = step_parts(args.method, args.model, device, args.tokens, args.context, batch=args.batch,
                       dtype=args.dtype, draft_rows=_rows_list(args.draft_rows), heads=args.heads,
                       draft_shape=args.draft_model, stream_layers=args.stream_layers, vocab=args.vocab)
    seconds, ar_seconds = sum(parts.values()), sum(ar.values())
    if args.json:
        _print_json({"method": args.method, "device": device.key, "model": get_model(args.model).name,
                     "seconds": seconds, "parts": parts, "ar_seconds": ar_seconds, "ratio_to_ar": seconds / ar_seconds})
        return 0
    rows = [[term, t * 1e3, t / seconds if seconds else 0.0] for term, t in parts.items()]
    rows.append(["total", seconds * 1e3, 1.0])
    print(f"{args.method} step of {get_model(args.model).name} on {device.key}: {args.tokens} rows, "
          f"context {args.context}, batch {args.batch}")
    print(tabulate(rows, headers=["", "ms", "share"], floatfmt=(None, ".4f", ".1%")))
    print(f"{seconds / ar_seconds:.3f}x an autoregressive step ({ar_seconds * 1e3:.4f} ms)")
    return 0


# ----- calibrate --------------------------------------------------------------
def _param_list(text: str) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def cmd_calibrate(args) -> int:
    rows = read_measurements(args.csv)
    try:
        result = calibrate(rows, free=_param_list(args.free), shared=_param_list(args.shared), base=args.base,
                           leave_one_out=not args.no_loo)
    except InputError as exc:
        if str(args.csv) in str(exc):
            raise
        raise InputError(f"{args.csv}: {exc}") from None
    report = {"summary": result.summary(), "params": result.params, "points": result.table()}
    if args.output:
        write_calibration_file(args.output, result, args.csv)
    if args.json:
        _print_json(report)
        return 0
    table = [{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()} for row in result.table()]
    print(tabulate(table, headers="keys"))
    s = result.summary()
    loo = (f"leave-one-out: max {s['max_abs_loo_error']:.1%}, mean {s['mean_abs_loo_error']:.1%}"
           if s["max_abs_loo_error"] is not None else "no leave-one-out")
    print(f"\nfit: max |error| {s['max_abs_error']:.1%}, mean {s['mean_abs_error']:.1%}; {loo}")
    for device, params in result.params.items():
        print(f"{device}: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
    return 0
