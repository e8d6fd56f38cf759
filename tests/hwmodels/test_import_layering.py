"""Layering: no import cycle inside a package, and DESIGN.md's rules between packages.

Imports are read with `ast` from the source (nothing is imported), including
imports inside functions: a lazy import hides a cycle from Python but not from
a reader, so it counts.

DESIGN.md: hwmodels imports neither refimpl nor simulator; refimpl imports
neither simulator nor hwmodels; simulator may import hwmodels and
refimpl.trace only.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hwmodels", "refimpl", "simulator")
FORBIDDEN = {"hwmodels": ("refimpl", "simulator", "mirrorstream", "experiments"),
             "refimpl": ("simulator", "hwmodels", "mirrorstream", "experiments"),
             "simulator": ("mirrorstream", "experiments")}
SIMULATOR_MAY_IMPORT_FROM_REFIMPL = {"refimpl.trace"}

#: Violations that landed from other branches, listed so the suite stays green until their owners fix
#: them; each entry must still occur (test_known_violations_still_exist), so a fix forces its removal.
KNOWN_CYCLES = {"refimpl": ["refimpl.cli", "refimpl.train_cli", "refimpl.cli"]}   # train_cli's set_threads
KNOWN_CROSS = {"simulator.serving imports refimpl.errors", "simulator.serving imports refimpl.errors.InputError",
               "simulator.serving imports refimpl.errors.read_text"}           # read_arrivals' file reading


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of what `path` imports: `from P import x` counts P and P.x (x may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def package_graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (a package's __init__ excluded as a target)."""
    files = {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in imported_modules(path) if m in files and m != name and m != package}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def _without_known_cycle(package: str) -> dict[str, set[str]]:
    graph = package_graph(package)
    cycle = KNOWN_CYCLES.get(package)
    if cycle:
        graph[cycle[-2]].discard(cycle[-1])   # the edge that closes it
    return graph


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_a_package(package):
    assert find_cycle(_without_known_cycle(package)) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_cross_package_layering(package):
    bad = []
    for path in (ROOT / package).rglob("*.py"):
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top in FORBIDDEN[package]:
                bad.append(f"{module_name(path)} imports {module}")
            if package == "simulator" and top == "refimpl" and module not in SIMULATOR_MAY_IMPORT_FROM_REFIMPL \
                    and not any(module.startswith(f"{allowed}.") for allowed in SIMULATOR_MAY_IMPORT_FROM_REFIMPL):
                bad.append(f"{module_name(path)} imports {module}")
    assert not set(bad) - KNOWN_CROSS


def test_known_violations_still_exist():
    """A violation that has been fixed must leave the lists above (so they never hide a new one)."""
    for package, cycle in KNOWN_CYCLES.items():
        graph = package_graph(package)
        assert all(b in graph[a] for a, b in zip(cycle, cycle[1:])), cycle
    found = set()
    for path in (ROOT / "simulator").rglob("*.py"):
        found |= {f"{module_name(path)} imports {m}" for m in imported_modules(path)}
    assert KNOWN_CROSS <= found


def test_the_checker_sees_lazy_imports_and_cycles(tmp_path):
    """Negative control: a cycle closed by an import inside a function is found."""
    assert find_cycle({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}) == ["p.a", "p.b", "p.c", "p.a"]
    assert find_cycle({"p.a": {"p.b"}, "p.b": set(), "p.c": {"p.a", "p.b"}}) is None
    path = tmp_path / "hwmodels" / "probe.py"
    path.parent.mkdir()
    path.write_text("def f():\n    from .devices import get_device\n    from . import latency\n")
    assert {"hwmodels.devices", "hwmodels.latency"} <= imported_modules(path, tmp_path)
