"""What-if studies of Mirror-SD on the simulator: where does it stop paying off?

    python experiments/whatif.py [--quick] [--out DIR] [--dask ADDRESS]

Base system: the paper's testbed (Qwen3-32B on 8 M2 Ultra GPUs with TP 8, a
Qwen3-0.6B draft on their 8 Neural Engines, γ = 7, κ = 8, ℓe = N/2, batch 1),
Spec-Bench's six tasks as lengths, i.i.d. acceptance α = 0.8. Each study moves one
knob and plots the speedup over `ar` of vanilla `sd`, `mirror` and `mirror+ss`.

Coverage Ω_κ(ℓe) of the early exit is not published for Qwen3. Two scenarios:
- *premise*: the simulator's default Ω_8 = 0.7 at N/2 (the paper's claim that the
  mid-layer proxy tracks the final layer);
- *logit lens*: the one published measurement (mirror-sd.md §11.4, Gemma-3-12B, raw
  classifier): Ω_1 = 0.114, Ω_8 = 0.242, Ω_16 = 0.288 at N/2, and Ω_8 = 0.62 at
  5/8 depth, 0.78 at 7/8.
Where a study changes κ or ℓe, Ω moves with them by the logit-lens curve
(`coverage_for`): linear in log2 κ and in depth between the measured points, and
in the premise scenario scaled so that Ω_8(N/2) = 0.7, capped at 1.

Two more: request-level serving (Poisson arrivals at a rate, continuous batching
up to 8 sequences; `simulator.serving`), and the testbed's speedups with error
bars (`simulator.uncertainty`: the parameters marked unconfirmed over their
ranges, and the calibration residuals).
"""
from __future__ import annotations

import dataclasses

import numpy as np

#: The logit-lens measurement on Gemma-3-12B (mirror-sd.md §11.4).
LENS_BY_KAPPA_AT_HALF = {1: 0.114, 8: 0.242, 16: 0.288}
LENS_TOP8_BY_DEPTH = {0.5: 0.242, 0.625: 0.62, 0.875: 0.78}
PREMISE_OMEGA8 = 0.7
METHODS = ("sd", "mirror", "mirror+ss")
TITLE = "What-if studies: where Mirror-SD stops paying off"


def coverage_for(kappa: int, depth: float, scenario: str) -> float:
    """Ω_κ at exit depth ℓe/N under a scenario ('lens' or 'premise'), as the module doc says."""
    ks = sorted(LENS_BY_KAPPA_AT_HALF)
    at_half = float(np.interp(np.log2(kappa), np.log2(ks), [LENS_BY_KAPPA_AT_HALF[k] for k in ks]))
    depths = sorted(LENS_TOP8_BY_DEPTH)
    top8 = float(np.interp(depth, depths, [LENS_TOP8_BY_DEPTH[d] for d in depths]))
    if depth < depths[0]:           # shallower than measured: scale down linearly towards depth 0
        top8 = LENS_TOP8_BY_DEPTH[0.5] * depth / 0.5
    lens = at_half * top8 / LENS_TOP8_BY_DEPTH[0.5]
    if scenario == "lens":
        return min(1.0, lens)
    return min(1.0, lens * PREMISE_OMEGA8 / LENS_TOP8_BY_DEPTH[0.5])


