"""`mirrorstream train-streams` and `train-heads`: train Speculative Streaming's stream
parameters, or Medusa-1 heads, for a checkpoint on the CPU (refimpl.train)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from refimpl.checkpoints import find_tokenizer, load_model, resolve_model
from refimpl.errors import InputError
from refimpl.train import (Progress, TrainSettings, self_distilled, settings_dict, text_sequences, train_medusa,
                           train_streams, training_vocabulary)


def register(subparsers) -> None:
    p = subparsers.add_parser("train-streams", help="train speculative streams for a checkpoint (CPU, minutes)",
                              description="Train stream embeddings and the pruning adapter of Speculative "
                                          "Streaming; the base model stays frozen (lossless).")
    add_options(p, "streams")
    p.add_argument("--stream-layers", type=int, default=2, help="N_s: layers with streams (default 2)")
    p.add_argument("--eta", type=int, default=16,
                   help="rank of the low-rank stream initialisation f_eta on stream rows (Eq. 3; 0: identity, "
                        "the stream embeddings alone; default 16)")
    p.add_argument("--layers", type=int, metavar="K",
                   help="train for the model's first K layers, the cut draft of `generate --method mirror "
                        "--draft-layers K --draft-streams OUT` (the full model still writes the training text)")
    p.set_defaults(func=run_train, kind="streams")
    h = subparsers.add_parser("train-heads", help="train Medusa-1 heads for a checkpoint (CPU, minutes)",
                              description="Train Medusa-1 heads (a residual block each, the shared classifier).")
    add_options(h, "heads")
    h.set_defaults(func=run_train, kind="heads", stream_layers=1, eta=0, layers=None)


def add_options(p, what: str) -> None:
    p.add_argument("--model", required=True, help="checkpoint path, or a name in $MIRRORSTREAM_MODELS")
    p.add_argument("--streams" if what == "streams" else "--heads", dest="gamma", type=int, default=3,
                   help=f"number of {what} (default 3)")
    steps, lr = (60, 0.03) if what == "streams" else (80, 0.01)   # the shipped files' settings
    p.add_argument("--steps", type=int, default=steps, help=f"optimiser steps (default {steps})")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate, decayed linearly (default {lr})")
    p.add_argument("--batch", type=int, default=4, help="sequences per step (default 4)")
    p.add_argument("--seq-len", type=int, default=96, help="tokens per training sequence (default 96)")
    p.add_argument("--sequences", type=int, default=40,
                   help="self-distilled sequences the target writes (default 40; ignored with --data)")
    p.add_argument("--data", metavar="FILE", help="train on this text (paragraphs) instead of self-distillation")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the initialisation (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.state.npz")
    p.add_argument("--threads", type=int, help="numba threads (default: all cores)")
    p.add_argument("--out", required=True, help="output safetensors file")


def check(args) -> None:
    for name, value, low in (("--streams/--heads", args.gamma, 1), ("--steps", args.steps, 1),
                             ("--batch", args.batch, 1), ("--seq-len", args.seq_len, 8),
                             ("--sequences", args.sequences, 1)):
        if value < low:
            raise InputError(f"{name} {value}: must be >= {low}")
    if not 0 <= args.eta <= 64:
        raise InputError(f"--eta {args.eta}: must be between 0 and 64")
    if args.gamma > 8:
        raise InputError(f"--streams/--heads {args.gamma}: at most 8")
    if not (0.0 < args.lr < 1.0):
        raise InputError(f"--lr {args.lr}: must be in (0, 1)")


def state_path(out: str) -> Path:
    return Path(out + ".state.npz")


def run_train(args) -> int:
    from refimpl.cli import set_threads

    check(args)
    set_threads(args.threads)
    path = resolve_model(args.model)
    model = load_model(path)
    if args.layers is not None and not 1 < args.layers <= model.config.n_layers:
        raise InputError(f"--layers {args.layers}: must be between 2 and the model's {model.config.n_layers} layers")
    trained = model if args.layers is None else model.first_layers(args.layers)   # --layers: a cut draft
    if args.kind == "streams" and not 1 <= args.stream_layers < trained.config.n_layers:
        raise InputError(f"--stream-layers {args.stream_layers}: must be between 1 and "
                         f"{trained.config.n_layers - 1}" + (f" (--layers {args.layers})" if args.layers else ""))
    if args.seq_len > model.config.seq_len:
        raise InputError(f"--seq-len {args.seq_len}: the model's sequence length is {model.config.seq_len}")
    settings = TrainSettings(gamma=args.gamma, n_layers=args.stream_layers, steps=args.steps, lr=args.lr,
                             batch=args.batch, seq_len=args.seq_len, seed=args.seed, eta=args.eta)
    state, sequences = None, None
    if args.resume:
        if not state_path(args.out).is_file():
            raise InputError(f"--resume: no training state {state_path(args.out)}")
        try:
            state = dict(np.load(state_path(args.out)))
            lengths = state.pop("data.lengths")
            flat = state.pop("data.tokens")
        except Exception:
            raise InputError(f"--resume: {state_path(args.out)} is not a readable training state") from None
        sequences = [list(map(int, chunk)) for chunk in np.split(flat, np.cumsum(lengths)[:-1])]
    elif args.data:
        tokenizer_path = find_tokenizer(path)
        if tokenizer_path is None:
            raise InputError(f"--data needs a tokenizer beside {path}")
        from refimpl.tokenizer import load_tokenizer

        sequences = text_sequences(args.data, load_tokenizer(tokenizer_path, model.config.vocab_size), args.seq_len)
    else:
        bar = Progress(args.sequences)
        sequences = self_distilled(model, args.sequences, args.seq_len, args.seed,
                                   lambda i, n: bar(i, "writing self-distillation text"))
    lengths = np.array([len(s) for s in sequences])
    data = {"data.lengths": lengths, "data.tokens": np.concatenate([np.asarray(s) for s in sequences])}

    def save_state(params_and_moments):
        np.savez(state_path(args.out), **params_and_moments, **data)

    trainer = train_streams if args.kind == "streams" else train_medusa
    result, metrics = trainer(trained, sequences, settings, state, Progress(args.steps), save_state)
    config = dict(settings_dict(settings), data=args.data or f"self-distilled:{args.sequences}", metrics=metrics,
                  model=path.name if args.layers is None else f"{path.name}[:{args.layers}]")
    if args.kind == "streams":
        from refimpl.streams import save_streams

        save_streams(args.out, result, config)
    else:
        from refimpl.decoding.medusa import MedusaHeads, save_heads
        from refimpl.streams import model_identity

        save_heads(args.out, MedusaHeads(result[0], result[1], model_identity(model), training_vocabulary(sequences)),
                   config)
    print(json.dumps({"out": args.out, **metrics}), file=sys.stderr)
    return 0
