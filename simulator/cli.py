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

from tabulate import tabulate

from .config import Group, SimConfig
from .errors import InputError
from .simulate import simulate
from .timeline import plot_gantt, write_chrome_trace
from .workload import SPEC_BENCH, AcceptanceModel, Task, Workload, load_traces, replay_methods

#: Default i.i.d. acceptance α. The paper reports no acceptance lengths (mirror-sd.md §7, §12.10);
#: 0.8 at γ = 7 means (1 − 0.8^8) / 0.2 = 4.16 tokens per target step.
DEFAULT_ACCEPTANCE = 0.8
#: Default coverage Ω_8 of the early exit. No Qwen3 value is published; the one measurement
#: (logit lens on Gemma-3-12B, mirror-sd.md §11.4) gives 24% at N/2 and 62-78% at 5/8-7/8 depth.
#: 0.7 takes the paper's premise that the mid-layer proxy is strongly correlated with the final layer.
DEFAULT_COVERAGE = 0.7
DEFAULT_METHODS = "ar,sd,mirror,mirror+ss"
BREAKDOWN = ("target", "target_prefix", "target_suffix", "heads", "draft", "host", "rendezvous", "fallback_draft")


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
    system.add_argument("--target", default="qwen3-32b", help="target model shape (default qwen3-32b)")
    system.add_argument("--draft", default="qwen3-0.6b", help="draft model shape (default qwen3-0.6b)")
    system.add_argument("--target-hw", default="m2-ultra-gpu", help="target device (default m2-ultra-gpu)")
    system.add_argument("--draft-hw", default="m2-ultra-ane", help="draft device (default m2-ultra-ane)")
    system.add_argument("--tp", type=int, default=8, help="target tensor-parallel degree")
    system.add_argument("--draft-tp", type=int, default=8, help="draft tensor-parallel degree (SPD sharding)")
    system.add_argument("--target-devices", type=int, help="target devices (default: --tp)")
    system.add_argument("--draft-devices", type=int, help="draft devices (default: --draft-tp)")
    system.add_argument("--link", default="m2-ultra-unified",
                        help="link between target and draft devices (default m2-ultra-unified)")
    system.add_argument("--dtype", default="fp16", help="weights of the target (default fp16)")
    system.add_argument("--draft-dtype", help="default: --dtype")
    spec = parser.add_argument_group("speculation")
    spec.add_argument("--methods", help=f"comma-separated; default {DEFAULT_METHODS}, or with --trace the "
                                        "methods the traces replay as")
    spec.add_argument("--gamma", type=int, default=7, help="draft window γ")
    spec.add_argument("--kappa", type=int, help="Mirror-SD top-κ (default: 8/4/2/1 by batch)")
    spec.add_argument("--exit-layer", type=int, help="Mirror-SD early-exit layer ℓe (default N/2)")
    spec.add_argument("--batch", type=int, default=1, help="sequences decoded in lock step (default 1)")
    spec.add_argument("--ss-streams", type=int, help="mirror+ss lookahead streams (default 2, 1 from B=16)")
    spec.add_argument("--tree-nodes", type=int, help="target rows of ss/medusa/eagle steps (default γ+1)")
    spec.add_argument("--branches", type=int, help="Mirror-SD rollouts per step (default κ·(γ+1))")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    out.add_argument("--chrome-trace", metavar="FILE", help="timeline as Chrome trace JSON (Perfetto)")
    out.add_argument("--plot", metavar="FILE", help="timeline as a Gantt chart PNG")
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


def _config(args) -> SimConfig:
    return SimConfig(
        target_model=args.target, draft_model=args.draft,
        target=Group(args.target_hw, args.tp, args.target_devices),
        draft=Group(args.draft_hw, args.draft_tp, args.draft_devices),
        link=args.link, dtype=args.dtype, draft_dtype=args.draft_dtype, gamma=args.gamma, kappa=args.kappa,
        exit_layer=args.exit_layer, batch=args.batch, ss_streams=args.ss_streams, tree_nodes=args.tree_nodes,
        branches=args.branches)


