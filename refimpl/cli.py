"""`mirrorstream generate`: decode a prompt with a real checkpoint on the CPU;
`mirrorstream oracle check`: compare another implementation's tokens with ours."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
import sys
import time

import numpy as np

from refimpl.checkpoints import find_tokenizer, load_model, resolve_model
from refimpl.decoding import METHODS, generate
from refimpl.errors import InputError, check_output_path
from refimpl import oracle
from refimpl.oracle import check, check_ids, read_token_file
from refimpl.sampling import SamplingSettings
from refimpl.tokenizer import StreamDecoder, load_tokenizer
from refimpl.trace import TraceHeader, mean_accepted, write_trace


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text from a checkpoint on the CPU",
                              description="Decode a prompt with a llama2.c checkpoint; the output is "
                                          "bit-identical whichever method is used.")
    add_model_options(p)
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate at most (default 256)")
    p.add_argument("--method", choices=sorted(METHODS), default="ar", help="decoding method (default ar)")
    p.add_argument("--ignore-eos", action="store_true", help="decode past BOS/EOS as ordinary tokens")
    add_method_options(p)
    p.add_argument("--trace", metavar="FILE", help="write one JSONL record per target forward pass")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.set_defaults(func=run_generate)
    register_oracle(subparsers)


def add_method_options(p: argparse.ArgumentParser) -> None:
    """Options of the speculative methods (sd, lookup, mirror); ar ignores them."""
    g = p.add_argument_group("speculative methods")
    draft = g.add_mutually_exclusive_group()
    draft.add_argument("--draft", metavar="PATH", help="sd, mirror: draft checkpoint with the target's vocabulary")
    draft.add_argument("--draft-layers", type=int, metavar="K",
                       help="sd, mirror: draft = the target's first K layers with its final norm and classifier")
    g.add_argument("--gamma", type=int, help="sd, lookup, mirror: tokens proposed per step, tree depth (default 4); "
                                             "ss, medusa: streams/heads used (default: all trained)")
    g.add_argument("--tree-k", type=int, help="sd: children per tree node (default 1: a chain); "
                                              f"ss, medusa: top-k per level (default {SS_TREE_K})")
    g.add_argument("--verify", choices=("match", "rejection"), default="match",
                   help="sd, ss, medusa: exact match (default; ar's very tokens) or rejection sampling "
                        "(ar's distribution)")
    g.add_argument("--ngram", type=int, default=2, help="lookup: longest n-gram to look up (default 2)")
    g.add_argument("--exit-layer", type=int, metavar="L",
                   help="mirror: early-exit layer of the target, 1..N-1 (default N/2)")
    g.add_argument("--kappa", type=int, default=8, help="mirror: early-exit candidates per window position (default 8)")
    g.add_argument("--max-branches", type=int, metavar="B",
                   help="mirror: branch rollouts per step at most, the likeliest kept (default all: kappa*(gamma+1))")
    g.add_argument("--draft-streams", metavar="FILE",
                   help="mirror: speculative streams trained for the draft (train-streams, with --layers K for "
                        "a cut draft): each draft pass emits several tokens")
    g.add_argument("--overlap", action="store_true",
                   help="mirror: run the draft's rollouts on a second thread beside the target's last layers")
    g.add_argument("--streams", metavar="FILE",
                   help="ss: stream parameters (default: the shipped ones for the model, refimpl/data)")
    g.add_argument("--heads", metavar="FILE", help="medusa: heads (default: the shipped ones for the model)")
    g.add_argument("--schedule", choices=("fused", "deferred"), default="fused",
                   help="ss: every node's streams inside the verification pass (the paper's fused pass; default, "
                        "faster here with one stream layer) or the accepted node's after verification (same bits)")
    g.add_argument("--prune-threshold", type=float, default=SS_PRUNE_THRESHOLD,
                   help=f"ss: drop tree children whose early-exit transition probability is below this, "
                        f"in [0, 1] (default {SS_PRUNE_THRESHOLD}: no pruning)")


def method_params(args, model) -> tuple[dict, dict, object]:
    """(keyword arguments of the method, its trace-header params, the draft model or None)."""
    if args.method in ("sd", "mirror"):
        if args.draft:
            draft = load_model(resolve_model(args.draft))
            warm_up(draft)
        elif args.draft_layers is not None:
            draft = model.first_layers(args.draft_layers)
        else:
            raise InputError(f"--method {args.method} needs a draft: --draft PATH or --draft-layers K")
        gamma = 4 if args.gamma is None else args.gamma
        if args.method == "mirror":
            exit_layer = model.config.n_layers // 2 if args.exit_layer is None else args.exit_layer
            params = dict(gamma=gamma, exit_layer=exit_layer, kappa=args.kappa,
                          max_branches=args.max_branches, overlap=args.overlap)
        else:
            params = dict(gamma=gamma, tree_k=1 if args.tree_k is None else args.tree_k, verify=args.verify)
        header = dict(params, draft_layers=args.draft_layers) if args.draft_layers else dict(params)
        if args.method == "mirror":
            header["rollout"] = "tree"   # how refimpl's rollouts run (refimpl.trace)
        if args.method == "mirror" and args.draft_streams:
            from refimpl.streams import load_streams

            header["draft_streams"] = args.draft_streams
            return dict(params, draft=draft, draft_streams=load_streams(args.draft_streams, draft)), header, draft
        return dict(params, draft=draft), header, draft
    if args.method == "lookup":
        params = dict(gamma=4 if args.gamma is None else args.gamma, ngram=args.ngram)
        return params, dict(params), None
    if args.method in ("ss", "medusa"):
        return self_drafting_params(args, model)
    return {}, {}, None


SS_TREE_K = 1
SS_PRUNE_THRESHOLD = 0.0


def self_drafting_params(args, model) -> tuple[dict, dict, object]:
    """ss and medusa: the stream or head parameters (the shipped ones by default) and settings."""
    from refimpl.decoding.medusa import load_heads
    from refimpl.streams import load_streams, shipped

    tree_k = SS_TREE_K if args.tree_k is None else args.tree_k
    params = dict(gamma=args.gamma, tree_k=tree_k, verify=args.verify)
    if args.method == "ss":
        path = args.streams or shipped(model, "streams")
        params.update(schedule=args.schedule, prune_threshold=args.prune_threshold)
        loaded = dict(streams=load_streams(path, model))
    else:
        path = args.heads or shipped(model, "heads")
        loaded = dict(heads=load_heads(path, model))
    spec = next(iter(loaded.values()))
    gamma = spec.gamma if args.gamma is None else args.gamma
    header = dict(params, gamma=gamma, file=str(path))
    header["draft_vocab"] = model.config.vocab_size if spec.vocabulary is None else len(spec.vocabulary)
    layers = spec.n_layers if args.method == "ss" else 1
    if args.method == "ss":
        header["stream_layers"] = layers
    shape = model.first_layers(layers)    # the trace's draft: the shape the stream/head rows run through
    shape.name = f"{model.name} streams (last {layers} layers)" if args.method == "ss" else f"{model.name} heads"
    return dict(params, **loaded), header, shape


def add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    """Model, prompt, sampling and thread options, shared with `oracle check` (where, with
    --reference, model and prompt are not required)."""
    p.add_argument("--model", required=required, help="checkpoint path, or a name in $MIRRORSTREAM_MODELS")
    p.add_argument("--tokenizer", help="tokenizer.model or tokenizer.bin (default: beside the checkpoint)")
    prompt = p.add_mutually_exclusive_group(required=required)
    prompt.add_argument("--prompt", help="prompt text (BOS is prepended)")
    prompt.add_argument("--prompt-ids", help="comma-separated token ids, used exactly as given")
    p.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default 0)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (1: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the position-keyed sampler")
    p.add_argument("--threads", type=int, help="numba threads (default: all cores)")


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    import numba

    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise InputError(f"--threads {threads}: must be between 1 and {numba.config.NUMBA_NUM_THREADS}")
    numba.set_num_threads(threads)


def parse_ids(text: str, option: str = "--prompt-ids") -> list[int]:
    parts = [part for part in text.replace(" ", "").split(",") if part != ""]
    if not all(_is_int_text(part) for part in parts):
        raise InputError(f"{option} {text[:80]!r}: expected comma-separated integers")
    if not parts:
        raise InputError(f"{option}: no token ids given")
    return [int(part) for part in parts]


def _is_int_text(text: str) -> bool:
    digits = text[1:] if text[:1] in "+-" else text
    return 0 < len(digits) <= 4000 and digits.isascii() and digits.isdigit()


def check_options(args) -> None:
    """Range-check every option that needs no model, before any work: a bad value must
    fail at once, never after a model load or a long computation."""
    _at_least(args, "max_new_tokens", 0)
    for name in ("gamma", "tree_k", "ngram", "draft_layers", "threads", "kappa", "max_branches", "exit_layer"):
        _at_least(args, name, 1)
    for name in ("near_tie", "logprob_tolerance"):
        value = getattr(args, name, None)
        if value is not None and not 0 <= value < float("inf"):
            raise InputError(f"--{name.replace('_', '-')} {value}: must be a finite number >= 0")
    if args.prompt is not None:
        try:
            args.prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"--prompt: not valid UTF-8 text (a stray byte at character {exc.start})") from None
    if getattr(args, "trace", None):
        check_output_path(args.trace, "--trace")


def _at_least(args, name: str, low: int) -> None:
    value = getattr(args, name, None)
    if value is not None and value < low:
        raise InputError(f"--{name.replace('_', '-')} {value}: must be >= {low}")


def load_inputs(args, warm: bool = True):
    """(model, tokenizer or None, prompt ids, sampling settings, startup seconds) from the options;
    warm=False leaves the first pass (`warm_up`) to the caller."""
    check_options(args)
    set_threads(args.threads)
    settings = SamplingSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                ignore_eos=getattr(args, "ignore_eos", False))
    prompt_ids = parse_ids(args.prompt_ids) if args.prompt is None else None
    start = time.perf_counter()
    path = resolve_model(args.model)
    model = load_model(path)
    tokenizer_path = args.tokenizer or find_tokenizer(path)
    tokenizer = load_tokenizer(tokenizer_path, model.config.vocab_size) if tokenizer_path else None
    if args.prompt is not None:
        if tokenizer is None:
            raise InputError(f"--prompt needs a tokenizer: none beside {path}; give --tokenizer")
        check_prompt_length(args.prompt, tokenizer, model.config.seq_len)
        bos = [] if model.config.bos_id is None else [model.config.bos_id]
        prompt_ids = bos + tokenizer.encode(args.prompt)
    else:
        check_ids(prompt_ids, model.config.vocab_size, "--prompt-ids")
    model.check_tokens(np.asarray(prompt_ids), np.zeros(len(prompt_ids), dtype=np.int64))
    if warm:
        warm_up(model)
    return model, tokenizer, prompt_ids, settings, time.perf_counter() - start


def check_prompt_length(prompt: str, tokenizer, seq_len: int) -> None:
    """Refuse, before encoding it, a prompt too long for the sequence whatever its
    tokenisation: one token spells at most tokenizer.max_piece_bytes bytes."""
    least = -(-len(prompt.encode("utf-8")) // max(tokenizer.max_piece_bytes, 1))
    if least + 1 >= seq_len:
        raise InputError(f"--prompt: {len(prompt)} characters make at least {least} tokens, but the model's "
                         f"sequence length is {seq_len}")


def warm_up(model) -> None:
    """One tiny pass, so that numba compiles (first use) or loads its cache before timing."""
    model.forward([0], [0], model.new_cache(2))


def run_generate(args) -> int:
    model, tokenizer, prompt_ids, settings, startup_s = load_inputs(args, warm=False)
    if args.gamma is not None and args.gamma >= model.config.seq_len:   # before any method sizes a window by it
        raise InputError(f"--gamma {args.gamma}: must be below the model's sequence length {model.config.seq_len}")
    params, header_params, draft = method_params(args, model)
    steps = METHODS[args.method](model, prompt_ids, settings, args.max_new_tokens, **params)  # checks params
    start = time.perf_counter()
    warm_up(model)   # after the method's checks: a bad option fails before numba loads its kernels
    startup_s += time.perf_counter() - start
    stream = None
    if not args.json and tokenizer is not None:
        stream = StreamDecoder(tokenizer, previous=prompt_ids[-1])
        if args.prompt:
            sys.stdout.write(args.prompt)

        def on_tokens(tokens):
            sys.stdout.write("".join(stream.push(t) for t in tokens))
            sys.stdout.flush()
    else:
        on_tokens = None
    result = generate(steps, prompt_ids, on_tokens)
    stats = generation_stats(model, result, startup_s)
    if args.trace:
        header = TraceHeader(method=args.method, params=header_params, target=model_shape(model),
                             draft=model_shape(draft) if draft is not None else None,
                             seed=settings.seed, prompt_tokens=len(prompt_ids))
        try:
            write_trace(args.trace, header, result.records)
        except OSError as exc:
            raise InputError(f"--trace {args.trace}: cannot write ({exc.strerror or exc})") from None
    if args.json:
        text = tokenizer.decode(result.tokens) if tokenizer is not None else None
        print(json.dumps({"prompt_ids": prompt_ids, "tokens": result.tokens, "text": text, "stats": stats}))
    else:
        if stream is not None:
            sys.stdout.write(stream.flush() + "\n")
        else:
            print(",".join(map(str, result.tokens)))
        sys.stdout.flush()  # the text ends before the stats line on a shared terminal
        print(f"{stats['tokens_per_s']:.1f} tokens/s, {stats['weight_gb_per_s']:.2f} GB/s of weights, "
              f"{stats['target_calls']} target passes, {stats['mean_accepted']:.2f} tokens per pass, "
              f"stop: {stats['stop_reason']}", file=sys.stderr)
    return 0


def generation_stats(model, result, startup_s: float) -> dict:
    """The --json stats. mean_accepted: `refimpl.trace.mean_accepted` (tokens per decoding pass,
    bonus included, prefill left out; 1.0 for ar); acceptance_histogram maps that count to the
    number of target passes with it (the prefill's counted as 1)."""
    seconds = max(result.seconds, 1e-9)
    lengths = [r.accepted + 1 for r in result.records]
    histogram = {str(n): lengths.count(n) for n in sorted(set(lengths))}
    return {
        "tokens_per_s": len(result.tokens) / seconds,
        "new_tokens": len(result.tokens),
        "seconds": result.seconds,
        "target_calls": result.target_calls,
        "draft_calls": result.draft_calls,
        "mean_accepted": mean_accepted(result.records),
        "acceptance_histogram": histogram,
        "weight_gb_per_s": model.weight_bytes() * result.target_calls / seconds / 1e9,
        "stop_reason": result.stop_reason,
        "startup_s": startup_s,
    }


def model_shape(model) -> dict:
    """The model's shape for trace headers (config.json-style keys)."""
    c = model.config
    return {"name": model.name, "hidden_size": c.dim, "intermediate_size": c.hidden_dim,
            "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
            "num_key_value_heads": c.n_kv_heads, "vocab_size": c.vocab_size,
            "max_position_embeddings": c.seq_len, "tie_word_embeddings": c.shared_classifier}


def register_oracle(subparsers) -> None:
    p = subparsers.add_parser("oracle", help="check another implementation's output against the reference")
    sub = p.add_subparsers(dest="oracle_command", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="compare generated token ids with the reference",
                       description="Exit 0 when the ids equal the reference's (plain decoding with the same "
                                   "model, prompt and sampling options); 1 otherwise, with the first divergence, "
                                   "the top-5 logits there and the margin between the top two.")
    add_model_options(c, required=False)
    c.add_argument("--tokens", metavar="FILE",
                   help="their generated ids: a JSON list (or generate --json output) or one id per line")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--ignore-eos", action="store_true", help="the reference decodes past BOS/EOS")
    add_reference_check_options(c)
    c.set_defaults(func=run_oracle_check)
    register_oracle_reference(sub)


def run_oracle_check(args) -> int:
    """Exit 0 when equal, 1 when diverged, 2 for bad input (a --tokens file whose
    prompt_ids are not the prompt given included: the comparison would be meaningless)."""
    check_options(args)
    if args.reference or args.candidate:
        return run_reference_check(args)
    if args.model is None or (args.prompt is None and args.prompt_ids is None) or args.tokens is None:
        raise InputError("oracle check needs --model, --prompt or --prompt-ids, and --tokens "
                         "(or --reference REF.jsonl --candidate THEIRS.jsonl)")
    their = read_token_file(args.tokens)
    model, _, prompt_ids, settings, _ = load_inputs(args, warm=False)
    if their.prompt_ids is not None and their.prompt_ids != prompt_ids:
        raise InputError(f"--tokens {args.tokens}: its prompt_ids {_abbreviate(their.prompt_ids)} differ from "
                         f"the prompt given, {_abbreviate(prompt_ids)}")
    check_ids(their.tokens, model.config.vocab_size, "--tokens")
    report = check(model, prompt_ids, their.tokens, settings)
    print(json.dumps(report.to_dict()) if args.json else report.describe())
    return 0 if report.equal else 1


def _abbreviate(ids: list[int], shown: int = 8) -> str:
    text = ",".join(map(str, ids[:shown]))
    return f"[{text}{',...' if len(ids) > shown else ''}] ({len(ids)} ids)"


def add_reference_check_options(c: argparse.ArgumentParser) -> None:
    g = c.add_argument_group("checking a JSONL file against a reference file (no model needed)")
    g.add_argument("--reference", metavar="REF.jsonl", help="written by `mirrorstream oracle reference`")
    g.add_argument("--candidate", metavar="THEIRS.jsonl",
                   help='one object per prompt: {"id": ..., "tokens": [...], "logprobs": [...] (optional)}')
    g.add_argument("--near-tie", type=float, default=oracle.NEAR_TIE_LOGITS, metavar="LOGITS",
                   help="greedy divergence where the reference's logits of the two tokens differ by at most "
                        f"this much counts as a near-tie, which passes (default {oracle.NEAR_TIE_LOGITS})")
    g.add_argument("--logprob-tolerance", type=float, default=oracle.LOGPROB_TOLERANCE, metavar="NATS",
                   help=f"max |their - our| log-prob (default {oracle.LOGPROB_TOLERANCE})")


def run_reference_check(args) -> int:
    if not (args.reference and args.candidate):
        raise InputError("oracle check: --reference and --candidate go together")
    if args.near_tie < 0 or args.logprob_tolerance < 0:
        raise InputError("--near-tie and --logprob-tolerance must be >= 0")
    verdicts = oracle.check_files(args.reference, args.candidate, args.near_tie, args.logprob_tolerance)
    line = oracle.summary(verdicts)
    if args.json:
        print(json.dumps({"summary": line, "passed": all(v.passed for v in verdicts),
                          "prompts": [dict(asdict(v), passed=v.passed) for v in verdicts]}))
    else:
        for verdict in verdicts:
            print(verdict.describe())
        print(line)
    return 0 if all(v.passed for v in verdicts) else 1


def register_oracle_reference(sub) -> None:
    r = sub.add_parser("reference", help="write reference outputs for a prompts file (JSONL)",
                       description="Decode every prompt of a JSONL file with plain decoding and write one "
                                   "reference record per prompt: tokens, stop reason, per-token top-5 logits "
                                   "and log-probabilities; `oracle check --reference` compares another "
                                   "engine's JSONL with it.")
    r.add_argument("--model", required=True, help="checkpoint path, or a name in $MIRRORSTREAM_MODELS")
    r.add_argument("--tokenizer", help="tokenizer for text prompts (default: beside the checkpoint)")
    r.add_argument("--prompts", required=True, metavar="PROMPTS.jsonl",
                   help='one object per line: {"id": ..., "prompt": "text"} or {"prompt_ids": [...]}, '
                        'optionally "max_new_tokens"')
    r.add_argument("--out", required=True, metavar="REF.jsonl", help="where to write the references")
    r.add_argument("--max-new-tokens", type=int, default=32, help="per prompt, unless the line says (default 32)")
    r.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default 0)")
    r.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    r.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (1: off)")
    r.add_argument("--seed", type=int, default=0, help="seed of the position-keyed sampler")
    r.add_argument("--ignore-eos", action="store_true",
                   help="decode past BOS/EOS as ordinary tokens (as llama.cpp's and vLLM's ignore_eos)")
    r.add_argument("--threads", type=int, help="numba threads (default: all cores)")
    r.set_defaults(func=run_oracle_reference)


