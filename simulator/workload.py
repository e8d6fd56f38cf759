"""Workloads: traces read from files or synthesised from acceptance models, shaped per method.

A decoding run of one prompt is a trace (header + step records, `refimpl.trace`).
What a method does with the same acceptance outcomes differs only in the shape
of each step (rows in the target pass, draft passes, branches), so every trace
is reduced to its *outcomes* (per decode step: proposed, accepted, emitted,
coverage hit) and re-shaped for the method being simulated:

- a trace is replayed as its own method unchanged (Mirror-SD records without
  ``coverage_hit`` draw it from the coverage model);
- any trace replays as ``ar`` (one token per pass, same generated tokens);
- chain-drafting traces (``sd``, ``mirror``, ``mirror+ss``) replay as one
  another: Mirror-SD changes the schedule, not the acceptance law (mirror-sd.md §3.6).

Synthetic outcomes use common random numbers: the uniforms of prompt i depend
only on (seed, i), so every method and every coverage value sees the same
acceptance sequence, and a higher coverage never turns a hit into a miss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from refimpl.trace import MAX_CONTEXT, MAX_STEP, StepRecord, TraceHeader, read_trace

from .config import Drafting
from .errors import InputError

CHAIN_METHODS = ("sd", "mirror", "mirror+ss")
MIRROR_METHODS = ("mirror", "mirror+ss")


@dataclass(frozen=True)
class Task:
    """A Spec-Bench task as lengths only: prompts, prompt tokens, generated tokens each."""

    name: str
    prompts: int
    prompt_tokens: int
    new_tokens: int


#: Spec-Bench's six tasks (80 prompts each, 480 in all; mirror-sd.md §10.1). The token
#: lengths are estimates, not measurements: prompt words from §10.1 (summarization
#: ~571 words, RAG ~509, QA ~9) at ~1.3 tokens/word plus ~40 tokens of chat template;
#: generation lengths are typical answer lengths under max_new_tokens = 1024.
SPEC_BENCH = {
    "multi_turn": Task("multi_turn", 80, 120, 400),
    "translation": Task("translation", 80, 90, 80),
    "summarization": Task("summarization", 80, 790, 130),
    "qa": Task("qa", 80, 55, 250),
    "math_reasoning": Task("math_reasoning", 80, 130, 260),
    "rag": Task("rag", 80, 710, 220),
}


@dataclass(frozen=True)
class AcceptanceModel:
    """Acceptance of draft tokens and coverage of Mirror-SD's early-exit candidates.

    `alpha`: the probability that draft token j is accepted given tokens 1..j-1
    were, one number (i.i.d., the classic model of Leviathan et al.) or a
    per-position profile (its last value repeats past its end).
    `coverage`: Ω_κ, the probability that the target's correction at rejection
    depth τ = A + 1 is among the early exit's top-κ, one number or a profile by τ.
    """

    alpha: float | tuple[float, ...] = 0.8
    coverage: float | tuple[float, ...] = 1.0

    def __post_init__(self):
        for name in ("alpha", "coverage"):
            values = np.atleast_1d(np.asarray(getattr(self, name), dtype=float))
            if values.size == 0 or not np.all((values >= 0) & (values <= 1)):
                raise InputError(f"--{name if name != 'alpha' else 'acceptance'}: "
                                 f"probabilities must lie in [0, 1], got {getattr(self, name)!r}")

    def alphas(self, gamma: int) -> np.ndarray:
        return _profile(self.alpha, gamma)

    def coverages(self, gamma: int) -> np.ndarray:
        return _profile(self.coverage, gamma + 1)


def _profile(value, length: int) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, dtype=float))
    if values.size >= length:
        return values[:length]
    return np.concatenate([values, np.full(length - values.size, values[-1])])


@dataclass
class Outcomes:
    """Per decode step of one prompt: what was proposed, accepted, emitted, and covered."""

    proposed: np.ndarray
    accepted: np.ndarray
    emitted: np.ndarray
    coverage_hit: np.ndarray  # bool; meaningful for Mirror-SD only


@dataclass(frozen=True)
class Shape:
    """The per-method parameters that decide the shape of a step."""

    gamma: int = 7
    kappa: int = 8
    tree_nodes: int | None = None     # rows of a tree method's target pass; default γ + 1
    ss_tokens: int = 3                # tokens per draft pass with Speculative Streaming
    branches: int | None = None       # Mirror-SD rollouts per step; default κ·(γ + 1)


def _uniforms(seed: int, prompt: int, purpose: int, shape) -> np.ndarray:
    return np.random.default_rng([seed, prompt, purpose]).random(shape)


def synthesize_outcomes(model: AcceptanceModel, gamma: int, budget: int, seed: int,
                        prompt: int) -> Outcomes:
    """Decode steps of one prompt until they have emitted `budget` tokens."""
    steps = max(budget, 0)
    u = _uniforms(seed, prompt, 0, (steps, gamma))
    accepted = np.cumprod(u < model.alphas(gamma), axis=1).sum(axis=1) if gamma else np.zeros(steps, int)
    emitted = accepted + 1
    done = np.cumsum(emitted)
    n = int(np.searchsorted(done, budget)) + 1 if steps else 0
    accepted, emitted = accepted[:n].astype(int), emitted[:n].astype(int)
    if n:
        emitted[-1] -= int(done[n - 1]) - budget      # the last step stops at the budget
    hit = _draw_coverage(model, gamma, accepted, seed, prompt)
    return Outcomes(np.full(n, gamma, dtype=int), accepted, emitted, hit)


def outcomes_of(records: list[StepRecord]) -> Outcomes:
    """The outcomes of a trace's decode steps (prefill records left out)."""
    steps = [r for r in records if not r.prefill]
    return Outcomes(np.array([r.proposed for r in steps], dtype=int),
                    np.array([r.accepted for r in steps], dtype=int),
                    np.array([r.emitted for r in steps], dtype=int),
                    np.array([bool(r.coverage_hit) for r in steps], dtype=bool))


