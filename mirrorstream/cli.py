"""`mirrorstream` console script: one argparse tree, one subcommand module per package.

Each package contributes its subcommands through a `register(subparsers)` function
in its own `cli` module; a subcommand stores its handler with
`parser.set_defaults(func=handler)`, and the handler returns the exit status.

Anything a user can get wrong raises the package's input-error class; it is
printed here as one line on stderr with exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("refimpl.cli", "refimpl.convert", "refimpl.pull", "hwmodels.cli", "simulator.cli",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        return 2
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
