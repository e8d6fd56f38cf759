"""Case-insensitive lookup of catalog entries by name or alias."""
from __future__ import annotations

from .errors import InputError


def normalise(name: str) -> str:
    """'Qwen/Qwen3-32B' -> 'qwen3-32b'; 'H100_SXM' -> 'h100-sxm'."""
    text = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    return text.rsplit("/", 1)[-1]


def build_index(entries: dict[str, list[str]]) -> dict[str, str]:
    """Map every normalised key and alias to its catalog key."""
    index: dict[str, str] = {}
    for key, aliases in entries.items():
        for alias in [key, *aliases]:
            index[normalise(alias)] = key
    return index


def resolve(name: str, index: dict[str, str], kind: str, option: str) -> str:
    """The catalog key of `name`, or InputError listing the known keys."""
    key = index.get(normalise(name))
    if key is None:
        known = ", ".join(sorted(set(index.values())))
        raise InputError(f"{option}: unknown {kind} {name!r} (known: {known})")
    return key