def _prefill_record(method: str, prompt_tokens: int) -> StepRecord:
    draft = method in CHAIN_METHODS or method == "eagle"
    return StepRecord(context=0, target_tokens=max(prompt_tokens, 1), draft_passes=int(draft),
                      draft_tokens_per_pass=max(prompt_tokens, 1) if draft else 0,
                      proposed=0, accepted=0, emitted=1, prefill=True)


def shape_records(method: str, prompt_tokens: int, outcomes: Outcomes, shape: Shape,
                  prefill: bool = True) -> list[StepRecord]:
    """The step records of `method` for these outcomes (and a prefill record first, if asked)."""
    records = [_prefill_record(method, prompt_tokens)] if prefill else []
    context = prompt_tokens
    if method == "ar":
        total = int(outcomes.emitted.sum())
        records += [StepRecord(context + i, 1, 0, 0, 0, 0, 1) for i in range(total)]
        return records
    step = _step_shaper(method, shape)
    for proposed, accepted, emitted, hit in zip(outcomes.proposed.tolist(), outcomes.accepted.tolist(),
                                                outcomes.emitted.tolist(), outcomes.coverage_hit.tolist()):
        records.append(step(context, proposed, accepted, emitted, hit))
        context += emitted
    return records


def _step_shaper(method: str, shape: Shape):
    """A function (context, proposed, accepted, emitted, hit) -> StepRecord for `method`."""
    tree = shape.tree_nodes

    def chain(context, proposed, accepted, emitted, hit):
        return StepRecord(context, proposed + 1, proposed, 1, proposed, accepted, emitted)

    def tree_step(draft_passes):
        def make(context, proposed, accepted, emitted, hit):
            return StepRecord(context, tree or proposed + 1, draft_passes(proposed), 1,
                              proposed, accepted, emitted)
        return make

    def mirror(ss_tokens):
        def make(context, proposed, accepted, emitted, hit):
            passes = math.ceil(proposed / ss_tokens)
            branches = shape.branches or shape.kappa * (proposed + 1)
            return StepRecord(context, proposed + 1, passes, ss_tokens if passes else 0, proposed,
                              accepted, emitted, branches=branches, coverage_hit=bool(hit))
        return make

    shapers = {
        "sd": chain,
        "ss": tree_step(lambda proposed: 0),
        "medusa": tree_step(lambda proposed: 1),
        "eagle": tree_step(lambda proposed: proposed),
        "hydra": tree_step(lambda proposed: proposed),
        "lookup": lambda context, proposed, accepted, emitted, hit: StepRecord(
            context, proposed + 1, 0, 0, proposed, accepted, emitted),
        "mirror": mirror(1),
        "mirror+ss": mirror(max(shape.ss_tokens, 1)),
    }
    if method not in shapers:
        raise InputError(f"--methods: unknown method {method!r} (known: ar, {', '.join(shapers)})")
    return shapers[method]


@dataclass
class Trace:
    """One prompt's decoding, as read from a file or synthesised."""

    header: TraceHeader
    records: list[StepRecord]
    source: str = "synthetic"

    @property
    def has_prefill(self) -> bool:
        return bool(self.records) and self.records[0].prefill


