"""Installing orchd prints nothing but what pip itself says: no deprecation banner from the
build backend (setuptools warned ten times per `make run` about a table-form license)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from tests.support import ROOT


def test_building_the_package_prints_no_deprecation() -> None:
    out = tempfile.mkdtemp(prefix="orchd-wheel-")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--wheel-dir", out, str(ROOT)],
            capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "ORCHD_PURE": "1"})  # the package metadata, not a compile
        assert proc.returncode == 0, proc.stderr[-3000:]
        printed = proc.stdout + proc.stderr
        assert "Deprecat" not in printed and "deprecat" not in printed, printed[-3000:]
    finally:
        shutil.rmtree(out, ignore_errors=True)
