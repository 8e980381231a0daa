"""The edge's in-process tests (test_edge_protocol.py) drive ``FrontConnection`` with a fake
proxy, which a compiled ``orchd.front`` refuses (its ``FrontServer`` takes only a real
``Proxy``). Where orchd is compiled, this runs them against the same sources, uncompiled, in
a copy of the tree, so they are run by every build rather than skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import orchd.front
from tests.support import ROOT


@pytest.mark.skipif(orchd.front.__file__.endswith(".py"),
                    reason="orchd.front is not compiled here: test_edge_protocol.py runs as is")
def test_the_edge_protocol_tests_pass_on_the_uncompiled_sources(tmp_path: Path) -> None:
    skip = shutil.ignore_patterns("*.so", "__pycache__", "*.c", "build")
    for part in ("orchd", "tests"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    probe = subprocess.run([sys.executable, "-c", "import orchd.front as f; print(f.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == str(tmp_path / "orchd" / "front.py"), probe
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/unit/test_edge_protocol.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " skipped" not in run.stdout.splitlines()[-1], run.stdout[-2000:]
