"""orchd.aiohttp_edge: every private attribute of aiohttp that orchd uses still exists.

When an aiohttp release renames or drops one, this test names it; orchd.aiohttp_edge is
the one module to adapt, and pyproject.toml's aiohttp range the one line to move."""

from __future__ import annotations

import ast
from pathlib import Path

import aiohttp

from orchd import aiohttp_edge

ROOT = Path(__file__).resolve().parents[2]
# Uses still to move behind orchd.aiohttp_edge (file: attributes); the list only shrinks.
# orchd/daemon.py: ``runner._shutdown_timeout = ...`` is ``aiohttp_edge.set_shutdown_timeout``.


def test_every_private_attribute_exists_in_the_installed_aiohttp() -> None:
    missing = aiohttp_edge.missing_private()
    assert not missing, (
        f"aiohttp {aiohttp.__version__} lacks what orchd/aiohttp_edge.py uses: "
        f"{', '.join(missing)}; adapt that module and the aiohttp range in pyproject.toml")


def test_the_list_names_every_private_attribute_the_adapter_reads() -> None:
    tree = ast.parse((ROOT / "orchd" / "aiohttp_edge.py").read_text())
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_")
            and not node.attr.startswith("__")}
    listed = {name for names in aiohttp_edge.PRIVATE.values() for name in names}
    assert used <= listed, f"used but not listed in PRIVATE: {sorted(used - listed)}"


def test_a_missing_attribute_is_named() -> None:
    class Stub:
        __slots__ = ("_here",)

    saved = dict(aiohttp_edge.PRIVATE)
    try:
        aiohttp_edge.PRIVATE[Stub] = ("_here", "_gone")
        assert aiohttp_edge.missing_private() == [f"{__name__}.{Stub.__qualname__}._gone"]
    finally:
        aiohttp_edge.PRIVATE.clear()
        aiohttp_edge.PRIVATE.update(saved)


def test_no_other_module_reads_aiohttp_private_attributes() -> None:
    names = {name for names in aiohttp_edge.PRIVATE.values() for name in names} - {"_loop"}
    offenders = []
    for path in sorted((ROOT / "orchd").rglob("*.py")):
        if path.name == "aiohttp_edge.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in names
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not offenders, f"aiohttp internals outside orchd/aiohttp_edge.py: {offenders}"
