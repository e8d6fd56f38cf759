"""`mirrorstream experiments run|list`: run experiments, write experiments/REPORT.md."""
from __future__ import annotations

import argparse
import json
import sys

from experiments.runner import EXPERIMENTS, experiment_module, run_experiments, summary, write_report


def register(subparsers) -> None:
    parser = subparsers.add_parser("experiments", help="reproduce the papers' tables and run what-if studies",
                                   description=__doc__)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    run_parser = verbs.add_parser("run", help="run experiments and write the report")
    run_parser.add_argument("names", nargs="*", metavar="NAME", help=f"experiments ({', '.join(EXPERIMENTS)})")
    run_parser.add_argument("--all", action="store_true", help="every experiment (the default)")
    run_parser.add_argument("--quick", action="store_true", help="reduced sizes that CI can afford")
    run_parser.add_argument("--out", default="experiments", help="report directory (default experiments/)")
    run_parser.add_argument("--json", action="store_true", help="print a summary object on stdout")
    run_parser.add_argument("--dask", metavar="ADDRESS", help="run sweeps on a Dask scheduler (tcp://HOST:PORT)")
    run_parser.set_defaults(func=run)
    list_parser = verbs.add_parser("list", help="name the experiments")
    list_parser.set_defaults(func=list_experiments)


def run(args) -> int:
    sections = run_experiments([] if args.all else args.names, args.out, args.quick, args.dask)
    command = "mirrorstream experiments run " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else \
        "mirrorstream experiments run"
    path = write_report(sections, args.out, args.quick, command.strip())
    if args.json:
        print(json.dumps(summary(sections), indent=2, default=str))
    else:
        for name, section in sections.items():
            state = f"skipped: {section.skipped}" if section.skipped else f"FAILED: {section.failed}" \
                if section.failed else "done"
            print(f"{name}: {state}")
        print(f"report: {path}")
    return 1 if any(s.failed for s in sections.values()) else 0


def list_experiments(args) -> int:
    for name in EXPERIMENTS:
        doc = (experiment_module(name).__doc__ or "").strip().splitlines()
        print(f"{name:12s} {doc[0] if doc else ''}")
    return 0
