"""Logs: access lines with their fields, JSON or text, no secret ever, SIGUSR1 reopens."""

from __future__ import annotations

import json
import signal

from aiohttp import web

from tests.support import async_wait_until, base_config, free_port

ADMIN_TOKEN = "adm1n-T0ken-9f3c2a7e"
CLIENT_BEARER = "client-bearer-5e1d7c0b"
COOKIE_VALUE = "sess-cookie-8a2b4c6d"
API_KEY = "apikey-3f9e1a7b"
QUERY_KEY = "querykey-6c4d2e8f"
SECRETS = (ADMIN_TOKEN, CLIENT_BEARER, COOKIE_VALUE, API_KEY, QUERY_KEY)


def echo_or_fail() -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        if request.path.endswith("/fail"):
            return web.Response(status=500, text="boom")
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def send_secrets(http, url: str) -> None:
    """Every way a credential can arrive: proxied, admin (right and wrong), refused."""
    creds = {"Authorization": f"Bearer {CLIENT_BEARER}", "Cookie": f"session={COOKIE_VALUE}",
             "X-API-Key": API_KEY}
    for path in ("/orchestrator/svc/a", f"/orchestrator/svc/b?api_key={QUERY_KEY}",
                 "/orchestrator/svc/fail", "/orchestrator/gone/x", "/orchestrator/nosuch/x",
                 f"/orchestrator/locked/x?api_key={QUERY_KEY}"):
        async with http.get(url + path, headers=creds) as r:
            await r.read()
    async with http.post(f"{url}/orchestrator/svc/post", headers=creds,
                         data=f"token={ADMIN_TOKEN}".encode()) as r:
        await r.read()
    async with http.get(f"{url}/orchestrator/locked/x") as r:  # 401 at the gateway
        assert r.status == 401
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.post(f"{url}/health/circuit-breakers/svc/trip", headers=admin) as r:
        assert r.status == 200
    async with http.post(f"{url}/health/circuit-breakers/svc/reset", headers=admin) as r:
        assert r.status == 200
    async with http.post(f"{url}/health/circuit-breakers/svc/trip",
                         headers={"Authorization": f"Bearer {CLIENT_BEARER}"}) as r:
        assert r.status == 403
    body = {"config": {"name": "new1", "url": f"http://user:{API_KEY}@127.0.0.1:9/"}}
    async with http.post(f"{url}/registry/endpoints", json=body, headers=admin) as r:
        await r.read()
    async with http.post(f"{url}/config/validate", headers=admin,
                         data=f"server: {{admin_token: {ADMIN_TOKEN}, bogus: 1}}\n") as r:
        assert r.status == 422
    async with http.get(f"{url}/metrics", headers=creds) as r:
        await r.read()


def config(upstream: str, **server: object) -> dict[str, object]:
    return base_config(
        {"name": "svc", "url": f"{upstream}/api", "methods": ["GET", "POST"]},
        {"name": "gone", "url": f"http://127.0.0.1:{free_port()}/", "retries": 0},
        {"name": "locked", "url": upstream, "auth_type": "api_key", "require_auth": True},
        log_level="DEBUG",
        server={"admin_token": ADMIN_TOKEN, **server},
    )


def assert_no_secret(text: str) -> None:
    assert text.strip(), "the log is empty"
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into the log"


async def test_json_log_has_access_fields_and_no_secret(orchd_factory, upstream_factory, http):
    up = await upstream_factory(echo_or_fail())
    daemon = orchd_factory(config(up.url, log_format="json"))
    await send_secrets(http, daemon.url)
    async with http.get(f"{daemon.url}/orchestrator/svc/last",
                        headers={"X-Request-ID": "rid-last-1"}) as r:
        assert r.status == 200

    def last_line() -> dict[str, object] | None:
        for line in daemon.log().splitlines():
            if line.startswith("{") and '"rid-last-1"' in line:
                return json.loads(line)  # type: ignore[no-any-return]
        return None

    record = await async_wait_until(_async(last_line), what="the access line")
    assert record["logger"] == "orchd.access"
    assert record["request_id"] == "rid-last-1"
    assert record["endpoint"] == "svc"
    assert record["target"] == f"{up.url}/api"
    assert record["method"] == "GET"
    assert record["path"] == "/orchestrator/svc/last"
    assert record["status"] == 200
    assert isinstance(record["duration_ms"], float)
    assert isinstance(record["bytes"], int) and record["bytes"] > 0
    assert record["time"].endswith("Z")
    daemon.stop()
    text = daemon.log()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert all(json.loads(ln) for ln in lines if ln.startswith("{"))
    failed = [json.loads(ln) for ln in lines
              if ln.startswith("{") and '"/orchestrator/svc/fail"' in ln]
    assert failed and failed[0]["upstream_error"] == "5xx"
    assert_no_secret(text)


async def test_text_log_file_reopened_on_sigusr1(orchd_factory, upstream_factory, http):
    up = await upstream_factory(echo_or_fail())
    daemon = orchd_factory(config(up.url), start=False)
    log_file = daemon.dir / "access.log"
    cfg = config(up.url, log_file=str(log_file))
    daemon.write_config(cfg)
    daemon.start()
    await send_secrets(http, daemon.url)
    async with http.get(f"{daemon.url}/orchestrator/svc/one",
                        headers={"X-Request-ID": "rid-before"}) as r:
        assert r.status == 200
    await async_wait_until(_async(lambda: "rid=rid-before" in log_file.read_text()),
                           what="the access line in the log file")
    line = next(ln for ln in log_file.read_text().splitlines() if "rid=rid-before" in ln)
    assert '"GET /orchestrator/svc/one" 200' in line
    assert "endpoint=svc" in line and f"target={up.url}/api" in line

    rotated = log_file.with_suffix(".log.1")
    log_file.rename(rotated)  # what logrotate does before it signals
    daemon.signal(signal.SIGUSR1)
    await async_wait_until(_async(log_file.exists), what="the log file to be reopened")
    async with http.get(f"{daemon.url}/orchestrator/svc/two",
                        headers={"X-Request-ID": "rid-after"}) as r:
        assert r.status == 200
    await async_wait_until(_async(lambda: "rid=rid-after" in log_file.read_text()),
                           what="the access line in the new file")
    assert "rid-after" not in rotated.read_text()
    daemon.stop()
    assert_no_secret(rotated.read_text() + log_file.read_text() + daemon.log())


def _async(fn):  # type: ignore[no-untyped-def]
    async def call():  # type: ignore[no-untyped-def]
        return fn()
    return call
