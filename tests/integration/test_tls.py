"""HTTPS at the edge against a real orchd: certificates made here (a CA, two SNI names, a
client certificate, an expired one, a mismatched key), real TLS clients (Python's ssl and
aiohttp, curl, openssl s_client), an HTTPS upstream, and certificate reloads under load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.integration.lifecycle import control, lifecycle_app, wait_exit
from tests.support import Orchd, async_wait_until, base_config, free_port, wait_until
from tests.tls_support import CA, encrypted_key, need_tool, other_key, write_pair

NAMES = ("localhost", "127.0.0.1")
OTHER = "api.example.test"


class TlsOrchd(Orchd):
    """orchd serving HTTPS: its URL and readiness probe speak TLS, trusting ``ca``."""

    def __init__(self, config: dict[str, Any], ca: CA, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.ca = ca

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        import urllib.error
        import urllib.request

        ctx = self.ca.client_context()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"orchd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/ready", timeout=1,
                                            context=ctx) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_until(ready, timeout, what="orchd to be ready over https")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = CA()
    site = ca.issue(*NAMES)
    other = ca.issue(OTHER)
    site_files = write_pair(tmp_path / "tls", "site", site)
    other_files = write_pair(tmp_path / "tls", "other", other)
    return {"ca": ca, "dir": tmp_path / "tls", "site": site, "other": other,
            "site_files": site_files, "other_files": other_files}


def tls_block(pki: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"certificates": [
        {"cert_file": str(pki["site_files"][0]), "key_file": str(pki["site_files"][1])},
        {"cert_file": str(pki["other_files"][0]), "key_file": str(pki["other_files"][1])}],
        **extra}


@pytest.fixture
def tls_factory(pki: dict[str, Any]) -> Iterator[Callable[..., TlsOrchd]]:
    started: list[TlsOrchd] = []

    def make(*endpoints: dict[str, Any], server: dict[str, Any] | None = None,
             start: bool = True, **blocks: Any) -> TlsOrchd:
        config = base_config(*endpoints, **blocks)
        config["server"] = {"tls": tls_block(pki), "admin_token": "s3cret-token",
                            **(server or {})}
        daemon = TlsOrchd(config, pki["ca"])
        started.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in started:
        daemon.cleanup()


def peer_serial(port: int, ca: CA, server_name: str = "localhost") -> int:
    """A new TLS connection's certificate serial (a fresh handshake, no resumption)."""
    import socket

    ctx = ca.client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