#: study -> (x label, values, quick values)
STUDIES = {
    "npu": ("Neural Engine throughput (× the M2 Ultra ANE)", [0.25, 0.5, 1, 2, 4], [0.25, 1, 4]),
    "link": ("link latency α (s per hop)", [1e-6, 1e-5, 1e-4, 1e-3], [1e-6, 1e-4, 1e-3]),
    "kappa": ("κ (early-exit candidates per position)", [1, 2, 4, 8, 16], [1, 4, 16]),
    "exit": ("early-exit layer ℓe / N", [0.25, 0.375, 0.5, 0.625, 0.75, 0.875], [0.25, 0.5, 0.875]),
    "gamma": ("draft window γ", [1, 2, 3, 4, 5, 6, 7, 8, 10], [1, 4, 7]),
    "draft": ("draft model", ["qwen3-0.6b", "qwen3-1.7b"], ["qwen3-0.6b", "qwen3-1.7b"]),
    "batch": ("batch size", [1, 2, 4, 8, 16, 32, 64], [1, 8, 64]),
    "pairs": ("GPU + NPU pair", ["m2-ultra", "h100+inferentia2", "phone"], ["m2-ultra", "h100+inferentia2", "phone"]),
}
SCENARIOS = ("premise", "lens")


def _system(study: str, x):
    """(SimConfig, κ, depth) of one point."""
    import hwmodels
    from simulator import Group, SimConfig
    from simulator.config import TESTBED

    base = SimConfig(link=TESTBED["link"])
    n_layers = hwmodels.get_model(base.target_model).n_layers
    if study == "npu":
        npu = hwmodels.get_device(base.draft.device).scaled(x)
        return dataclasses.replace(base, draft=Group(npu, base.draft.tp)), 8, 0.5
    if study == "link":
        from simulator.config import default_link   # SimConfig's link is None: the testbed's by default
        testbed = default_link(hwmodels.get_device(base.target.device), hwmodels.get_device(base.draft.device))
        link = hwmodels.get_link(base.link or testbed).with_params(alpha_s=x)
        return dataclasses.replace(base, link=link), 8, 0.5
    if study == "kappa":
        return dataclasses.replace(base, kappa=x), x, 0.5
    if study == "exit":
        layer = max(1, round(x * n_layers))
        return dataclasses.replace(base, exit_layer=layer), 8, layer / n_layers
    if study == "gamma":
        return dataclasses.replace(base, gamma=x), 8, 0.5
    if study == "draft":
        return dataclasses.replace(base, draft_model=x), 8, 0.5
    if study == "batch":
        config = dataclasses.replace(base, batch=x)
        return config, config.kappa_used, 0.5
    if study == "pairs":
        return _pair(base, x), 8, 0.5
    raise ValueError(study)


def _pair(base, name: str):
    from simulator import Group
    if name == "m2-ultra":
        return base
    if name == "h100+inferentia2":   # 8 H100s (TP 8), the draft on 8 Inferentia2 chips over NeuronLink-v2,
        # the two groups meeting over the host's PCIe 5 (a hypothetical box: no instance pairs them)
        return dataclasses.replace(base, target=Group("h100-sxm", tp=8), draft=Group("inferentia2", tp=8),
                                   link="pcie-5")
    if name == "phone":         # Snapdragon 8 Gen 3: Qwen3-1.7B on the Adreno GPU, the 0.6B draft on Hexagon
        return dataclasses.replace(base, target_model="qwen3-1.7b", target=Group("sd8g3-adreno", tp=1),
                                   draft=Group("sd8g3-hexagon", tp=1), link="sd8g3-unified")
    raise ValueError(name)


def simulate_point(point: tuple) -> dict:
    """Speedups of METHODS for one (study, x, scenario, prompts per task)."""
    from simulator import SPEC_BENCH, AcceptanceModel, Workload, simulate

    study, x, scenario, prompts = point
    config, kappa, depth = _system(study, x)
    tasks = [dataclasses.replace(t, prompts=prompts) for t in SPEC_BENCH.values()]
    workload = Workload(tasks, AcceptanceModel(0.8, coverage_for(kappa, depth, scenario)))
    results = simulate(workload, config, METHODS)
    return {m: results[m].speedup for m in METHODS}


#: Requests per second offered to the testbed in the serving study (continuous batching, at most 8).
RATES, QUICK_RATES = [0.05, 0.1, 0.2, 0.4, 0.8], [0.05, 0.4]
SERVED = ("ar", "sd", "mirror+ss")


