"""Every module imports on its own, in a fresh interpreter (no hidden import-order cycles)."""

from __future__ import annotations

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
_CHILD = """
import importlib, json, sys, traceback
results = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("orchd", "orchctl")]:
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
