"""`mirrorstream simulate`: replay traces (or synthetic workloads) on modelled devices.

With no arguments it runs the Mirror-SD paper's testbed (Qwen3-32B on 8 M2 Ultra
GPUs, Qwen3-0.6B draft on their Neural Engines, γ = 7, κ = 8, ℓe = N/2, batch 1)
on Spec-Bench's six tasks (synthetic, 480 prompts) with acceptance α = 0.8 and
early-exit coverage Ω_8 = 0.7, and prints a table of ar, sd, mirror and mirror+ss.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tabulate import tabulate

from .config import TESTBED, Group, SimConfig, is_testbed
from .errors import InputError
from .costs import HardwareCosts
from .serving import poisson_arrivals, read_arrivals, serve
from .simulate import simulate
from .timeline import plot_gantt, write_chrome_trace
from .uncertainty import parse_range, predict_with_uncertainty
from .workload import (SPEC_BENCH, AcceptanceModel, Task, Workload, load_traces, replay_methods, trace_model,
                       traces_drafting, traces_rollout)

#: Default i.i.d. acceptance α. The paper reports no acceptance lengths (mirror-sd.md §7, §12.10);
#: 0.8 at γ = 7 means (1 − 0.8^8) / 0.2 = 4.16 tokens per target step.
DEFAULT_ACCEPTANCE = 0.8
#: Default coverage Ω_8 of the early exit. No Qwen3 value is published; the one measurement
#: (logit lens on Gemma-3-12B, mirror-sd.md §11.4) gives 24% at N/2 and 62-78% at 5/8-7/8 depth.
#: 0.7 takes the paper's premise that the mid-layer proxy is strongly correlated with the final layer.
DEFAULT_COVERAGE = 0.7
DEFAULT_METHODS = "ar,sd,mirror,mirror+ss"
DEFAULT_TARGET, DEFAULT_DRAFT, DEFAULT_GAMMA = "qwen3-32b", "qwen3-0.6b", 7
PLOT_FORMATS = (".png", ".svg", ".pdf")
BREAKDOWN = ("target", "target_prefix", "target_suffix", "heads", "draft", "host", "rendezvous", "fallback_draft",
             "queue")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate", help="replay decoding traces on modelled GPUs/NPUs (default: the Mirror-SD testbed)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("workload (default: Spec-Bench's six tasks, synthetic)")
    source.add_argument("--trace", nargs="+", metavar="FILE", help="recorded traces, one prompt each")
    source.add_argument("--acceptance", type=_probabilities, default=None, metavar="A[,A...]",
                        help=f"i.i.d. acceptance α, or a per-position profile (default {DEFAULT_ACCEPTANCE})")
    source.add_argument("--coverage", type=_probabilities, default=None, metavar="C[,C...]",
                        help=f"Mirror-SD coverage Ω_κ, or a profile by rejection depth (default {DEFAULT_COVERAGE})")
    source.add_argument("--tasks", help=f"Spec-Bench tasks to synthesise (default: all, {','.join(SPEC_BENCH)})")
    source.add_argument("--prompts", type=int, help="synthetic workload: K prompts ...")
    source.add_argument("--prompt-tokens", type=int, default=128, help="... of N tokens (default 128) ...")
    source.add_argument("--new-tokens", type=int, default=1024, help="... generating M tokens each (default 1024)")
    source.add_argument("--seed", type=int, default=0, help="seed of the synthetic acceptance and coverage draws")
    system = parser.add_argument_group("system (default: the Mirror-SD testbed)")
    system.add_argument("--target", help=f"target model shape (default: the traces', else {DEFAULT_TARGET})")
    system.add_argument("--draft", help=f"draft model shape (default: the traces', else {DEFAULT_DRAFT})")
    system.add_argument("--target-hw", default="m2-ultra-gpu", help="target device (default m2-ultra-gpu)")
    system.add_argument("--draft-hw", default="m2-ultra-ane", help="draft device (default m2-ultra-ane)")
    system.add_argument("--tp", type=int, help="target tensor-parallel degree (default 8 on the testbed, else 1)")
    system.add_argument("--draft-tp", type=int,
                        help="draft tensor-parallel degree, SPD sharding (default 8 on the testbed, else 1)")
    system.add_argument("--target-devices", type=int, help="target devices (default: --tp)")
    system.add_argument("--draft-devices", type=int, help="draft devices (default: --draft-tp)")
    system.add_argument("--link", help="link between target and draft devices (default: m2-ultra-unified on "
                                       "the testbed, a device's own TP link when both are that device)")
    system.add_argument("--draft-on-target", action="store_true",
                        help="the draft runs on the target's devices: their work queues (one SimPy resource)")
    system.add_argument("--memory-contention", type=float, default=1.0, metavar="X",
                        help="target and draft share one memory: each runs its memory-bound work X times "
                             "slower while the other runs too (default 1: independent)")
    system.add_argument("--compute-contention", type=float, default=1.0, metavar="X",
                        help="likewise for the rest of their work, where they share cores (default 1)")
    system.add_argument("--dtype", default="fp16", help="weights of the target (default fp16)")
    system.add_argument("--draft-dtype", help="default: --dtype")
    spec = parser.add_argument_group("speculation")
    spec.add_argument("--methods", help=f"comma-separated; default {DEFAULT_METHODS}, or with --trace the "
                                        "methods the traces replay as")
    spec.add_argument("--gamma", type=int, help=f"draft window γ (default: the traces', else {DEFAULT_GAMMA})")
    spec.add_argument("--kappa", type=int, help="Mirror-SD top-κ (default: 8/4/2/1 by batch)")
    spec.add_argument("--exit-layer", type=int, help="Mirror-SD early-exit layer ℓe (default N/2)")
    spec.add_argument("--batch", type=int, default=1, help="sequences decoded in lock step (default 1)")
    spec.add_argument("--ss-streams", type=int, help="mirror+ss lookahead streams (default 2, 1 from B=16)")
    spec.add_argument("--tree-nodes", type=int, help="target rows of ss/medusa/eagle steps (default γ+1)")
    spec.add_argument("--branches", type=int, help="Mirror-SD rollouts per step (default κ·(γ+1))")
    serving = parser.add_argument_group("request-level serving (continuous batching, up to --batch sequences)")
    serving.add_argument("--arrival-rate", type=float, metavar="R",
                         help="requests arrive as a Poisson process of R per second, one per prompt")
    serving.add_argument("--arrivals", metavar="FILE", help="arrival times in seconds, one per line, sorted")
    doubt = parser.add_argument_group("error bars")
    doubt.add_argument("--uncertainty", action="store_true",
                       help="intervals from the parameters marked unconfirmed (prior x[1/2, 2]) and calibration "
                            "residuals: 2k+1 runs, one parameter at a time, moves combined root-sum-square")
    doubt.add_argument("--range", action="append", default=[], metavar="KEY.PARAM=LOW:HIGH",
                       help="a parameter's range, e.g. m2-ultra-ane.memory_bandwidth=100e9:400e9 (repeatable)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    out.add_argument("--chrome-trace", metavar="FILE", help="timeline as Chrome trace JSON (Perfetto)")
    out.add_argument("--plot", metavar="FILE", help="timeline as a Gantt chart (.png, .svg or .pdf)")
    out.add_argument("--timeline-steps", type=int, default=40, help="steps per method in the timeline")
    parser.set_defaults(func=run)


def _probabilities(text: str) -> tuple[float, ...] | float:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability or a comma-separated profile, got {text!r}")
    return values[0] if len(values) == 1 else values


def _workload(args) -> Workload:
    acceptance = AcceptanceModel(DEFAULT_ACCEPTANCE if args.acceptance is None else args.acceptance,
                                 DEFAULT_COVERAGE if args.coverage is None else args.coverage)
    if args.trace:
        if args.acceptance is not None:
            raise InputError("--acceptance: traces carry their own acceptance; give --trace or --acceptance")
        return Workload(acceptance=acceptance, traces=load_traces(args.trace), seed=args.seed)
    if args.prompts is not None:
        if args.tasks is not None:
            raise InputError("--tasks: give Spec-Bench tasks or a synthetic workload (--prompts), not both")
        tasks = [Task("synthetic", args.prompts, args.prompt_tokens, args.new_tokens)]
    else:
        names = [n.strip() for n in (args.tasks or ",".join(SPEC_BENCH)).split(",") if n.strip()]
        unknown = [n for n in names if n not in SPEC_BENCH]
        if unknown or not names:
            raise InputError(f"--tasks: unknown task(s) {', '.join(unknown) or '(none)'} "
                             f"(known: {', '.join(SPEC_BENCH)})")
        tasks = [SPEC_BENCH[n] for n in names]
    return Workload(tasks, acceptance, seed=args.seed)


def _from_traces(workload: Workload, option: str, value):
    """The one value every trace's header gives (`value(trace)`), or None when they disagree or give none."""
    values = {json.dumps(value(t), sort_keys=True) for t in workload.traces or ()}
    if len(values) > 1:
        raise InputError(f"{option}: the traces differ ({', '.join(sorted(values))[:120]}); name one with {option}")
    return json.loads(values.pop()) if values else None


