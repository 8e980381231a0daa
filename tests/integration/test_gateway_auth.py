"""Authentication, rate limits and CORS at the gateway (design section 12) through a real
orchd: tokens minted here with real RSA, EC and Ed25519 keys against a live JWKS on
loopback (rotated mid-test), consumers and keys made through the API (a revoked key refused
at once), 429s that reach neither the upstream nor its breaker, preflights answered by the
gateway, and the observability around them (/metrics, /health, orchctl status)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt as pyjwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.support import ROOT, Orchd, Upstream, async_wait_until, base_config

ISS = "https://id.example.test/"
TOKEN = "adm-g4teway"
ORIGIN = "https://app.example.test"

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
ED = ed25519.Ed25519PrivateKey.generate()


def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(pyjwt.get_algorithm_by_name(alg).to_jwk(key.public_key()))
    return {**doc, "kid": kid, "alg": alg}


def mint(key: Any, alg: str, kid: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISS, "aud": "orders", "exp": now + 300, "iat": now, "sub": "user-1",
            "scope": "read", **claims}
    return pyjwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg,
                        headers={"kid": kid})


class Jwks:
    """A JWK Set served on 127.0.0.1; the test swaps its keys."""

    def __init__(self) -> None:
        self.keys = [_jwk(RSA, "r1", "RS256"), _jwk(EC, "e1", "ES256"),
                     _jwk(ED, "d1", "EdDSA")]
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"keys": self.keys},
                                 headers={"Cache-Control": "max-age=3600"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/jwks.json"


@pytest.fixture
async def jwks() -> AsyncIterator[Jwks]:
    server = Jwks()
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


def endpoint(name: str, up: Upstream, **blocks: Any) -> dict[str, Any]:
    return {"name": name, "url": f"{up.url}/api", "methods": ["GET", "POST"], **blocks}


async def send(http: aiohttp.ClientSession, method: str, url: str,
               **kw: Any) -> tuple[int, Any, Any]:
    async with http.request(method, url, **kw) as r:
        text = await r.text()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text
        return r.status, body, r.headers


def admin(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", **extra}


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def orchctl(sock: object, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ORCHCTL_SOCKET", "CONFIG_PATH")}
    return subprocess.run([sys.executable, "-m", "orchctl", "--socket", str(sock), *args],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=60,
                          check=False)


async def test_jwt_endpoint_validates_tokens_rotates_keys_and_sets_claim_headers(
        orchd_factory, upstream_factory, http, jwks):
    up = await upstream_factory()
    jwt_block = {"issuer": ISS, "audiences": ["orders"], "jwks_url": jwks.url,
                 "algorithms": ["RS256", "ES256", "EdDSA"],
                 "claims_to_headers": {"sub": "X-User-Id"}}
    daemon: Orchd = orchd_factory(base_config(
        endpoint("orders", up, auth={"jwt": jwt_block}),
        endpoint("admin", up, auth={"jwt": {**jwt_block, "required_scopes": ["admin"]}}),
        endpoint("open", up)), start=False)
    await asyncio.to_thread(daemon.start)  # (this loop serves the JWKS meanwhile)
    url = f"{daemon.url}/orchestrator/orders/items"
    assert jwks.hits == 1  # fetched at start, once for both endpoints

    status, doc, headers = await send(http, "GET", url)
    assert status == 401 and doc["reason"] == "missing_credential", doc
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert headers["Content-Type"].startswith("application/problem+json")
    assert up.requests == []

    for key, alg, kid in ((RSA, "RS256", "r1"), (EC, "ES256", "e1"), (ED, "EdDSA", "d1")):
        tok = mint(key, alg, kid, sub=f"user-{kid}")
        status, doc, _ = await send(http, "GET", url, headers={
            "Authorization": f"Bearer {tok}", "x-user-id": "forged", "X-Consumer-Name": "x"})
        assert status == 200, (alg, doc)
        seen = {k.lower(): v for k, v in doc["header_list"]}
        assert [v for k, v in doc["header_list"] if k.lower() == "x-user-id"] == [f"user-{kid}"]
        assert "x-consumer-name" not in seen
        assert seen["authorization"] == f"Bearer {tok}"  # hide_credentials is off

    expired = mint(RSA, "RS256", "r1", exp=int(time.time()) - 3600)
    status, doc, headers = await send(http, "GET", url,
                                      headers={"Authorization": f"Bearer {expired}"})
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert expired not in json.dumps(doc) and expired not in headers["WWW-Authenticate"]
    wrong_iss = mint(RSA, "RS256", "r1", iss="https://evil.example/")
    status, doc, _ = await send(http, "GET", url, headers={"Authorization": f"Bearer {wrong_iss}"})
    assert status == 401, doc

    # Scopes: a valid token without the required one is 403 insufficient_scope.
    plain = mint(RSA, "RS256", "r1")
    status, doc, headers = await send(http, "GET", f"{daemon.url}/orchestrator/admin/x",
                                      headers={"Authorization": f"Bearer {plain}"})
    assert status == 403 and 'error="insufficient_scope"' in headers["WWW-Authenticate"], doc
    status, _, _ = await send(http, "GET", f"{daemon.url}/orchestrator/admin/x", headers={
        "Authorization": f"Bearer {mint(RSA, 'RS256', 'r1', scope='read admin')}"})
    assert status == 200

    # Rotation: the set now has a new key; a token signed by it passes after the refetch
    # its unknown kid triggers, and the retired key's tokens are refused.
    jwks.keys = [_jwk(RSA2, "r2", "RS256")]
    status, doc, _ = await send(http, "GET", url, headers={
        "Authorization": f"Bearer {mint(RSA2, 'RS256', 'r2')}"})
    assert status == 200, doc
    status, _, _ = await send(http, "GET", url, headers={
        "Authorization": f"Bearer {mint(RSA, 'RS256', 'r1', sub='fresh')}"})
    assert status == 401

    # The unprotected endpoint is untouched: what the client sends goes on.
    status, doc, _ = await send(http, "GET", f"{daemon.url}/orchestrator/open/x",
                                headers={"X-User-Id": "anyone"})
    assert status == 200 and doc["headers"]["X-User-Id"] == "anyone"

    status, doc, _ = await send(http, "GET", f"{daemon.url}/health/status")
    [source] = doc["auth"]["jwks"]
    assert source["url"] == jwks.url and source["keys"] == 1 and source["last_error"] is None
    assert source["fetched_at"] > time.time() - 60
    status, doc, _ = await send(http, "GET", f"{daemon.url}/health/endpoints")
    modes = {e["endpoint_id"]: e["auth"] for e in doc["endpoints"]}
    assert modes == {"orders": "jwt", "admin": "jwt", "open": "none"}
    async with http.get(f"{daemon.url}/metrics") as r:
        text = await r.text()
    assert metric(text, "orchd_auth_failures_total", endpoint="orders",
                  reason="missing_credential") == 1
    assert metric(text, "orchd_auth_failures_total", endpoint="orders",
                  reason="expired") == 1, [
        line for line in text.splitlines() if "auth_failures" in line]
    assert metric(text, "orchd_auth_failures_total", endpoint="admin",
                  reason="insufficient_scope") == 1


async def test_api_keys_of_consumers_hidden_from_the_upstream_and_revoked_at_once(
        orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    daemon: Orchd = orchd_factory(base_config(
        endpoint("shop", up, auth={"api_key": {"header": "X-API-Key", "query": True},
                                   "hide_credentials": True}),
        endpoint("legacy", up, auth_type="bearer", require_auth=True),
        server={"admin_token": TOKEN}))
    url = f"{daemon.url}/orchestrator/shop/cart"
    status, made, _ = await send(http, "POST", f"{daemon.url}/consumers", headers=admin(),
                                 json={"name": "acme"})
    assert status == 201, made
    status, made, _ = await send(http, "POST", f"{daemon.url}/consumers/acme/keys",
                                 headers=admin())
    assert status == 201, made
    key = made["key"]

    status, doc, headers = await send(http, "GET", url, headers={"X-API-Key": "ok_" + "A" * 43})
    assert status == 401 and doc["reason"] == "unknown_api_key"
    assert headers["WWW-Authenticate"].startswith("ApiKey")
    status, doc, _ = await send(http, "GET", url, headers={"X-API-Key": key,
                                                           "x-consumer-name": "root"})
    assert status == 200, doc
    names = [(k.lower(), v) for k, v in doc["header_list"]]
    assert ("x-consumer-name", "acme") in names and ("x-consumer-name", "root") not in names
    assert "x-api-key" not in dict(names)  # hide_credentials
    status, doc, _ = await send(http, "GET", f"{url}?a=1&api_key={key}&b=2")
    assert status == 200, doc
    assert doc["query"] == [["a", "1"], ["b", "2"]] and key not in doc["raw_path"]
    assert len(up.requests) == 2

    # Revoked: refused on the next request, without a restart or a reload.
    status, _, _ = await send(http, "DELETE",
                              f"{daemon.url}/consumers/acme/keys/{made['key_id']}",
                              headers=admin())
    assert status in (200, 204)
    status, doc, _ = await send(http, "GET", url, headers={"X-API-Key": key})
    assert status == 401 and doc["reason"] == "unknown_api_key"
    assert len(up.requests) == 2

    # Presence-only require_auth is what it was.
    status, _, headers = await send(http, "GET", f"{daemon.url}/orchestrator/legacy/x")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    status, _, _ = await send(http, "GET", f"{daemon.url}/orchestrator/legacy/x",
                              headers={"Authorization": "Bearer anything"})
    assert status == 200

    out = orchctl(daemon.socket, "status")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[3:] if line}
    assert rows["shop"][2] == "api_key" and rows["legacy"][2] == "presence", out.stdout


async def test_rate_limit_answers_429_before_the_upstream_and_its_breaker(
        orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    daemon: Orchd = orchd_factory(base_config(
        endpoint("slow", up, rate_limit={"rate": 3, "per": 60}),
        endpoint("tenants", up, rate_limit={"rate": 1, "per": 60, "key": "header:X-Tenant"}),
        endpoint("keyed", up, rate_limit={"rate": 1, "per": 60, "key": "consumer"},
                 auth={"api_key": {}}),
        circuit_breaker={"failure_threshold": 1}))
    url = f"{daemon.url}/orchestrator/slow/x"
    for remaining in (2, 1, 0):
        status, _, headers = await send(http, "GET", url)
        assert status == 200
        assert headers["RateLimit-Limit"] == "3"
        assert headers["RateLimit-Remaining"] == str(remaining)
        assert int(headers["RateLimit-Reset"]) > 0
    for _ in range(3):
        status, doc, headers = await send(http, "GET", url)
        assert status == 429 and doc["status"] == 429 and doc["reason"] == "rate_limited"
        assert headers["Content-Type"].startswith("application/problem+json")
        assert int(headers["Retry-After"]) >= 1 and headers["RateLimit-Remaining"] == "0"
        assert headers["X-Endpoint-ID"] == "slow" and headers["X-Request-ID"]
    assert len(up.requests) == 3
    # A gateway error of a limited endpoint carries the fields too.
    status, _, headers = await send(http, "DELETE", url)
    assert status in (405, 429) and "RateLimit-Limit" in headers

    status, doc, _ = await send(http, "GET", f"{daemon.url}/health/circuit-breakers")
    [row] = [r for r in doc["circuit_breakers"] if r["endpoint_id"] == "slow"]
    assert row["state"] == "closed"
    assert [t["failure_count"] for t in row["targets"]] == [0], row
    assert [t["total_failures"] for t in row["targets"]] == [0], row

    # By header: each tenant its own bucket.
    t_url = f"{daemon.url}/orchestrator/tenants/x"
    for tenant in ("a", "b"):
        status, _, _ = await send(http, "GET", t_url, headers={"X-Tenant": tenant})
        assert status == 200
        status, _, _ = await send(http, "GET", t_url, headers={"X-Tenant": tenant})
        assert status == 429

    # By consumer: limited after the credential; a refused credential spends the address's
    # bucket (and answers with its fields).
    status, _, headers = await send(http, "GET", f"{daemon.url}/orchestrator/keyed/x")
    assert status == 401 and headers["RateLimit-Limit"] == "1"
    status, _, headers = await send(http, "GET", f"{daemon.url}/orchestrator/keyed/x")
    assert status == 429

    async with http.get(f"{daemon.url}/metrics") as r:
        text = await r.text()
    assert metric(text, "orchd_rate_limited_total", endpoint="slow") >= 3
    assert metric(text, "orchd_rate_limited_total", endpoint="tenants") == 2


async def test_limits_are_kept_across_a_reload_that_keeps_them(
        orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    limited = endpoint("svc", up, rate_limit={"rate": 1, "per": 600})
    daemon: Orchd = orchd_factory(base_config(limited))
    url = f"{daemon.url}/orchestrator/svc/x"
    assert (await send(http, "GET", url))[0] == 200
    assert (await send(http, "GET", url))[0] == 429

    async def reload(config: dict[str, Any]) -> dict[str, Any]:
        daemon.write_config(config)
        status, doc, _ = await send(http, "POST", f"{daemon.url}/config/reload")
        assert status == 200, doc
        return doc

    # Another endpoint added: svc's bucket is the same one, still empty.
    await reload(base_config(limited, endpoint("other", up)))
    assert (await send(http, "GET", url))[0] == 429
    # svc's timeout changed, its limit not: still the same bucket.
    await reload(base_config({**limited, "timeout": 7}, endpoint("other", up)))
    assert (await send(http, "GET", url))[0] == 429
    # The limit changed: a new bucket.
    await reload(base_config(endpoint("svc", up, rate_limit={"rate": 2, "per": 600})))
    status, _, headers = await send(http, "GET", url)
    assert status == 200 and headers["RateLimit-Limit"] == "2"
    # The limit removed: no fields at all, nothing in the way.
    await reload(base_config(endpoint("svc", up)))
    for _ in range(3):
        status, _, headers = await send(http, "GET", url)
        assert status == 200 and "RateLimit-Limit" not in headers


async def test_cors_preflights_are_answered_by_the_gateway_without_auth(
        orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    daemon: Orchd = orchd_factory(base_config(
        endpoint("app", up, auth={"api_key": {}}, rate_limit={"rate": 100},
                 cors={"allow_origins": [ORIGIN], "allow_headers": ["X-API-Key"],
                       "expose_headers": ["X-Request-ID"], "allow_credentials": True})))
    url = f"{daemon.url}/orchestrator/app/x"
    status, _, headers = await send(http, "OPTIONS", url, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert headers["Access-Control-Allow-Headers"] == "X-API-Key"
    assert "Origin" in headers["Vary"] and headers["Access-Control-Max-Age"] == "600"
    status, doc, headers = await send(http, "OPTIONS", url, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert status == 403 and "Origin" in headers["Vary"], doc
    assert "Access-Control-Allow-Origin" not in headers
    assert up.requests == []

    # An ordinary request from the page: refused without its key, with the CORS fields so
    # the page can read why; with a key, the answer carries them too.
    status, _, headers = await send(http, "GET", url, headers={"Origin": ORIGIN})
    assert status == 401 and headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "RateLimit-Limit" in headers
    status, made, _ = await send(http, "POST", f"{daemon.url}/consumers", json={"name": "web"})
    assert status == 201, made
    status, made, _ = await send(http, "POST", f"{daemon.url}/consumers/web/keys")
    status, doc, headers = await send(http, "GET", url, headers={"Origin": ORIGIN,
                                                                 "X-API-Key": made["key"]})
    assert status == 200, doc
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Expose-Headers"] == "X-Request-ID"
    assert headers.getall("Access-Control-Allow-Origin") == [ORIGIN]
    status, _, headers = await send(http, "GET", url, headers={"Origin": "https://evil.example",
                                                               "X-API-Key": made["key"]})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    assert len(up.requests) == 2

    await async_wait_until(lambda: _has_failures(http, daemon.url), timeout=10,
                           what="auth failures in /metrics")


async def _has_failures(http: aiohttp.ClientSession, base: str) -> bool:
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    return metric(text, "orchd_auth_failures_total", endpoint="app",
                  reason="cors_origin") == 1
