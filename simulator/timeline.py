"""Timelines of simulated runs: Chrome trace JSON (opens in Perfetto) and a Gantt chart PNG.

Only the first steps of each method are recorded (`timeline_steps`), which is
what one looks at to see the overlap; the tallies cover the whole run.
"""
from __future__ import annotations

import json
from pathlib import Path

from .engine import DEVICES
from .errors import InputError

COLOURS = {"target": "#4c72b0", "target_prefix": "#2a4d80", "target_suffix": "#8fa8d4", "heads": "#64b5cd",
           "draft": "#dd8452", "fallback_draft": "#c44e52", "rendezvous": "#55a868"}


def chrome_trace(results: dict) -> dict:
    """Chrome trace events: one process per method, one thread per device group, times in µs."""
    events = []
    for pid, (method, result) in enumerate(results.items()):
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": method}})
        for tid, device in enumerate(DEVICES):
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": device}})
        for span in result.spans:
            events.append({"name": span.label, "cat": span.device, "ph": "X", "pid": pid,
                           "tid": DEVICES.index(span.device), "ts": span.start * 1e6, "dur": span.seconds * 1e6,
                           "args": {"step": span.step}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _open_for_writing(path: str | Path, option: str):
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{option}: cannot write {path} ({exc.strerror})") from None


def write_chrome_trace(path: str | Path, results: dict) -> None:
    with _open_for_writing(path, "--chrome-trace") as out:
        json.dump(chrome_trace(results), out)


def plot_gantt(path: str | Path, results: dict) -> None:
    """One row per (method, device group); bars coloured by what the device was doing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [(method, device) for method in results for device in DEVICES
            if any(s.device == device for s in results[method].spans)]
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(rows) + 1.5))
    for y, (method, device) in enumerate(rows):
        spans = [s for s in results[method].spans if s.device == device]
        ax.broken_barh([(s.start * 1e3, s.seconds * 1e3) for s in spans], (y - 0.4, 0.8),
                       facecolors=[COLOURS.get(s.label, "grey") for s in spans], edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(len(rows)), [f"{m} · {d}" for m, d in rows])
    ax.invert_yaxis()
    ends = [max(s.start + s.seconds for s in r.spans) for r in results.values() if r.spans]
    if ends:
        ax.set_xlim(0, min(ends) * 1e3)     # the same window for every method
    ax.set_xlabel("simulated time (ms)")
    used = {s.label for r in results.values() for s in r.spans}
    ax.legend(handles=[Patch(color=c, label=label) for label, c in COLOURS.items() if label in used],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.set_title("the first steps, on the time window every method covers")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise InputError(f"--plot: cannot write {path} ({exc.strerror})") from None
    finally:
        plt.close(fig)
