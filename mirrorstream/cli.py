"""`mirrorstream` console script: one argparse tree, one subcommand module per package.

Each package contributes its subcommands through a `register(subparsers)` function
in its own `cli` module; a subcommand stores its handler with
`parser.set_defaults(func=handler)`, and the handler returns the exit status.

Anything a user can get wrong raises the package's input-error class; it is
printed here as one line on stderr with exit status 2, never a traceback. A bad
option (argparse's own errors) is one line and exit 2 too, with no usage dump.

Exit statuses: 0 success (for `oracle check`: equal), 1 a negative answer
(`oracle check`: diverged), 2 bad input, 3 an internal error (a bug: one line
naming the exception; MIRRORSTREAM_TRACEBACK=1 prints the traceback),
130 interrupted, 141 stdout closed early (SIGPIPE's status).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

COMMAND_MODULES = ("refimpl.cli", "refimpl.train_cli", "refimpl.convert", "refimpl.pull", "hwmodels.cli", "simulator.cli",
                   "experiments.cli")
ERROR_CLASSES = ("refimpl.errors:InputError", "hwmodels.errors:InputError", "simulator.errors:InputError",
                 "experiments.runner:ExperimentError")


def _load_optional(spec: str):
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            return None  # that package has no such module (yet)
        raise
    return getattr(module, attr) if attr else module


EXIT_BAD_INPUT = 2
EXIT_INTERNAL_ERROR = 3


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`PROG: error: ...`), exit status 2;
    its subparsers are of the same class (argparse makes them with type(parent))."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="mirrorstream",
        description="Lossless speculative decoding on the CPU, and a simulator of it on GPUs/NPUs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = _load_optional(name)
        if module is not None:
            module.register(subparsers)
    return parser


def user_error_classes() -> tuple[type[BaseException], ...]:
    classes = [_load_optional(spec) for spec in ERROR_CLASSES]
    return tuple(c for c in classes if c is not None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except user_error_classes() as exc:
        print(f"mirrorstream {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return 141
    except KeyboardInterrupt:
        return 130
    except MemoryError:
        print(f"mirrorstream {args.command}: error: out of memory", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    except Exception as exc:  # a bug: never exit 1, which `oracle check` uses for "diverged"
        if os.environ.get("MIRRORSTREAM_TRACEBACK"):
            traceback.print_exc()
        print(f"mirrorstream {args.command}: internal error (a bug, please report it): "
              f"{exc.__class__.__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