def run_oracle_reference(args) -> int:
    _at_least(args, "max_new_tokens", 0)
    check_output_path(args.out, "--out")
    set_threads(args.threads)
    settings = SamplingSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                ignore_eos=args.ignore_eos)
    path = resolve_model(args.model)
    model = load_model(path)
    tokenizer_path = args.tokenizer or find_tokenizer(path)
    tokenizer = load_tokenizer(tokenizer_path, model.config.vocab_size) if tokenizer_path else None
    prompts = oracle.read_prompts(args.prompts, tokenizer, model.config.bos_id)
    warm_up(model)
    start, generated = time.perf_counter(), 0
    lines = []
    for prompt in prompts:
        model.check_tokens(np.asarray(prompt["prompt_ids"]), np.zeros(len(prompt["prompt_ids"]), dtype=np.int64))
        limit = args.max_new_tokens if prompt["max_new_tokens"] is None else prompt["max_new_tokens"]
        record = oracle.reference(model, prompt["prompt_ids"], settings, limit, prompt["id"])
        generated += len(record["tokens"])
        lines.append(json.dumps(record))
    seconds = time.perf_counter() - start
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} references to {args.out}: {generated} tokens in {seconds:.2f} s "
          f"({generated / max(seconds, 1e-9):.1f} tokens/s)", file=sys.stderr)
    return 0