class Load:
    """A bounded loop of GETs until ``stop``: over one keep-alive session, or a new
    connection (a new handshake) each time; counts answers and records failures."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.stop = asyncio.Event()
        self.done = 0
        self.failures: list[str] = []

    async def run(self, url: str, keep_alive: bool) -> None:
        kind = "keep-alive" if keep_alive else "new connection"
        session: aiohttp.ClientSession | None = None
        try:
            while not self.stop.is_set():
                if session is None or not keep_alive:
                    if session is not None:
                        await session.close()
                    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                        ssl=self.ctx, limit=2, force_close=not keep_alive))
                try:
                    async with session.get(url) as r:
                        await r.read()
                        if r.status != 200:
                            self.failures.append(f"{kind}: {r.status}")
                    self.done += 1
                except (aiohttp.ClientError, OSError) as exc:
                    self.failures.append(f"{kind}: {exc!r}")
        finally:
            if session is not None:
                await session.close()
            # A closed TLS connection finishes closing (close_notify, then the socket) a
            # moment later: let it, so no transport outlives the test (aiohttp's advice).
            await asyncio.sleep(0.5)


def admin_headers() -> dict[str, str]:
    return {"Authorization": "Bearer s3cret-token"}


async def test_https_serves_proxy_admin_docs_websocket_and_sse(
        tls_factory: Callable[..., TlsOrchd], upstream_factory: Any, pki: dict[str, Any]) -> None:
    echo = await upstream_factory()
    life = await upstream_factory(lifecycle_app())
    daemon = tls_factory({"name": "echo", "url": echo.url, "methods": ["GET", "POST"]},
                         {"name": "life", "url": life.url})
    connector = aiohttp.TCPConnector(ssl=pki["ca"].client_context())
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(f"{daemon.url}/orchestrator/echo/a?b=1", data=b"hi") as r:
            assert r.status == 200
            body = await r.json()
            assert body["path"] == "/a" and body["body"] == "hi"
        async with http.get(f"{daemon.url}/health/status") as r:
            status = await r.json()
            certs = status["tls"]["certificates"]
            assert [c["file"] for c in certs] == [str(pki["site_files"][0]),
                                                  str(pki["other_files"][0])]
            assert set(certs[0]["subjects"]) == set(NAMES)
            assert 88 <= certs[0]["days_left"] <= 90
        async with http.post(f"{daemon.url}/config/reload", headers=admin_headers()) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["ok"] is True
        async with http.get(f"{daemon.url}/docs") as r:
            assert r.status == 200 and "swagger" in (await r.text()).lower()
        async with http.get(f"{daemon.url}/metrics") as r:
            text = await r.text()
            line = next(x for x in text.splitlines() if x.startswith(
                "orchd_tls_certificate_expiry_timestamp_seconds{"))
            assert str(pki["site_files"][0]) in line
            assert abs(float(line.split()[-1]) - pki["site"].cert.not_valid_after_utc
                       .timestamp()) < 1
        async with http.ws_connect(f"{daemon.url.replace('https', 'wss')}/orchestrator/life/ws"
                                   ) as ws:
            await ws.send_str("over tls")
            assert (await ws.receive_str()) == "echo over tls"
        async with http.get(f"{daemon.url}/orchestrator/life/sse") as r:
            first = await r.content.readline()
            assert first.startswith(b"data: ")
    # The WebSocket upgrade is served by aiohttp, whose request knows it came over TLS.
    upgrade = next(r for r in life.requests if r.path == "/ws")
    assert upgrade.headers["X-Forwarded-Proto"] == "https"


async def test_x_forwarded_proto_is_https_on_the_tls_listener(
        tls_factory: Callable[..., TlsOrchd], upstream_factory: Any, pki: dict[str, Any]) -> None:
    echo = await upstream_factory()
    daemon = tls_factory({"name": "echo", "url": echo.url})
    connector = aiohttp.TCPConnector(ssl=pki["ca"].client_context())
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.get(f"{daemon.url}/orchestrator/echo/x") as r:
        assert (await r.json())["headers"]["X-Forwarded-Proto"] == "https"


def test_sni_alpn_and_versions_with_openssl_and_curl(
        tls_factory: Callable[..., TlsOrchd], pki: dict[str, Any], tmp_path: Path) -> None:
    openssl = need_tool("openssl", "openssl")
    curl = need_tool("curl", "curl")
    daemon = tls_factory()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki["ca"].pem)

    def s_client(*args: str) -> str:
        run = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{daemon.port}",
                              "-CAfile", str(ca_file), *args], input=b"", capture_output=True,
                             timeout=20)
        return (run.stdout + run.stderr).decode(errors="replace")

    # SNI: each name gets its own certificate; an unknown name and no SNI get the first.
    for name, wanted in (("localhost", "localhost"), (OTHER, OTHER),
                         ("unknown.test", "localhost")):
        out = s_client("-servername", name, "-alpn", "http/1.1")
        assert f"subject=CN = {wanted}" in out, out
        assert "ALPN protocol: http/1.1" in out, out
        assert "Verify return code: 0 (ok)" in out, out
    assert "subject=CN = localhost" in s_client("-noservername")
    # Versions: 1.2 and 1.3 yes; 1.0 and 1.1 never.
    assert "New, TLSv1.3, Cipher is" in s_client("-tls1_3")
    assert "New, TLSv1.2, Cipher is ECDHE-" in s_client("-tls1_2")
    for old in ("-tls1_1", "-tls1"):
        out = s_client(old, "-cipher", "DEFAULT@SECLEVEL=0")
        assert "Cipher is (NONE)" in out or "no protocols available" in out \
            or "alert" in out, out
    for weak in ("RC4", "3DES", "NULL", "EXP", "aNULL"):
        out = s_client("-tls1_2", "-cipher", f"{weak}@SECLEVEL=0")
        assert "Cipher is (NONE)" in out or "no cipher" in out or "alert" in out, out
    run = subprocess.run([curl, "-sS", "--cacert", str(ca_file), "-o", "-", "-w",
                          "\n%{http_version} %{http_code}",
                          f"https://localhost:{daemon.port}/health/ready"],
                         capture_output=True, timeout=20)
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().endswith("1.1 200"), run.stdout
    run = subprocess.run([curl, "-sS", "--resolve", f"{OTHER}:{daemon.port}:127.0.0.1",
                          "--cacert", str(ca_file), f"https://{OTHER}:{daemon.port}/health"],
                         capture_output=True, timeout=20)
    assert run.returncode == 0 and b'"healthy"' in run.stdout, run.stderr


async def test_plain_http_port_redirects_with_308(
        tls_factory: Callable[..., TlsOrchd]) -> None:
    port = free_port()
    daemon = tls_factory(server={"redirect_http_port": port})
    async with aiohttp.ClientSession() as http, \
            http.post(f"http://localhost:{port}/registry/endpoints?x=1", data=b"{}",
                      allow_redirects=False) as r:
        assert r.status == 308
        assert r.headers["Location"] == f"https://localhost:{daemon.port}/registry/endpoints?x=1"


def _serials(port: int, ca: CA) -> int:
    return peer_serial(port, ca)


async def test_certificate_replaced_ten_times_under_load(
        tls_factory: Callable[..., TlsOrchd], upstream_factory: Any, pki: dict[str, Any]) -> None:
    """10 replacements of the certificate (atomic renames, seen by the watcher) while a
    bounded loop of requests runs over keep-alive and new connections: no request fails,
    and a new handshake after each replacement sees the new serial."""
    echo = await upstream_factory()
    daemon = tls_factory({"name": "echo", "url": echo.url})
    ca: CA = pki["ca"]
    ctx = ca.client_context()
    load = Load(ctx)
    url = f"{daemon.url}/orchestrator/echo/k"
    loops = [asyncio.create_task(load.run(url, keep_alive=True)),
             asyncio.create_task(load.run(url, keep_alive=True)),
             asyncio.create_task(load.run(url, keep_alive=False))]
    started = time.monotonic()
    seen: list[int] = []
    try:
        for _ in range(10):
            issued = ca.issue(*NAMES)
            write_pair(pki["dir"], "site", issued)

            async def rotated(serial: int = issued.serial) -> bool:
                return await asyncio.to_thread(_serials, daemon.port, ca) == serial
            await async_wait_until(rotated, 10, what="the new certificate")
            seen.append(issued.serial)
    finally:
        load.stop.set()
        await asyncio.gather(*loops)
    elapsed = time.monotonic() - started
    print(f"\nreload under load: 10 replacements in {elapsed:.1f}s, {load.done} requests, "
          f"{len(load.failures)} failures")
    assert load.failures == []
    assert len(set(seen)) == 10 and load.done > 100
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http, \
            http.get(f"{daemon.url}/health/status") as r:
        status = await r.json()
    assert status["tls"]["certificates"][0]["serial"] == f"{seen[-1]:x}"
    assert status["last_reload"]["ok"] is True


async def test_bad_pairs_keep_the_old_certificate_and_say_why(
        tls_factory: Callable[..., TlsOrchd], pki: dict[str, Any]) -> None:
    daemon = tls_factory()
    ca: CA = pki["ca"]
    ctx = ca.client_context()
    before = pki["site"].serial
    cases = {
        "expired": lambda: write_pair(pki["dir"], "site", ca.issue(*NAMES, expired=True)),
        "does not match": lambda: write_pair(pki["dir"], "site", ca.issue(*NAMES),
                                             key_pem=other_key()),
        "encrypted": lambda: write_pair(pki["dir"], "site", (i := ca.issue(*NAMES)),
                                        key_pem=encrypted_key(i)),
    }
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        async with http.get(f"{daemon.url}/events", headers={"Accept": "text/event-stream"}
                            ) as events:
            for why, write in cases.items():
                write()
                for trigger in ("watch", "SIGHUP", "api"):
                    if trigger == "SIGHUP":
                        daemon.signal(signal.SIGHUP)
                    elif trigger == "api":
                        async with http.post(f"{daemon.url}/config/reload",
                                             headers=admin_headers()) as r:
                            body = await r.json()
                            assert r.status == 422 and body["ok"] is False, body
                            assert why in body["detail"], body

                    async def reported(why: str = why) -> Any:
                        async with http.get(f"{daemon.url}/config/status") as r:
                            st = await r.json()
                        err = st.get("last_reload_error") or ""
                        return why in err and str(pki["dir"]) in err
                    await async_wait_until(reported, 10, what=f"{why} reported")
                    assert await asyncio.to_thread(peer_serial, daemon.port, ca) == before
            # The failures were published on /events as reloads.
            seen = b""
            while b'"ok": false' not in seen and b'"ok":false' not in seen:
                seen += await asyncio.wait_for(events.content.readany(), 5)
            assert b"reload" in seen
        async with http.get(f"{daemon.url}/health/status") as r:
            status = await r.json()
        assert status["last_reload"]["ok"] is False
        assert status["last_reload"]["errors"][0]["path"].startswith("server.tls.certificates[0]")
        # A good pair again: taken.
        fixed = ca.issue(*NAMES)
        write_pair(pki["dir"], "site", fixed)

        async def taken() -> bool:
            return await asyncio.to_thread(peer_serial, daemon.port, ca) == fixed.serial
        await async_wait_until(taken, 10, what="the fixed certificate")


def test_startup_errors_name_the_file(tmp_path: Path, pki: dict[str, Any]) -> None:
    ca: CA = pki["ca"]
    expired = write_pair(tmp_path, "expired", ca.issue(*NAMES, expired=True))
    config = base_config()
    config["server"] = {"tls": {"certificates": [
        {"cert_file": str(expired[0]), "key_file": str(expired[1])}]}}
    daemon = Orchd(config)
    try:
        run = subprocess.run([*daemon.command(), "--check"], capture_output=True, timeout=30,
                             cwd=str(Path(__file__).resolve().parents[2]))
        out = (run.stdout + run.stderr).decode()
        assert run.returncode != 0
        assert "server.tls.certificates[0].cert_file (line" in out and str(expired[0]) in out
        assert "expired" in out
    finally:
        daemon.cleanup()


async def test_restart_hands_the_tls_listener_over(
        tls_factory: Callable[..., TlsOrchd], upstream_factory: Any, pki: dict[str, Any]) -> None:
    echo = await upstream_factory()
    port = free_port()
    daemon = tls_factory({"name": "echo", "url": echo.url},
                         server={"redirect_http_port": port})
    ctx = pki["ca"].client_context()
    old_pid = daemon.proc.pid if daemon.proc else 0
    load = Load(ctx)
    task = asyncio.create_task(load.run(f"{daemon.url}/orchestrator/echo/r", keep_alive=False))
    status, body = await control(daemon, "POST", "/control/restart")
    assert status == 200, body
    new_pid = int(body["pid"])
    assert new_pid != old_pid
    await wait_exit(daemon, 30)
    await asyncio.sleep(0.3)
    load.stop.set()
    await task
    assert load.failures == [] and load.done > 10
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        async with http.get(f"{daemon.url}/health/status") as r:
            assert (await r.json())["tls"]["certificates"]
        async with http.get(f"http://localhost:{port}/x", allow_redirects=False) as r:
            assert r.status == 308
    os.kill(new_pid, signal.SIGTERM)


async def close_upstream(runner: web.AppRunner, daemon: Any) -> None:
    """Stop orchd first, so the upstream's TLS connections end from the other side, then the
    upstream; and give the closing TLS transports a moment (close_notify, then the socket)."""
    await asyncio.to_thread(daemon.stop)
    await runner.cleanup()
    await asyncio.sleep(0.5)


async def mtls_upstream(tmp_path: Path, ca: CA, app: web.Application
                        ) -> tuple[web.AppRunner, int, dict[str, str]]:
    """An HTTPS upstream (certificate for backend.internal) that requires a client
    certificate from ``ca``; its runner, port, and the endpoint ``tls`` block that reaches it.
    ``GET /hello`` answers the client certificate it saw."""
    up_cert = write_pair(tmp_path, "upstream", ca.issue("backend.internal"))
    client = write_pair(tmp_path, "client", ca.issue("orchd-client", client=True))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    server_ctx.load_cert_chain(*map(str, up_cert))
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    async def hello(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        return web.json_response({"client": json.dumps(peer)})

    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
    tls = {"ca_file": str(ca_file), "server_name": "backend.internal",
           "cert_file": str(client[0]), "key_file": str(client[1])}
    return runner, port, tls


async def test_https_upstream_with_private_ca_client_certificate_and_server_name(
        tmp_path: Path, pki: dict[str, Any], orchd_factory: Any) -> None:
    """Health probes (and, through orchd.upstream, proxied requests) reach an HTTPS
    upstream that needs a client certificate, trusting the endpoint's ca_file."""
    runner, port, tls = await mtls_upstream(tmp_path, pki["ca"], web.Application())
    daemon = orchd_factory(base_config(
        {"name": "secure", "url": f"https://127.0.0.1:{port}", "tls": tls,
         "health_check_path": "/hello"},
        {"name": "untrusted", "url": f"https://127.0.0.1:{port}",
         "health_check_path": "/hello"},
        {"name": "noverify", "url": f"https://127.0.0.1:{port}", "health_check_path": "/hello",
         "tls": {"verify": False}}))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{daemon.url}/health/check/secure") as r:
                targets = await r.json()
            assert r.status == 200, targets
            text = json.dumps(targets)
            assert '"healthy"' in text, text
            async with http.post(f"{daemon.url}/health/check/untrusted") as r:
                text = json.dumps(await r.json())
            assert "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify" in text, text
            async with http.post(f"{daemon.url}/health/check/noverify") as r:
                text = json.dumps(await r.json())
            # no client certificate: the upstream refuses the handshake
            assert '"healthy"' not in text
        assert "tls.verify (line" in daemon.log() and "not verified" in daemon.log()
    finally:
        await close_upstream(runner, daemon)


async def test_proxy_and_websocket_to_an_https_upstream_with_endpoint_tls(
        tmp_path: Path, pki: dict[str, Any], orchd_factory: Any) -> None:
    runner, port, tls = await mtls_upstream(tmp_path, pki["ca"], lifecycle_app())
    daemon = orchd_factory(base_config(
        {"name": "secure", "url": f"https://127.0.0.1:{port}", "tls": tls},
        {"name": "plain_trust", "url": f"https://127.0.0.1:{port}"}))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{daemon.url}/orchestrator/secure/hello") as r:
                body = await r.json()
                assert r.status == 200, body
                assert "orchd-client" in body["client"]
            async with http.get(f"{daemon.url}/orchestrator/plain_trust/hello") as r:
                assert r.status == 502, await r.text()
            async with http.ws_connect(f"{daemon.url}/orchestrator/secure/ws") as ws:
                await ws.send_str("to tls upstream")
                assert (await ws.receive_str()) == "echo to tls upstream"
    finally:
        await close_upstream(runner, daemon)
