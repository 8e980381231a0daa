"""A larger schemathesis run against the admin API: random (fuzzing phase) and chained
(stateful phase) calls, more examples than the conformance run of test_openapi.py; the
daemon never answers 5xx and every answer has the content type its document declares."""

from __future__ import annotations

import pytest

from tests.support import base_config, free_port, run_schemathesis

TOKEN = "fuzz-admin-token"


@pytest.mark.slow
def test_admin_api_under_fuzzing_never_fails_with_a_server_error(orchd_factory, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = orchd_factory(base_config(
        {"name": "user_service", "url": f"{dead}/api", "methods": ["GET", "POST"]},
        server={"admin_token": TOKEN}))
    run = run_schemathesis(
        f"{gw.url}/openapi.json", TOKEN, tmp_path,
        "--checks", "not_a_server_error,content_type_conformance",
        "--phases", "fuzzing,stateful", "--max-examples", "25", "--seed", "3", timeout=110)
    out = run.output
    assert run.returncode == 0, out[-6000:]
    assert run.generated is not None and run.generated > 300, out[-3000:]
    assert run.generated == run.passed, out[-3000:]
    assert gw.proc is not None and gw.proc.poll() is None
    assert "Traceback" not in gw.log(), gw.log()[-3000:]