def _config(args, workload: Workload) -> SimConfig:
    """The system: options as given; models and γ from the traces when they name them; the testbed's
    TP degrees and link only on the testbed's devices (`simulator.config.TESTBED`)."""
    traces = workload.traces is not None
    target = args.target or (traces and _trace_model(workload, "target")) or DEFAULT_TARGET
    draft = args.draft or (traces and _trace_model(workload, "draft")) or DEFAULT_DRAFT
    gamma = args.gamma
    if gamma is None and traces:
        gamma = _from_traces(workload, "--gamma", lambda t: t.header.params.get("gamma"))
        if gamma is not None and (not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 1):
            gamma = None
    testbed = is_testbed(args.target_hw, args.draft_hw)
    tp = args.tp if args.tp is not None else (TESTBED["tp"] if testbed else 1)
    draft_tp = args.draft_tp if args.draft_tp is not None else (TESTBED["draft_tp"] if testbed else 1)
    return SimConfig(
        target_model=target, draft_model=draft,
        target=Group(args.target_hw, tp, args.target_devices),
        draft=Group(args.draft_hw, draft_tp, args.draft_devices),
        link=args.link, dtype=args.dtype, draft_dtype=args.draft_dtype,
        gamma=gamma if gamma is not None else DEFAULT_GAMMA, kappa=args.kappa,
        exit_layer=args.exit_layer, batch=args.batch, ss_streams=args.ss_streams, tree_nodes=args.tree_nodes,
        branches=args.branches, draft_on_target=args.draft_on_target,
        memory_contention=args.memory_contention, compute_contention=args.compute_contention,
        drafting=traces_drafting(workload.traces) if traces else None,
        rollout=traces_rollout(workload.traces) if traces else "batched")


