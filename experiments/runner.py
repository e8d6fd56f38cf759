"""Run experiments and write one report: `mirrorstream experiments run`.

An experiment is a module of this package with a `TITLE` and a function
`run(ctx: Context) -> Section`. It computes its points through `ctx.map`
(local processes, or a Dask cluster), writes its figures into `ctx.out`, and
returns Markdown blocks, figure names and a summary dict of headline numbers.
An experiment whose inputs are missing (a checkpoint, say) returns a Section
with `skipped` set to the reason; the report says so and the others still run.

`write_report` puts every section into `OUT/REPORT.md`, figures beside it.
"""
from __future__ import annotations

import datetime
import importlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from experiments.sweep import Pool, open_pool

#: name -> module of every experiment, in report order.
EXPERIMENTS = {
    "ss-cpu": "experiments.ss_cpu",
    "table1": "experiments.table1",
    "sim-vs-cpu": "experiments.sim_vs_cpu",
    "whatif": "experiments.whatif",
}


class ExperimentError(Exception):
    """A bad experiment name, output directory or cluster address (exit status 2)."""


@dataclass
class Section:
    """What one experiment contributes to the report."""
    title: str
    blocks: list[str] = field(default_factory=list)   # Markdown: paragraphs and tables
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name in out, caption)
    summary: dict = field(default_factory=dict)       # headline numbers, for --json
    skipped: str | None = None                        # why it did not run
    failed: str | None = None                         # the error that stopped it


@dataclass
class Context:
    """What an experiment gets: where to write, how thorough to be, how to fan out."""
    out: Path
    quick: bool
    pool: Pool

    def figure(self, size=(6, 3.6)):
        """A new matplotlib (figure, axes), drawn off-screen; hand it back to `save`."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt.subplots(figsize=size)

    def save(self, fig, name: str) -> str:
        """Write the figure as OUT/name (PNG) and close it; returns the name, for Section.figures."""
        import matplotlib.pyplot as plt
        fig.tight_layout()
        fig.savefig(self.out / name, dpi=110)
        plt.close(fig)
        return name

    def map(self, function, points, label: str = ""):
        """[function(p) for p in points], in parallel; `function` must be a module-level function."""
        return self.pool.map(function, list(points), label)


def experiment_module(name: str):
    if name not in EXPERIMENTS:
        raise ExperimentError(f"unknown experiment {name!r} (known: {', '.join(EXPERIMENTS)})")
    return importlib.import_module(EXPERIMENTS[name])


def prepare_out(out) -> Path:
    """The output directory, created; ExperimentError if it cannot be written."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ExperimentError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    return path


def run_experiments(names, out, quick: bool = False, dask: str | None = None,
                    progress: bool | None = None) -> dict[str, Section]:
    """Run the named experiments (all when empty); sections by name, in report order."""
    names = list(names) or list(EXPERIMENTS)
    modules = {name: experiment_module(name) for name in names}   # every name checked first
    out = prepare_out(out)
    sections = {}
    with open_pool(dask, progress) as pool:
        ctx = Context(out, quick, pool)
        for name, module in modules.items():
            try:
                sections[name] = module.run(ctx)
            except Exception as exc:  # one experiment's failure is reported, the others still run
                detail = str(exc).strip().splitlines()
                sections[name] = Section(name, failed=f"{type(exc).__name__}: {detail[-1] if detail else ''}")
    return sections


def summary(sections: dict[str, Section]) -> dict:
    """One JSON object: every section's headline numbers, flat, plus what was skipped."""
    result = {"experiments": list(sections), "skipped": {n: s.skipped for n, s in sections.items() if s.skipped},
              "failed": {n: s.failed for n, s in sections.items() if s.failed}}
    for section in sections.values():
        result.update(section.summary)
    return result


def _git_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10)
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def render(sections: dict[str, Section], quick: bool, command: str) -> str:
    """The report's Markdown."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# mirrorstream experiments", "",
             f"Generated {when} from commit `{_git_commit()}` by `{command}`"
             f"{' (quick: reduced sizes)' if quick else ''}. Each section names the script that "
             "reproduces it on its own.", ""]
    for section in sections.values():
        note = " — skipped" if section.skipped else " — FAILED" if section.failed else ""
        lines += [f"- [{section.title}](#{_anchor(section.title)}){note}"]
    for section in sections.values():
        lines += ["", f"## {section.title}", ""]
        if section.skipped or section.failed:
            lines += [f"*Skipped: {section.skipped}*" if section.skipped else f"**Failed:** `{section.failed}`"]
            continue
        for block in section.blocks:
            lines += [block, ""]
        for name, caption in section.figures:
            lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def _anchor(title: str) -> str:
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -")
    return kept.replace(" ", "-")


def write_report(sections: dict[str, Section], out, quick: bool, command: str) -> Path:
    path = Path(out) / "REPORT.md"
    path.write_text(render(sections, quick, command), encoding="utf-8")
    return path


def standalone(name: str, argv=None) -> None:
    """`python experiments/NAME.py [--quick] [--out DIR]`: one experiment, its report section on stdout."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"experiments/{name}", description=experiment_module(name).__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes")
    parser.add_argument("--out", default=os.path.join("experiments", "out", name), help="figures go here")
    parser.add_argument("--dask", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://127.0.0.1:8786")
    args = parser.parse_args(argv)
    try:
        sections = run_experiments([name], args.out, args.quick, args.dask)
    except ExperimentError as exc:
        print(f"experiments/{name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(render(sections, args.quick, " ".join(["python", f"experiments/{name}.py", *(argv or sys.argv[1:])])))
