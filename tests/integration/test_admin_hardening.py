"""The admin API against a hostile client: no environment in answers, no cross-site calls on
loopback trust, no admin call disguised as a proxied path, no crash on deep JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import yaml

from tests.integration.rawhttp import exchange
from tests.support import Orchd, base_config, get_json, wait_until

SECRET = "s3cr3t-2f9c1e7a"
TOKEN = "adm-7c1d0e5b2a"


def reg(name: str, url: str) -> dict[str, Any]:
    return {"config": {"name": name, "url": url}}


async def test_config_validate_never_reads_the_environment(
        orchd_factory: Callable[..., Orchd], http: aiohttp.ClientSession) -> None:
    gw = orchd_factory(base_config(), env={"ORCH_PROBE_SECRET": SECRET})
    url = f"{gw.url}/config/validate"

    async def validate(doc: str) -> tuple[int, dict[str, Any]]:
        async with http.post(url, data=doc.encode()) as r:
            return r.status, await r.json(content_type=None)

    # A set variable, in places whose error would echo its value, and an unset one.
    status, body = await validate("log_level: ${ORCH_PROBE_SECRET}\n"
                                  "server: {port: '${ORCH_PROBE_SECRET}'}\n")
    assert status == 422
    assert SECRET not in json.dumps(body)
    status_unset, body_unset = await validate("log_level: ${ORCH_PROBE_UNSET}\n"
                                              "server: {port: '${ORCH_PROBE_UNSET}'}\n")
    # Whether a variable exists cannot be told from the answer.
    assert status_unset == status
    assert len(body_unset["errors"]) == len(body["errors"])
    assert [e["path"] for e in body_unset["errors"]] == [e["path"] for e in body["errors"]]
    # A valid document still validates; the placeholders are reported, not expanded.
    status, body = await validate("server: {admin_token: '${ORCH_PROBE_SECRET}'}\n"
                                  "log_level: ${ORCH_PROBE_LEVEL:-DEBUG}\n")
    assert status == 200, body
    assert body["valid"] is True
    assert any("ORCH_PROBE_SECRET" in w and "not expanded" in w for w in body["warnings"])
    assert SECRET not in json.dumps(body)


async def test_reload_errors_never_show_values_from_the_environment(
        orchd_factory: Callable[..., Orchd], http: aiohttp.ClientSession) -> None:
    gw = orchd_factory(base_config(), env={"ORCH_PROBE_SECRET": SECRET})
    gw.write_config(yaml.safe_dump({**base_config(), "log_level": "${ORCH_PROBE_SECRET}"}))
    async with http.post(f"{gw.url}/config/reload") as r:
        assert r.status == 422
        assert SECRET not in await r.text()
    for path in ("/health/status", "/config/status"):
        status, body = await get_json(http, f"{gw.url}{path}")
        assert status == 200
        assert "log_level" in json.dumps(body), path  # the error is reported ...
        assert SECRET not in json.dumps(body), path  # ... without the value
    assert SECRET not in gw.log()


async def test_cross_site_admin_calls_are_refused_without_a_token(
        orchd_factory: Callable[..., Orchd], upstream_factory: Any,
        http: aiohttp.ClientSession) -> None:
    up = await upstream_factory()
    gw = orchd_factory(base_config())
    url = f"{gw.url}/registry/endpoints"
    body = json.dumps(reg("x", up.url))
    own = f"127.0.0.1:{gw.port}"
    refused = [
        # a page on another site posting text/plain (a "simple" request, no preflight)
        {"Origin": "http://evil.example", "Content-Type": "text/plain"},
        {"Origin": "null", "Content-Type": "text/plain"},
        {"Origin": f"http://127.0.0.1:{gw.port + 1}"},  # another port is another origin
        {"Sec-Fetch-Site": "cross-site"},
        # DNS rebinding: the browser sends the attacker's name as Host
        {"Host": f"rebind.evil.example:{gw.port}"},
        {"Host": f"10.0.0.1:{gw.port}"},
    ]
    for headers in refused:
        async with http.post(url, data=body, headers=headers) as r:
            assert r.status == 403, headers
            problem = await r.json(content_type=None)
            assert r.headers["Content-Type"].startswith("application/problem+json")
            assert "loopback" in problem["detail"], problem
    status, listing = await get_json(http, url)
    assert status == 200
    assert listing["total_count"] == 0
    # What scripts and the gateway's own pages send is accepted.
    accepted = [
        {},  # curl -d without a content type
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Origin": f"http://{own}", "Sec-Fetch-Site": "same-origin"},
        {"Host": f"localhost:{gw.port}"},
        {"Host": f"[::1]:{gw.port}"},
    ]
    for i, headers in enumerate(accepted):
        async with http.post(url, data=json.dumps(reg(f"ok{i}", up.url)),
                             headers=headers) as r:
            assert r.status == 201, (headers, await r.text())


async def test_encoded_slash_is_not_a_proxied_path_for_the_admin_check(
        orchd_factory: Callable[..., Orchd], upstream_factory: Any) -> None:
    up = await upstream_factory()
    gw = orchd_factory(base_config(server={"admin_token": TOKEN}))
    body = json.dumps(reg("sneak", up.url)).encode()
    for target in ("/orchestrator%2F..%2Fregistry/endpoints",
                   "/orchestrator%2f..%2fregistry/endpoints",
                   "/orchestrator%2F..%2F..%2Fconfig/reload"):
        answer = await exchange(
            gw.port,
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        assert answer.status == 401, (target, answer)
    wait_until(lambda: "sneak" not in (gw.state_dir / "registry.json").read_text()
               if (gw.state_dir / "registry.json").exists() else True, 2)


async def test_deeply_nested_json_is_a_400_problem(
        orchd_factory: Callable[..., Orchd], http: aiohttp.ClientSession) -> None:
    gw = orchd_factory(base_config())
    bodies = [
        "[" * 1000 + "]" * 1000,
        '{"config": ' * 1000 + "{}" + "}" * 1000,
        "[" * 200_000,
        '{"config": {"name": "deep", "url": "http://127.0.0.1:1", "x": ' + "[" * 5000
        + "]" * 5000 + "}}",
    ]
    for raw in bodies:
        for method, path in (("POST", "/registry/endpoints"),
                             ("PUT", "/registry/endpoints/deep"),
                             ("POST", "/registry/endpoints/deep/drain")):
            async with http.request(method, f"{gw.url}{path}", data=raw.encode()) as r:
                assert r.status == 400, (method, path, r.status, raw[:40])
                problem = await r.json(content_type=None)
                assert "nested" in problem["detail"]
    # Brackets inside strings are not nesting.
    async with http.post(f"{gw.url}/registry/endpoints",
                         json={"config": {"name": "deep", "url": "http://127.0.0.1:1/" + "[" * 100,
                                          }}) as r:
        assert r.status in (201, 422), await r.text()
    assert "Traceback" not in gw.log()
    assert "RecursionError" not in gw.log()


async def test_an_admin_call_that_already_passed_through_this_gateway_is_508(
        orchd_factory: Callable[..., Orchd], upstream_factory: Any,
        http: aiohttp.ClientSession) -> None:
    up = await upstream_factory()
    gw = orchd_factory(base_config({"name": "echo", "url": up.url}))
    async with http.get(f"{gw.url}/orchestrator/echo/x") as r:
        via = (await r.json())["headers"]["Via"]  # what this gateway adds to what it forwards
    assert via.startswith("1.1 orchd-")
    async with http.post(f"{gw.url}/registry/endpoints", json=reg("looped", up.url),
                         headers={"Via": f"1.1 lb.example, {via}"}) as r:
        assert r.status == 508, await r.text()
        assert (await r.json(content_type=None))["reason"] == "loop_detected"
    async with http.get(f"{gw.url}/health", headers={"Via": via}) as r:
        assert r.status == 508
    # Another gateway's entry is no loop.
    async with http.post(f"{gw.url}/registry/endpoints", json=reg("ok", up.url),
                         headers={"Via": "1.1 orchd-000000000000, 1.0 proxy"}) as r:
        assert r.status == 201, await r.text()


async def test_an_hs_secret_is_never_shown_nor_taken_from_the_api(
        orchd_factory: Callable[..., Orchd], http: aiohttp.ClientSession) -> None:
    secret = "k" * 64
    hs = {"name": "hs", "url": "http://127.0.0.1:9/api",
          "auth": {"jwt": {"issuer": "https://id.example/", "algorithms": ["HS256"],
                           "secret": "${ORCH_TEST_JWT_SECRET}"}}}
    gw = orchd_factory(base_config(hs), env={"ORCH_TEST_JWT_SECRET": secret})
    for path in ("/registry/endpoints/hs", "/registry/endpoints", "/router/routes"):
        async with http.get(f"{gw.url}{path}") as r:
            assert r.status == 200
            assert secret not in await r.text(), path
    body = {"config": {**hs, "name": "hs2", "auth": {"jwt": {
        "issuer": "https://id.example/", "algorithms": ["HS256"], "secret": secret}}}}
    async with http.post(f"{gw.url}/registry/endpoints", json=body) as r:
        assert r.status == 422, await r.text()
        problem = await r.json(content_type=None)
        assert problem["errors"][0]["path"] == "config.auth.jwt.secret"
        assert secret not in json.dumps(problem)