def _trace_model(workload: Workload, role: str):
    """The model shape the traces' headers name for `role`, when they all name the same one."""
    named = _from_traces(workload, f"--{role}", lambda t: getattr(t.header, role))
    if named is None:
        return None
    return trace_model(workload.traces[0].header, role, workload.traces[0].source)


def run(args) -> int:
    if args.timeline_steps < 0:
        raise InputError("--timeline-steps: must be >= 0")
    if args.plot and Path(args.plot).suffix.lower() not in PLOT_FORMATS:
        raise InputError(f"--plot: {args.plot}: give a file name ending in {', '.join(PLOT_FORMATS)}")
    workload = _workload(args)
    config = _config(args, workload)
    methods = _methods(args, workload)
    if args.arrival_rate is not None or args.arrivals is not None:
        return _serve(args, workload, config, methods)
    if args.uncertainty or args.range:
        return _uncertainty(args, workload, config, methods)
    want_timeline = bool(args.chrome_trace or args.plot)
    costs = HardwareCosts(config)
    results = simulate(workload, config, methods, costs=costs,
                       timeline_steps=args.timeline_steps if want_timeline else 0,
                       progress=_progress if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)
    if args.chrome_trace:
        write_chrome_trace(args.chrome_trace, results)
    if args.plot:
        plot_gantt(args.plot, results)
    if args.json:
        json.dump(_json_report(costs, workload, results), sys.stdout, indent=2)
        print()
    else:
        print(_table(costs, workload, results))
    return 0