def serve_point(point: tuple) -> dict:
    """Median request latency and throughput per method at one Poisson arrival rate."""
    from simulator import SPEC_BENCH, AcceptanceModel, SimConfig, Workload
    from simulator.config import TESTBED
    from simulator.serving import poisson_arrivals, serve

    rate, requests = point
    task = dataclasses.replace(SPEC_BENCH["qa"], prompts=requests)
    workload = Workload([task], AcceptanceModel(0.8, PREMISE_OMEGA8))
    config = SimConfig(link=TESTBED["link"], batch=8)
    results = serve(workload, config, SERVED, poisson_arrivals(rate, requests, seed=1))
    return {m: {"p50_latency_s": r.metrics()["latency_s"]["p50"],
                "throughput": r.metrics()["throughput_tokens_per_s"]} for m, r in results.items()}


def uncertainty_point(prompts: int) -> dict:
    """The testbed's speedups with the interval the simulator gives them (simulator.uncertainty)."""
    from simulator import SPEC_BENCH, AcceptanceModel, SimConfig, Workload
    from simulator.config import TESTBED
    from simulator.uncertainty import predict_with_uncertainty

    tasks = [dataclasses.replace(t, prompts=prompts) for t in SPEC_BENCH.values()]
    report = predict_with_uncertainty(Workload(tasks, AcceptanceModel(0.8, PREMISE_OMEGA8)),
                                      SimConfig(link=TESTBED["link"]), ("ar", *METHODS))
    return {m: report["methods"][m]["speedup"] for m in METHODS}


def _figure(ctx, study: str, xs, values: dict) -> str:
    label = STUDIES[study][0]
    fig, ax = ctx.figure()
    positions = list(range(len(xs))) if isinstance(xs[0], str) else xs
    for scenario, style in zip(SCENARIOS, ("-", "--")):
        for method, colour in zip(METHODS, ("tab:gray", "tab:blue", "tab:orange")):
            if method == "sd" and scenario == "lens":
                continue  # sd does not depend on coverage
            ys = [values[(x, scenario)][method] for x in xs]
            ax.plot(positions, ys, style, marker="o", color=colour,
                    label=method if method == "sd" else f"{method} ({scenario})")
    if isinstance(xs[0], str):
        ax.set_xticks(positions, xs)
    elif study in ("npu", "link", "batch", "kappa"):
        ax.set_xscale("log")
    ax.axhline(1.0, color="black", linewidth=0.5)
    ax.set_xlabel(label)
    ax.set_ylabel("speedup over ar")
    ax.legend(fontsize=7)
    return ctx.save(fig, f"whatif_{study}.png")


def _table(study: str, xs, values: dict) -> str:
    from tabulate import tabulate
    rows = [[f"{x:g}" if not isinstance(x, str) else x, values[(x, "premise")]["sd"], values[(x, "premise")]["mirror"], values[(x, "premise")]["mirror+ss"],
             values[(x, "lens")]["mirror"], values[(x, "lens")]["mirror+ss"]] for x in xs]
    return tabulate(rows, [STUDIES[study][0], "sd", "mirror (premise)", "mirror+ss (premise)",
                           "mirror (lens)", "mirror+ss (lens)"], tablefmt="github", floatfmt=".2f")


def _serving_table(rates, served) -> str:
    from tabulate import tabulate
    rows = [[f"{rate:g}", *(f"{r[m]['p50_latency_s']:.1f}" for m in SERVED),
             *(f"{r[m]['throughput']:.0f}" for m in SERVED)] for rate, r in zip(rates, served)]
    return ("**Serving** (Spec-Bench QA lengths, Poisson arrivals, continuous batching up to 8 sequences, "
            "κ and streams by batch as the paper's rules say):\n\n" + tabulate(
                rows, ["requests/s", *(f"p50 latency {m} (s)" for m in SERVED),
                       *(f"tokens/s {m}" for m in SERVED)], tablefmt="github"))


