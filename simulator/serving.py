"""Request-level serving: arrivals, continuous batching of speculative methods, latency percentiles.

Requests arrive (Poisson at a rate, or at the times of an arrival trace), wait,
and are admitted into the running batch at step boundaries while it has fewer
than `max_batch` sequences. Each admission runs one batched prefill pass of the
new requests (the running ones wait for it; no chunked prefill), which emits
their first token; then every step advances each running request by one of its
own decoding steps (its acceptance outcomes, as in `simulator.workload`), the
batch padded to its widest member as in static batching. A finished request
leaves at once and its slot is free for the next step.

The speculation shape of a step follows the batch it runs with, by the
Mirror-SD paper's rules (mirror-sd.md §8.4): κ = 8/4/2/1 and 2/1 Speculative
Streaming lookahead streams by batch size, unless `kappa` / `ss_streams` are
fixed in the config. Coverage hits are drawn at the workload's Ω whatever κ
(the paper publishes no Ω by κ). When nothing is running and nobody waits,
the server idles until the next arrival; each busy period is one run of the
method's SimPy process (`simulator.methods`), so a method behaves exactly as
in a static run.

Per request: TTFT = end of its prefill − arrival; TPOT = (finish − first
token) / (new tokens − 1); throughput = all generated tokens / (last finish −
first arrival).
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from refimpl.trace import StepRecord

from .batching import _merge
from .config import SimConfig, kappa_for_batch, ss_streams_for_batch
from .costs import HardwareCosts
from .engine import Simulation
from .errors import InputError
from .methods import METHODS
from .simulate import _check_method, shape_for
from .workload import Outcomes, Workload, _prefill_record, _step_shaper, outcomes_of, synthesize_outcomes

PERCENTILES = (50, 90, 99)


def poisson_arrivals(rate: float, count: int, seed: int = 0) -> np.ndarray:
    """`count` arrival times (seconds) of a Poisson process of `rate` requests per second."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise InputError(f"--arrival-rate: must be a finite number of requests per second > 0, got {rate!r}")
    gaps = np.random.default_rng([seed, 2**31 - 1]).exponential(1.0 / rate, count)
    return np.cumsum(gaps) - gaps[0] if count else gaps      # the first request arrives at t = 0


def check_arrivals(times, source: str = "arrivals") -> np.ndarray:
    """Arrival times as a float array: finite, >= 0 and sorted, or an InputError naming `source`."""
    try:
        times = np.asarray(times, dtype=float)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{source}: arrival times must be numbers") from None
    if times.ndim != 1 or times.size == 0:
        raise InputError(f"{source}: give at least one arrival time")
    bad = np.flatnonzero(~np.isfinite(times) | (times < 0))
    if bad.size:
        raise InputError(f"{source}: arrival {bad[0] + 1} is {float(times[bad[0]])!r}; "
                         f"times must be finite and >= 0")
    back = np.flatnonzero(np.diff(times) < 0)
    if back.size:
        i = back[0] + 1
        raise InputError(f"{source}: arrival times are not sorted (arrival {i + 1}, {float(times[i])!r}, "
                         f"comes before arrival {i}, {float(times[i - 1])!r})")
    return times


MAX_ARRIVAL_BYTES = 64 << 20