def _serve(args, workload: Workload, config: SimConfig, methods) -> int:
    """Request-level serving: arrivals, continuous batching, throughput and latency percentiles."""
    if args.arrival_rate is not None and args.arrivals is not None:
        raise InputError("--arrivals: give --arrival-rate or --arrivals, not both")
    if args.chrome_trace or args.plot:
        raise InputError("--chrome-trace/--plot: timelines are for batch runs, not for serving")
    if args.arrivals is not None:
        arrivals = read_arrivals(args.arrivals)
    else:
        prompts = len(workload.traces) if workload.traces is not None else sum(t.prompts for t in workload.tasks)
        arrivals = poisson_arrivals(args.arrival_rate, prompts, args.seed)
    costs = HardwareCosts(config)
    results = serve(workload, config, ["ar", *(m for m in methods if m != "ar")], arrivals, costs=costs)
    report = {name: r.metrics() for name, r in results.items()}
    if args.json:
        json.dump({"serving": report, **_describe(costs, workload)}, sys.stdout, indent=2)
        print()
        return 0
    rows = [[name, m["requests"], m["throughput_tokens_per_s"], *(1e3 * m["ttft_s"][p] for p in ("p50", "p90", "p99")),
             *(1e3 * m["tpot_s"][p] for p in ("p50", "p90", "p99")), m["mean_batch"]] for name, m in report.items()]
    d = _describe(costs, workload)["system"]
    arrived = (f"Poisson arrivals at {args.arrival_rate}/s" if args.arrivals is None else
               f"arrivals from {args.arrivals}")
    print(f"{d['target']} on {d['tp']} x {d['target_hw']}, draft {d['draft']} on {d['draft_tp']} x {d['draft_hw']}; "
          f"{arrived}, continuous batching up to {config.batch}, γ={config.gamma}, κ and streams by batch")
    print(tabulate(rows, ["method", "requests", "tok/s", "TTFT p50 ms", "p90", "p99", "TPOT p50 ms", "p90", "p99",
                          "mean batch"], floatfmt=".2f"))
    return 0


def _uncertainty(args, workload: Workload, config: SimConfig, methods) -> int:
    """Nominal predictions with intervals, and how far each uncertain parameter moves them."""
    if args.chrome_trace or args.plot:
        raise InputError("--chrome-trace/--plot: not with --uncertainty")
    ranges = dict(parse_range(text) for text in args.range)
    names = ["ar", *(m for m in methods if m != "ar")]
    report = predict_with_uncertainty(workload, config, names, ranges)
    costs = HardwareCosts(config)
    if args.json:
        json.dump({"uncertainty": report, **_describe(costs, workload)}, sys.stdout, indent=2)
        print()
        return 0
    rows = [[name, m["speedup"]["value"], m["speedup"]["low"], m["speedup"]["high"], m["tokens_per_s"]["value"],
             m["tokens_per_s"]["low"], m["tokens_per_s"]["high"]] for name, m in report["methods"].items()]
    print(tabulate(rows, ["method", "speedup", "low", "high", "tok/s", "low", "high"], floatfmt=".3f"))
    spec = names[1:]
    moves = [[mv["parameter"], f"{mv['low']:.3g}..{mv['high']:.3g}",
              *(f"{mv['at_low'][n]['speedup']:.2f}..{mv['at_high'][n]['speedup']:.2f}" for n in spec)]
             for mv in report["parameters"]]
    print("\nspeedup at each parameter's low..high end (the others at their catalog values):")
    print(tabulate(moves, ["parameter", "range", *spec]))
    return 0


