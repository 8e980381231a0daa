"""``/openapi.json`` and ``/docs``: the document covers the API, matches what the live daemon
answers (schemathesis), reuses the shipped JSON Schemas, and Swagger UI is served locally."""

from __future__ import annotations

import re

import pytest

from orchd.schema import load_schema
from tests.support import base_config, free_port, run_schemathesis

TOKEN = "openapi-admin-token"

# Every route of the HTTP API as the contract lists it.
DESIGN_ROUTES = {
    ("get", "/"), ("get", "/health"), ("get", "/health/ready"), ("get", "/health/status"),
    ("get", "/health/summary"), ("get", "/health/unhealthy"), ("get", "/health/endpoints"),
    ("get", "/health/endpoints/{id}"), ("post", "/health/check/{id}"),
    ("get", "/health/circuit-breakers"), ("get", "/health/circuit-breakers/open"),
    ("post", "/health/circuit-breakers/{id}/trip"),
    ("post", "/health/circuit-breakers/{id}/reset"),
    ("get", "/registry/endpoints"), ("post", "/registry/endpoints"),
    ("get", "/registry/endpoints/{id}"), ("put", "/registry/endpoints/{id}"),
    ("delete", "/registry/endpoints/{id}"), ("put", "/registry/endpoints/{id}/status"),
    ("post", "/registry/endpoints/{id}/drain"), ("post", "/registry/endpoints/{id}/enable"),
    ("get", "/registry/stats"), ("post", "/config/reload"), ("get", "/config/status"),
    ("post", "/config/validate"), ("get", "/router/routes"), ("get", "/router/debug/{path}"),
    ("get", "/orchestrator/{id}/{path}"), ("post", "/orchestrator/{id}/{path}"),
    ("get", "/openapi.json"), ("get", "/docs"), ("get", "/metrics"), ("get", "/dashboard"),
    ("get", "/events"), ("post", "/control/stop"),
}


def fetch(url: str) -> tuple[int, str, bytes]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers["Content-Type"], r.read()


@pytest.fixture
def daemon(orchd_factory):
    dead = f"http://127.0.0.1:{free_port()}"
    return orchd_factory(base_config(
        {"name": "user_service", "url": f"{dead}/api", "methods": ["GET", "POST"]},
        {"name": "orders", "urls": [f"{dead}/a", f"{dead}/b"]},
        server={"admin_token": TOKEN}))


def test_document_covers_every_route_and_reuses_the_shipped_schemas(daemon):
    import json

    status, ctype, body = fetch(f"{daemon.url}/openapi.json")
    assert status == 200 and ctype.startswith("application/json")
    doc = json.loads(body)
    assert doc["openapi"].startswith("3.1")
    have = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert have >= DESIGN_ROUTES, sorted(DESIGN_ROUTES - have)
    schemas = doc["components"]["schemas"]
    # One source of truth: the registration body and the config are the shipped schemas.
    endpoint = load_schema("endpoint")
    assert schemas["Endpoint"]["properties"].keys() == endpoint["properties"].keys()
    assert schemas["Endpoint"]["properties"]["name"] == endpoint["properties"]["name"]
    assert schemas["Endpoint"]["required"] == endpoint["required"]
    assert schemas["Config"]["properties"]["server"] == \
        load_schema("config")["properties"]["server"]
    post = doc["paths"]["/registry/endpoints"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/Registration"
    assert schemas["Registration"]["properties"]["config"] == {
        "$ref": "#/components/schemas/Endpoint"}
    assert "urn:" not in body.decode()  # every cross-reference resolves inside the document


def test_docs_work_offline(daemon):
    status, ctype, body = fetch(f"{daemon.url}/docs")
    assert status == 200 and ctype.startswith("text/html")
    page = body.decode()
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "a file comes from a CDN"
    assets = re.findall(r"(?:src|href)=\"(/docs/[^\"]+)\"", page)
    assert "/docs/static/swagger-ui-bundle.js" in assets
    for asset in assets:
        status, ctype, content = fetch(daemon.url + asset)
        assert status == 200 and len(content) > 0, asset
    _, _, init = fetch(f"{daemon.url}/docs/init.js")
    assert b'"/openapi.json"' in init


def test_live_daemon_matches_its_document(daemon, tmp_path):
    run = run_schemathesis(
        f"{daemon.url}/openapi.json", TOKEN, tmp_path,
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance",
        "--phases", "examples,coverage",  # coverage: boundary and negative cases, deterministic
        "--max-examples", "4", "--seed", "1", timeout=100)
    out = run.output
    assert run.returncode == 0, out[-6000:]
    assert run.generated is not None, out[-3000:]
    assert run.generated > 100 and run.generated == run.passed, out[-3000:]
    # It reached the daemon: the document's operations were exercised.
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()[-3000:]
