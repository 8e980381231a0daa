"""Every module imports on its own, in a fresh interpreter (no hidden import-order cycles),
and the imports between orchd's modules run one way: no circle, not even one closed only by
an import inside a function or under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> list[str]:
    out = []
    for package in ("orchd", "orchctl"):
        base = ROOT / package
        if not (base / "__init__.py").is_file():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts[-1] == "__main__":
                continue  # running it starts the program
            out.append(".".join(parts))
    return out


MODULES = _modules()


def test_modules_found() -> None:
    assert "orchd.proxy" in MODULES and "orchd.loader" in MODULES and "orchd.store.file" in MODULES


# One fresh interpreter imports each module in turn, after forgetting every module of ours
# imported before it: each import starts from nothing of ours, as in a program that imports
# only that module. Third-party packages stay loaded (their import cost is not ours to test).
# Compiled modules (the request path, built by mypyc as one group) stay loaded too: the group
# initialises each of its modules once per process and cannot be imported afresh.
_CHILD = """
import importlib, json, sys, traceback
results = {}
for name in sys.argv[1:]:
    for loaded in [m for m, mod in sys.modules.items()
                   if m.split(".")[0] in ("orchd", "orchctl")
                   and not (getattr(mod, "__file__", None) or "").endswith(".so")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        results[name] = traceback.format_exc()
    else:
        results[name] = ""
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def results() -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-W", "error", "-c", _CHILD, *MODULES], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, str] = json.loads(proc.stdout.splitlines()[-1])
    return data


@pytest.mark.parametrize("module", MODULES)
def test_imports_on_its_own(module: str, results: dict[str, str]) -> None:
    assert results[module] == "", results[module]


# -- the import graph of orchd/


def _module_files(package: str) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, whether it is a package's ``__init__``)."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        out[".".join(parts)] = (path, is_package)
    return out


def _imported(tree: ast.AST, package: str) -> set[str]:
    """Every name an ``import`` or ``from ... import`` anywhere in the tree (functions and
    ``if TYPE_CHECKING:`` blocks included) may refer to: ``from a import b`` names both
    ``a`` and ``a.b``, as ``b`` may be a submodule."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def import_graph(package: str = "orchd") -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports. An import of ``a.b.c`` is an edge to
    ``a.b.c`` alone: that Python runs the packages ``a`` and ``a.b`` first is how packages
    work, not a dependency the importing module chose."""
    modules = _module_files(package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        here = name if is_package else name.rpartition(".")[0]
        edges = set()
        for target in _imported(tree, here):
            while target and target not in modules:
                target = target.rpartition(".")[0]  # a name inside a module: that module
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each group of modules that import each other (directly or not),
    as ``[a, b, ..., a]``; the groups are found with Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_circle(graph, group) for group in groups]


def _circle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest way from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    for node in queue:
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(group)  # a strongly connected group always closes


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "orchd.model" in graph["orchd.loader"]  # a plain from-import
    assert "orchd.handover" in graph["orchd.daemon"]  # from orchd import handover
    assert "orchd.store.etcd" in graph["orchd.daemon"]  # an import inside a function
    assert "orchd.health" in graph["orchd.state"]  # under TYPE_CHECKING


def test_no_import_cycles_in_orchd() -> None:
    found = [" -> ".join(circle) for circle in cycles(import_graph())]
    assert not found, "modules of orchd import each other: " + "; ".join(found)