def _methods(args, workload: Workload) -> list[str]:
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not methods:
            raise InputError(f"--methods: give at least one method, got {args.methods!r}")
        return methods
    if workload.traces is None:
        return DEFAULT_METHODS.split(",")
    common = None
    for trace in workload.traces:
        allowed = replay_methods(trace.header.method)
        common = allowed if common is None else [m for m in common if m in allowed]
    return common


def _progress(method: str) -> None:
    print(f"\r\033[Ksimulating {method} ...", end="", file=sys.stderr, flush=True)


def _describe(costs: HardwareCosts, workload: Workload) -> dict:
    """What was simulated, as resolved: models, devices, TP degrees, link, speculation parameters."""
    config = costs.config
    if workload.traces is not None:
        source = {"traces": [t.source for t in workload.traces]}
    else:
        source = {"tasks": {t.name: {"prompts": t.prompts, "prompt_tokens": t.prompt_tokens,
                                     "new_tokens": t.new_tokens} for t in workload.tasks},
                  "acceptance": workload.acceptance.alpha, "seed": workload.seed}
    source["coverage"] = workload.acceptance.coverage
    return {
        "workload": source,
        "system": {"target": costs.target_shape.name, "draft": costs.draft_shape.name,
                   "target_hw": costs.target_device.key, "tp": config.target.tp,
                   "draft_hw": costs.draft_device.key, "draft_tp": config.draft.tp, "link": costs.link.key,
                   "dtype": config.dtype, "batch": config.batch, "draft_on_target": config.draft_on_target},
        "speculation": {"gamma": config.gamma, "kappa": config.kappa_used, "exit_layer": costs.exit_layer,
                        "ss_tokens_per_pass": config.ss_tokens},
    }


def _json_report(costs, workload, results) -> dict:
    return {"methods": {name: r.metrics() for name, r in results.items()}, **_describe(costs, workload)}


def _table(costs, workload, results) -> str:
    rows = []
    for name, result in results.items():
        m = result.metrics()
        u = m["utilisation"]
        rows.append([name, m["seconds"], m["speedup"], m["tokens_per_s"], m["tpot_s"] * 1e3, m["mean_accepted"],
                     m["fallback_rate"] if name.startswith("mirror") else None,
                     u["target"], u["draft"]])
    header = ["method", "seconds", "speedup", "tok/s", "TPOT ms", "tok/pass", "fallback", "target util",
              "draft util"]
    d = _describe(costs, workload)
    w, s, y = d["workload"], d["speculation"], d["system"]
    what = (f"{len(w['traces'])} trace(s)" if "traces" in w else
            f"{sum(t['prompts'] for t in w['tasks'].values())} synthetic prompts "
            f"({', '.join(w['tasks'])}), acceptance α={w['acceptance']}")
    categories = [c for c in BREAKDOWN if any(r.breakdown.get(c) for r in results.values())]
    shares = [[name, *(100 * r.breakdown.get(c, 0.0) / r.seconds if r.seconds else 0.0 for c in categories)]
              for name, r in results.items()]
    lines = [f"{y['target']} on {y['tp']} x {y['target_hw']}, draft {y['draft']} on {y['draft_tp']} x "
             f"{y['draft_hw']}, link {y['link']}; γ={s['gamma']} κ={s['kappa']} ℓe={s['exit_layer']} "
             f"batch={y['batch']}",
             f"workload: {what}, coverage Ω={w['coverage']}",
             tabulate(rows, header, floatfmt=".3f", missingval=""),
             "",
             "critical path, % of wall time:",
             tabulate(shares, ["method", *categories], floatfmt=".1f")]
    return "\n".join(lines)