def load_traces(paths: list[str]) -> list[Trace]:
    """Read trace files (one prompt each); schema faults, and header models that hwmodels
    cannot time, surface as one-line InputErrors."""
    traces = []
    for path in paths:
        header, records = read_trace(path)
        if not records:
            raise InputError(f"{path}: trace has no step records")
        for role in ("target", "draft"):
            trace_model(header, role, path)
        traces.append(Trace(header, records, source=str(path)))
    return traces


def trace_model(header: TraceHeader, role: str, source="trace"):
    """The hwmodels shape the header names for `role` ("target" or "draft"; None for no draft):
    a catalog name, or a config.json-style shape (named by its "name" key)."""
    import hwmodels

    named = getattr(header, role)
    if named is None:
        return None
    try:
        if isinstance(named, dict):
            return hwmodels.ModelShape.from_config(str(named.get("name", f"{role} of {source}"))[:60], named)
        return hwmodels.get_model(named)
    except hwmodels.InputError as exc:
        raise InputError(f"{source}:1: header's {role}: {exc}") from None
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise InputError(f"{source}:1: header's {role} is not a model shape ({exc.__class__.__name__})") from None


def drafting_of(header: TraceHeader, source="trace") -> Drafting | None:
    """How an ss or medusa trace's draft passes ran (refimpl.trace's params of those methods, told
    by "draft_vocab"), or None for other methods and for traces without it (written before
    refimpl recorded it, or by hand): the simulator then prices the papers' layouts.
    InputError naming the trace when the params cannot describe it."""
    params = header.params
    if header.method not in ("ss", "medusa") or "draft_vocab" not in params:
        return None
    target = trace_model(header, "target", source)
    gamma = _header_count(params, "gamma", source, 1, MAX_STEP)
    vocab = _header_count(params, "draft_vocab", source, 1, target.vocab_size)
    if header.method == "medusa":
        return Drafting("medusa", gamma, vocab)
    layers = _header_count(params, "stream_layers", source, 1, target.n_layers)
    schedule = params.get("schedule", "deferred")
    if schedule not in ("deferred", "fused"):
        raise InputError(f"{source}:1: params' 'schedule' must be \"deferred\" or \"fused\", got {schedule!r:.40}")
    return Drafting("ss", gamma, vocab, layers, schedule)


def traces_rollout(traces: list[Trace]) -> str:
    """How the Mirror-SD traces' rollouts ran: "tree" when their headers say so (refimpl's),
    else "batched" (the paper's layout); InputError when they differ."""
    found = {t.header.params.get("rollout") == "tree" for t in traces if t.header.method in MIRROR_METHODS}
    if len(found) > 1:
        raise InputError("--trace: some mirror traces roll out as a tree and some do not; replay them separately")
    return "tree" if found == {True} else "batched"


def traces_drafting(traces: list[Trace]) -> Drafting | None:
    """The drafting (`drafting_of`) the ss or medusa traces share; None without such traces."""
    found = {drafting_of(t.header, t.source) for t in traces} - {None}
    if len(found) > 1:
        raise InputError(f"--trace: the ss/medusa traces draft differently ({', '.join(map(str, found))[:160]}); "
                         f"replay them separately")
    return found.pop() if found else None


def _header_count(params: dict, name: str, source, low: int, high: int) -> int:
    value = params.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InputError(f"{source}:1: params' {name!r} must be an integer in {low}..{high}, got {value!r:.40}")
    return value


def replay_methods(source: str) -> list[str]:
    """The methods a trace recorded with method `source` can be replayed as."""
    if source in CHAIN_METHODS:
        return ["ar", *CHAIN_METHODS]
    return ["ar"] if source == "ar" else ["ar", source]


def records_for(method: str, trace: Trace, shape: Shape, coverage: AcceptanceModel,
                index: int, seed: int) -> list[StepRecord]:
    """The records with which `method` replays `trace` (see the module docstring)."""
    source = trace.header.method
    if method == source and method not in MIRROR_METHODS:
        return trace.records
    if method != "ar" and method != source and not (source in CHAIN_METHODS and method in CHAIN_METHODS):
        raise InputError(f"{trace.source}: a {source!r} trace replays as {', '.join(replay_methods(source))}, "
                         f"not as {method!r}")
    outcomes = outcomes_of(trace.records)
    drawn = _draw_coverage(coverage, shape.gamma, outcomes.accepted, seed, index)
    if method == source:
        return _fill_mirror(trace.records, drawn, shape)
    if source not in MIRROR_METHODS or any(r.coverage_hit is None for r in trace.records if not r.prefill):
        outcomes.coverage_hit = drawn
    return shape_records(method, trace.header.prompt_tokens, outcomes, shape, prefill=trace.has_prefill)