def _serving_figure(ctx, rates, served) -> str:
    fig, ax = ctx.figure()
    for method in SERVED:
        ax.plot(rates, [r[method]["p50_latency_s"] for r in served], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel("median request latency (s)")
    ax.legend(fontsize=7)
    return ctx.save(fig, "whatif_serving.png")


def _bars_table(bars: dict) -> str:
    from tabulate import tabulate
    return tabulate([[m, f"{b['low']:.2f}", f"{b['value']:.2f}", f"{b['high']:.2f}"] for m, b in bars.items()],
                    ["method", "low", "speedup", "high"], tablefmt="github")


def _break_even(xs, values: dict, scenario: str) -> str:
    """Where mirror stops beating sd, in words."""
    losing = [x for x in xs if values[(x, scenario)]["mirror"] <= values[(x, scenario)]["sd"]]
    if not losing:
        return "beats sd at every point"
    if len(losing) == len(xs):
        return "never beats sd"
    return "at or below sd at " + ", ".join(f"{x:g}" if not isinstance(x, str) else x for x in losing)


def run(ctx):
    from experiments.runner import Section

    prompts = 4 if ctx.quick else 20
    points = [(study, x, scenario, prompts) for study, (_, full, quick) in STUDIES.items()
              for x in (quick if ctx.quick else full) for scenario in SCENARIOS]
    outcome = dict(zip(points, ctx.map(simulate_point, points, "what-if")))
    section = Section(TITLE, blocks=[
        f"`python experiments/whatif.py{' --quick' if ctx.quick else ''}`. Spec-Bench lengths, "
        f"{prompts} prompts per task, α = 0.8. *Premise*: Ω_8(N/2) = 0.7; *lens*: the logit-lens "
        "coverage measured on Gemma-3-12B (Ω_8(N/2) = 0.242). Ω follows κ and ℓe as the module "
        "docstring says. The H100 pair puts the draft on 8 AWS Inferentia2 chips (NeuronLink-v2 among "
        "them) that meet the 8 H100s over PCIe 5, a hypothetical box; the phone runs Qwen3-1.7B on the Snapdragon 8 Gen 3's GPU with the "
        "0.6B draft on its Hexagon NPU."])
    breaks = {}
    for study in STUDIES:
        xs = [x for (s, x, sc, _) in points if s == study and sc == "premise"]
        values = {(x, sc): outcome[(study, x, sc, prompts)] for x in xs for sc in SCENARIOS}
        name = _figure(ctx, study, xs, values)
        section.blocks.append(f"**{STUDIES[study][0]}** — mirror vs sd: premise {_break_even(xs, values, 'premise')}; "
                              f"lens {_break_even(xs, values, 'lens')}.\n\n" + _table(study, xs, values))
        section.figures.append((name, f"Speedup over ar against {STUDIES[study][0]}"))
        breaks[study] = {sc: _break_even(xs, values, sc) for sc in SCENARIOS}
    rates = QUICK_RATES if ctx.quick else RATES
    served = ctx.map(serve_point, [(rate, 16 if ctx.quick else 60) for rate in rates], "serving")
    section.blocks.append(_serving_table(rates, served))
    section.figures.append((_serving_figure(ctx, rates, served), "Median request latency against the arrival rate"))
    bars = ctx.map(uncertainty_point, [2 if ctx.quick else 6], "error bars")[0]
    section.blocks.append("**The testbed with error bars** (`simulate --uncertainty`: every parameter marked "
                          "unconfirmed over its range, and the calibration residuals; premise coverage):\n\n" +
                          _bars_table(bars))
    section.summary = {"whatif_testbed_mirror_speedup": outcome[("npu", 1, "premise", prompts)]["mirror"]
                       if ("npu", 1, "premise", prompts) in outcome else None,
                       "whatif_break_even": breaks}
    return section


if __name__ == "__main__":
    from experiments.runner import standalone
    standalone("whatif")
