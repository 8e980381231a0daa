"""Every module imports on its own, in a fresh interpreter (no hidden import-order cycles)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


def _import(module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "error", "-c", f"import {module}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def results() -> dict[str, subprocess.CompletedProcess[str]]:
    """Import every module in its own interpreter, a few at a time."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(MODULES, pool.map(_import, MODULES), strict=True))


@pytest.mark.parametrize("module", MODULES)
def test_imports_on_its_own(module: str, results: dict[str, Any]) -> None:
    proc = results[module]
    assert proc.returncode == 0, proc.stderr