def _arrival_text(path) -> str:
    """The UTF-8 text of an arrival trace: a regular file (never a FIFO, which would block) of a
    bounded size. (The simulator may not import refimpl's file reader, only its trace schema.)"""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"--arrivals {path}: not a regular file")
        if info.st_size > MAX_ARRIVAL_BYTES:
            raise InputError(f"--arrivals {path}: larger than {MAX_ARRIVAL_BYTES >> 20} MiB")
        with open(path, "rb") as f:
            data = f.read(MAX_ARRIVAL_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"--arrivals {path}: no such file") from None
    except OSError as exc:
        raise InputError(f"--arrivals {path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"--arrivals {path}: not UTF-8 text (byte {exc.start})") from None


def read_arrivals(path: str | Path) -> np.ndarray:
    """An arrival trace: one time in seconds per line (blank lines and # comments skipped)."""
    text = _arrival_text(path)
    times = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                times.append(float(line))
            except ValueError:
                raise InputError(f"--arrivals {path}:{lineno}: not a number of seconds: {line[:40]!r}") from None
    return check_arrivals(times, f"--arrivals {path}")


@dataclass
class Request:
    """One request: when it arrived, its prompt, its decoding outcomes, and what happened to it."""

    arrival: float
    prompt_tokens: int
    outcomes: Outcomes
    done_steps: int = 0
    context: int = 0
    tokens: int = 0
    first_token: float = math.nan
    finish: float = math.nan

    @property
    def finished(self) -> bool:
        return self.done_steps >= self.outcomes.emitted.size


@dataclass
class ServingResult:
    """One method served: per-request times, and the metrics over them."""

    method: str
    requests: list[Request] = field(repr=False)
    seconds: float
    steps: int
    mean_batch: float
    busy: dict

    def metrics(self) -> dict:
        arrival = np.array([r.arrival for r in self.requests])
        first = np.array([r.first_token for r in self.requests])
        finish = np.array([r.finish for r in self.requests])
        tokens = np.array([r.tokens for r in self.requests])
        span = finish.max() - arrival.min()
        many = tokens > 1
        tpot = (finish[many] - first[many]) / (tokens[many] - 1)
        return {
            "requests": len(self.requests),
            "tokens": int(tokens.sum()),
            "seconds": float(span),
            "throughput_tokens_per_s": float(tokens.sum() / span) if span > 0 else 0.0,
            "throughput_requests_per_s": float(len(self.requests) / span) if span > 0 else 0.0,
            "ttft_s": _percentiles(first - arrival),
            "tpot_s": _percentiles(tpot),
            "latency_s": _percentiles(finish - arrival),
            "mean_batch": self.mean_batch,
            "steps": self.steps,
            "utilisation": {d: (b / self.seconds if self.seconds else 0.0) for d, b in self.busy.items()},
        }


def _percentiles(values: np.ndarray) -> dict:
    if values.size == 0:
        return {f"p{p}": 0.0 for p in PERCENTILES}
    return {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}


def _one_token_steps(outcomes: Outcomes) -> Outcomes:
    """Plain decoding of the same tokens: one step per token."""
    n = int(outcomes.emitted.sum())
    return Outcomes(np.zeros(n, int), np.zeros(n, int), np.ones(n, int), np.ones(n, bool))


def _requests(workload: Workload, config: SimConfig, arrivals: np.ndarray, method: str) -> list[Request]:
    """The workload's first len(arrivals) prompts, as requests arriving at `arrivals`."""
    gamma = config.gamma
    prompts = []
    if workload.traces is not None:
        for trace in workload.traces:
            decode = [r for r in trace.records if not r.prefill]
            prompts.append((trace.header.prompt_tokens, outcomes_of(decode)))
            if len(prompts) == arrivals.size:
                break
    else:
        index = 0
        for task in workload.tasks:
            for _ in range(task.prompts):
                if len(prompts) == arrivals.size:
                    break
                outcomes = synthesize_outcomes(workload.acceptance, gamma, task.new_tokens - 1, workload.seed,
                                               index)
                prompts.append((task.prompt_tokens, outcomes))
                index += 1
    if len(prompts) < arrivals.size:
        raise InputError(f"arrivals: {arrivals.size} requests but the workload has only {len(prompts)} prompts")
    if method == "ar":
        prompts = [(p, _one_token_steps(o)) for p, o in prompts]
    return [Request(float(t), p, o) for t, (p, o) in zip(arrivals, prompts)]


class _Shapers:
    """Per batch size, the function that shapes one request's next decoding step for `method`."""

    def __init__(self, method: str, config: SimConfig):
        self.method, self.config, self.cache = method, config, {}

    def __call__(self, batch: int):
        shaper = self.cache.get(batch)
        if shaper is None:
            c = self.config
            sized = replace(c, batch=batch, kappa=c.kappa or kappa_for_batch(batch),
                            ss_streams=c.ss_streams or ss_streams_for_batch(batch))
            shaper = self.cache[batch] = None if self.method == "ar" else _step_shaper(self.method,
                                                                                     shape_for(sized))
        return shaper


def _next_record(request: Request, shaper) -> StepRecord:
    i, o = request.done_steps, request.outcomes
    if shaper is None:                                        # ar: one token per pass
        return StepRecord(request.context, 1, 0, 0, 0, 0, 1)
    return shaper(request.context, int(o.proposed[i]), int(o.accepted[i]), int(o.emitted[i]),
                  bool(o.coverage_hit[i]))


def _busy_period(sim: Simulation, requests: list[Request], cursor: list[int], max_batch: int, shapers,
                 batches: list[int]):
    """Batched steps while the server has work: admissions (prefill steps) and decoding steps."""
    env, running = sim.env, []
    while True:
        new = []
        while cursor[0] < len(requests) and requests[cursor[0]].arrival <= env.now \
                and len(running) + len(new) < max_batch:
            new.append(requests[cursor[0]])
            cursor[0] += 1
        if new:
            yield _merge([_prefill_record(shapers.method, r.prompt_tokens) for r in new])
            for r in new:
                r.first_token, r.tokens, r.context = env.now, 1, r.prompt_tokens
                if r.finished:
                    r.finish = env.now
                else:
                    running.append(r)
            batches.append(len(new))
            continue
        if not running:
            return
        shaper = shapers(len(running))
        yield _merge([_next_record(r, shaper) for r in running])
        batches.append(len(running))
        for r in running:
            emitted = int(r.outcomes.emitted[r.done_steps])
            r.tokens += emitted
            r.context += emitted
            r.done_steps += 1
            if r.finished:
                r.finish = env.now
        running = [r for r in running if not r.finished]


def serve_method(method: str, workload: Workload, config: SimConfig, arrivals, max_batch: int | None = None,
                 costs=None) -> ServingResult:
    """Serve the workload's prompts, arriving at `arrivals`, with `method` under continuous batching."""
    _check_method(method)
    arrivals = check_arrivals(arrivals)
    max_batch = config.batch if max_batch is None else max_batch
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise InputError(f"--batch: the most sequences in a batch must be an integer >= 1, got {max_batch!r}")
    costs = costs if costs is not None else HardwareCosts(config)
    requests = _requests(workload, config, arrivals, method)
    sim = Simulation(0, config.draft_on_target)
    shapers, cursor, batches = _Shapers(method, config), [0], []

    def server():
        while cursor[0] < len(requests):
            wait = requests[cursor[0]].arrival - sim.env.now
            if wait > 0:
                yield sim.env.timeout(wait)
            steps = _busy_period(sim, requests, cursor, max_batch, shapers, batches)
            yield sim.env.process(METHODS[method](sim, steps, costs))

    seconds = sim.run(server())
    return ServingResult(method, requests, seconds, len(batches), float(np.mean(batches)) if batches else 0.0,
                         dict(sim.busy))


def serve(workload: Workload, config: SimConfig, methods, arrivals, max_batch: int | None = None,
          costs=None) -> dict[str, ServingResult]:
    """`serve_method` for each of `methods` on the same requests and arrivals; results by method."""
    costs = costs if costs is not None else HardwareCosts(config)
    names = list(dict.fromkeys(methods))
    for name in names:
        _check_method(name)
    return {name: serve_method(name, workload, config, arrivals, max_batch, costs) for name in names}