def _draw_coverage(model: AcceptanceModel, gamma: int, accepted: np.ndarray, seed: int,
                   prompt: int) -> np.ndarray:
    """Coverage hits of a prompt's steps: the correction at depth A + 1 is covered with probability Ω."""
    v = _uniforms(seed, prompt, 1, accepted.size)
    return v < model.coverages(gamma)[np.minimum(accepted, gamma)]


def _fill_mirror(records: list[StepRecord], drawn: np.ndarray, shape: Shape) -> list[StepRecord]:
    """A Mirror-SD trace's records, with coverage and branches filled in where the trace left them out."""
    filled = []
    hits = iter(drawn.tolist())
    for record in records:
        if not record.prefill:
            hit = next(hits)
            if record.coverage_hit is None or record.branches is None:
                record = replace(record, coverage_hit=hit if record.coverage_hit is None else record.coverage_hit,
                                 branches=record.branches or shape.branches or shape.kappa * (record.proposed + 1))
        filled.append(record)
    return filled


def synthesize(method: str, tasks: list[Task], model: AcceptanceModel, shape: Shape, seed: int = 0,
               prefill: bool = True, target="qwen3-32b", draft="qwen3-0.6b") -> list[Trace]:
    """Synthetic traces of `method` for every prompt of `tasks` (prompt indices run across tasks);
    `target`/`draft` are only the names their headers give."""
    return list(iter_synthesize(method, tasks, model, shape, seed, prefill, target, draft))


def iter_synthesize(method: str, tasks: list[Task], model: AcceptanceModel, shape: Shape, seed: int = 0,
                    prefill: bool = True, target="qwen3-32b", draft="qwen3-0.6b"):
    """`synthesize`, one prompt at a time (memory: one prompt's records)."""
    index = 0
    for task in tasks:
        for _ in range(task.prompts):
            budget = task.new_tokens - 1 if prefill else task.new_tokens  # the prefill emits one
            outcomes = synthesize_outcomes(model, shape.gamma, budget, seed, index)
            header = TraceHeader(method=method, params={"gamma": shape.gamma, "kappa": shape.kappa},
                                 target=target, draft=draft if method != "ar" else None, seed=seed,
                                 prompt_tokens=task.prompt_tokens)
            records = shape_records(method, task.prompt_tokens, outcomes, shape, prefill=prefill)
            yield Trace(header, records, source=f"synthetic:{task.name}#{index}")
            index += 1


@dataclass
class Workload:
    """What every method decodes: recorded traces, or synthetic prompts from an acceptance model.

    With `traces` set, they are replayed (coverage of Mirror-SD records without it
    is drawn from `acceptance`); otherwise every prompt of `tasks` is synthesised.
    """

    tasks: list[Task] | None = None
    acceptance: AcceptanceModel = AcceptanceModel()
    traces: list[Trace] | None = None
    seed: int = 0
    prefill: bool = True

    def __post_init__(self):
        if self.traces is None and not self.tasks:
            raise InputError("workload: give traces or at least one task")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise InputError(f"--seed: must be an integer >= 0, got {self.seed!r}")
        for task in self.tasks or ():
            if task.prompts < 1 or task.prompt_tokens < 1 or task.new_tokens < 1:
                raise InputError(f"--prompts/--prompt-tokens/--new-tokens: task {task.name} needs at least "
                                 f"1 prompt of 1 token generating 1 token, got {task.prompts}/"
                                 f"{task.prompt_tokens}/{task.new_tokens}")
        self.check_context(MAX_CONTEXT, "the trace schema")

    def check_context(self, limit: int, model: str) -> None:
        """InputError unless every prompt's KV context fits in `limit` tokens (`model`'s window); the
        last generated token needs no cache slot (llama2.c's rule)."""
        for task in (self.tasks or []) if self.traces is None else []:
            needed = task.prompt_tokens + task.new_tokens - 1       # the last token needs no cache slot
            if needed > limit:
                raise InputError(f"--new-tokens/--prompt-tokens: task {task.name}'s {task.prompt_tokens} prompt + "
                                 f"{task.new_tokens} new tokens need {needed} tokens of context, more than "
                                 f"the {limit}-token context of {model}")
        for trace in self.traces or ():
            last = trace.records[-1]
            end = last.context + (last.target_tokens if last.prefill else last.emitted)
            if end > limit:
                raise InputError(f"{trace.source}: the trace reaches {end} tokens of context, more than "
                                 f"the {limit}-token context of {model}")

    def records(self, method: str, shape: Shape):
        """Step records shaped for `method`, one list per prompt: a generator, one prompt at a time."""
        if self.traces is None:
            return (t.records for t in iter_synthesize(method, self.tasks, self.acceptance, shape, self.seed,
                                                       self.prefill))
        return (records_for(method, trace, shape, self.acceptance, i, self.seed)
                for i, trace in enumerate(self.traces))