def run(args) -> int:
    if args.timeline_steps < 0:
        raise InputError("--timeline-steps: must be >= 0")
    config = _config(args)
    workload = _workload(args)
    methods = _methods(args, workload)
    want_timeline = bool(args.chrome_trace or args.plot)
    results = simulate(workload, config, methods, timeline_steps=args.timeline_steps if want_timeline else 0,
                       progress=_progress if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)
    if args.chrome_trace:
        write_chrome_trace(args.chrome_trace, results)
    if args.plot:
        plot_gantt(args.plot, results)
    if args.json:
        json.dump(_json_report(args, config, workload, results), sys.stdout, indent=2)
        print()
    else:
        print(_table(args, config, workload, results))
    return 0


def _methods(args, workload: Workload) -> list[str]:
    if args.methods is not None:
        return [m.strip() for m in args.methods.split(",") if m.strip()]
    if workload.traces is None:
        return DEFAULT_METHODS.split(",")
    common = None
    for trace in workload.traces:
        allowed = replay_methods(trace.header.method)
        common = allowed if common is None else [m for m in common if m in allowed]
    return common


def _progress(method: str) -> None:
    print(f"\r\033[Ksimulating {method} ...", end="", file=sys.stderr, flush=True)


def _describe(args, config: SimConfig, workload: Workload) -> dict:
    if workload.traces is not None:
        source = {"traces": [t.source for t in workload.traces]}
    else:
        source = {"tasks": {t.name: {"prompts": t.prompts, "prompt_tokens": t.prompt_tokens,
                                     "new_tokens": t.new_tokens} for t in workload.tasks},
                  "acceptance": workload.acceptance.alpha, "seed": workload.seed}
    source["coverage"] = workload.acceptance.coverage
    return {
        "workload": source,
        "system": {"target": args.target, "draft": args.draft, "target_hw": args.target_hw, "tp": args.tp,
                   "draft_hw": args.draft_hw, "draft_tp": args.draft_tp, "link": args.link,
                   "dtype": args.dtype, "batch": config.batch},
        "speculation": {"gamma": config.gamma, "kappa": config.kappa_used, "exit_layer": args.exit_layer,
                        "ss_tokens_per_pass": config.ss_tokens},
    }


def _json_report(args, config, workload, results) -> dict:
    return {"methods": {name: r.metrics() for name, r in results.items()}, **_describe(args, config, workload)}


def _table(args, config, workload, results) -> str:
    rows = []
    for name, result in results.items():
        m = result.metrics()
        u = m["utilisation"]
        rows.append([name, m["seconds"], m["speedup"], m["tokens_per_s"], m["tpot_s"] * 1e3, m["mean_accepted"],
                     m["fallback_rate"] if name.startswith("mirror") else None,
                     u["target"], u["draft"]])
    header = ["method", "seconds", "speedup", "tok/s", "TPOT ms", "E[A]", "fallback", "target util",
              "draft util"]
    d = _describe(args, config, workload)
    w, s = d["workload"], d["speculation"]
    what = (f"{len(w['traces'])} trace(s)" if "traces" in w else
            f"{sum(t['prompts'] for t in w['tasks'].values())} synthetic prompts "
            f"({', '.join(w['tasks'])}), acceptance α={w['acceptance']}")
    categories = [c for c in BREAKDOWN if any(r.breakdown.get(c) for r in results.values())]
    shares = [[name, *(100 * r.breakdown.get(c, 0.0) / r.seconds if r.seconds else 0.0 for c in categories)]
              for name, r in results.items()]
    lines = [f"{args.target} on {args.tp} x {args.target_hw}, draft {args.draft} on {args.draft_tp} x "
             f"{args.draft_hw}; γ={s['gamma']} κ={s['kappa']} ℓe={args.exit_layer or 'N/2'} batch={config.batch}",
             f"workload: {what}, coverage Ω={w['coverage']}",
             tabulate(rows, header, floatfmt=".3f", missingval=""),
             "",
             "critical path, % of wall time:",
             tabulate(shares, ["method", *categories], floatfmt=".1f")]
    return "\n".join(lines)
