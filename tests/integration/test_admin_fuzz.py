"""A larger schemathesis run against the admin API: random (fuzzing phase) and chained
(stateful phase) calls, more examples than the conformance run of test_openapi.py; the
daemon never answers 5xx and every answer has the content type its document declares."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import IN_CI, base_config, free_port

TOKEN = "fuzz-admin-token"


@pytest.mark.slow
def test_admin_api_under_fuzzing_never_fails_with_a_server_error(orchd_factory, tmp_path):
    st = Path(sys.executable).parent / "st"
    if not st.exists():
        if IN_CI:
            pytest.fail("schemathesis is not installed (pip install -e '.[test]')")
        pytest.skip("schemathesis is not installed")
    dead = f"http://127.0.0.1:{free_port()}"
    gw = orchd_factory(base_config(
        {"name": "user_service", "url": f"{dead}/api", "methods": ["GET", "POST"]},
        server={"admin_token": TOKEN}))
    cmd = [
        str(st), "run", f"{gw.url}/openapi.json",
        "--checks", "not_a_server_error,content_type_conformance",
        "--phases", "fuzzing,stateful", "--max-examples", "25", "--seed", "3",
        "--workers", "1", "--generation-database", "none", "--request-timeout", "10",
        "--exclude-path-regex", r"^/(orchestrator|events|control|docs)",
        "-H", f"Authorization: Bearer {TOKEN}", "--no-color", "--report-dir", str(tmp_path),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=110)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    assert counts and int(counts.group(1)) > 300, out[-3000:]
    assert counts.group(1) == counts.group(2), out[-3000:]
    assert gw.proc is not None and gw.proc.poll() is None
    assert "Traceback" not in gw.log(), gw.log()[-3000:]
