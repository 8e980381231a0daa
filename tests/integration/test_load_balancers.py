"""The "Behind a load balancer" examples of docs/deployment.md, run: Debian's HAProxy
(``send-proxy-v2``) and nginx (``X-Forwarded-For``) in front of a real orchd, on loopback.

Each balancer runs in the foreground with the document's block, its addresses and ports
replaced by loopback ones, and is stopped after the test. The client binds to its own
loopback address, which the backend must see in ``X-Forwarded-For`` and the access log
must name. With CI=true a missing balancer fails the test; elsewhere it is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.rawhttp import endpoint, read_answer
from tests.integration.test_client_identity import access_line, get, sent_headers, talk
from tests.support import IN_CI, ROOT, async_wait_until, base_config, free_port, short_tmpdir

CLIENT = "127.0.0.6"
_PACKAGES = {"haproxy": "haproxy", "nginx": "nginx-light"}


def require(command: str) -> str:
    path = shutil.which(command) or (f"/usr/sbin/{command}"
                                     if Path(f"/usr/sbin/{command}").exists() else None)
    if path is not None:
        return path
    message = (f"{command} missing: apt-get update && apt-get install -y "
               f"--no-install-recommends {_PACKAGES[command]}")
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def doc_block(language: str) -> str:
    """The ``language`` block of the "Behind a load balancer" section."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text.split("\n## Behind a load balancer\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match is not None, f"no {language} block in the section"
    return match.group(1)


@contextlib.contextmanager
def running(cmd: list[str], workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = open(workdir / "balancer.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


async def through(port: int, path: str, *headers: str) -> dict[str, str]:
    """The headers the echo upstream received for a request sent through the balancer
    (polled: the balancer may not have marked orchd up yet)."""
    got: dict[str, str] = {}

    async def answered() -> bool:
        try:
            [answer] = await talk(port, CLIENT, get(path, *headers))
        except OSError:
            return False
        if answer.status != 200:
            return False
        got.update(sent_headers(answer))
        return True

    await async_wait_until(answered, 20, what=f"{path} through the balancer")
    return got


async def test_haproxy_send_proxy_v2_names_the_client(orchd_factory, upstream_factory):
    haproxy = require("haproxy")
    up = await upstream_factory()
    # HAProxy connects from 127.0.0.2, the only trusted peer: the readiness probe of the
    # harness (from 127.0.0.1) needs no header.
    gw = orchd_factory(base_config(endpoint("echo", up.url), server={
        "trusted_proxies": ["127.0.0.2/32"], "proxy_protocol": True}))
    workdir = short_tmpdir()
    port = free_port()
    config = (doc_block("haproxy")
              .replace("bind :80", f"bind 127.0.0.1:{port}")
              .replace("10.0.0.21:8000", f"127.0.0.1:{gw.port}")
              .replace("check-send-proxy inter 1s", "check-send-proxy inter 1s source 127.0.0.2"))
    assert "send-proxy-v2" in config and "source 127.0.0.2" in config
    (workdir / "haproxy.cfg").write_text(config)
    check = subprocess.run([haproxy, "-c", "-f", str(workdir / "haproxy.cfg")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    try:
        with running([haproxy, "-db", "-f", str(workdir / "haproxy.cfg")], workdir):
            got = await through(port, "/orchestrator/echo/haproxy",
                                "X-Forwarded-For: 6.6.6.6")
            # The PROXY header's client, appended to what the client claimed (not believed).
            assert got["X-Forwarded-For"] == f"6.6.6.6, {CLIENT}"
            line = await access_line(gw, "/orchestrator/echo/haproxy")
            assert line.startswith(f"{CLIENT} ") or f" {CLIENT} " in line, line
            assert "6.6.6.6" not in line
            print(f"haproxy -> orchd: X-Forwarded-For: {got['X-Forwarded-For']}\n"
                  f"access line: {line}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def test_nginx_x_forwarded_for_names_the_client(orchd_factory, upstream_factory):
    nginx = require("nginx")
    up = await upstream_factory()
    gw = orchd_factory(base_config(endpoint("echo", up.url), server={
        "trusted_proxies": ["127.0.0.1/32"]}))
    workdir = short_tmpdir()
    port = free_port()
    site = (doc_block("nginx")
            .replace("listen 80;", f"listen 127.0.0.1:{port};")
            .replace("server 10.0.0.21:8000;", f"server 127.0.0.1:{gw.port};"))
    temp = "".join(f"    {kind}_temp_path {workdir}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (workdir / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\npid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log warn;\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp}{site}}}\n")
    check = subprocess.run([nginx, "-t", "-p", str(workdir), "-c", str(workdir / "nginx.conf")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    try:
        with running([nginx, "-p", str(workdir), "-c", str(workdir / "nginx.conf")], workdir):
            got = await through(port, "/orchestrator/echo/nginx", "X-Forwarded-For: 6.6.6.6",
                                "X-Forwarded-Proto: gopher")
            assert got["X-Forwarded-For"] == f"6.6.6.6, {CLIENT}, 127.0.0.1"
            assert got["X-Forwarded-Proto"] == "http"  # nginx's, kept as received
            line = await access_line(gw, "/orchestrator/echo/nginx")
            assert line.startswith(f"{CLIENT} ") or f" {CLIENT} " in line, line
            print(f"nginx -> orchd: X-Forwarded-For: {got['X-Forwarded-For']}\n"
                  f"access line: {line}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_section_names_what_the_tests_run() -> None:
    assert "send-proxy-v2" in doc_block("haproxy")
    assert "$proxy_add_x_forwarded_for" in doc_block("nginx")


@pytest.mark.parametrize("workers", [1, 2])
async def test_haproxy_passes_tls_through_after_its_proxy_header(
        orchd_factory, upstream_factory, workers: int) -> None:
    """``server.proxy_protocol`` with ``server.tls``: HAProxy in TCP mode sends its PROXY v2
    header in clear, then the client's TLS bytes; orchd reads the header, then the handshake
    (orchd.proxy_accept), and names the client. Its health checks do the same."""
    import ssl

    from tests.tls_support import CA, write_pair

    haproxy = require("haproxy")
    up = await upstream_factory()
    workdir = short_tmpdir()
    ca = CA()
    cert, key = write_pair(workdir / "tls", "site", ca.issue("localhost", "127.0.0.1"))
    gw = orchd_factory(base_config(endpoint("echo", up.url), server={
        "trusted_proxies": ["127.0.0.2/32"], "proxy_protocol": True, "workers": workers,
        "tls": {"certificates": [{"cert_file": str(cert), "key_file": str(key)}]}}),
        start=False)
    gw.start(wait=False)
    await async_wait_until(lambda: _ready(gw), 30, what="orchd to be ready")
    port = free_port()
    config = (doc_block("haproxy")
              .replace("bind :80", f"bind 127.0.0.1:{port}")
              .replace("10.0.0.21:8000", f"127.0.0.1:{gw.port}")
              .replace("check check-send-proxy inter 1s",
                       "check check-ssl verify none check-send-proxy inter 1s source 127.0.0.2"))
    assert "check-ssl" in config
    (workdir / "haproxy.cfg").write_text(config)
    ctx = ca.client_context()
    try:
        with running([haproxy, "-db", "-f", str(workdir / "haproxy.cfg")], workdir):
            got: dict[str, str] = {}

            async def answered() -> bool:
                try:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, ssl=ctx, server_hostname="localhost",
                        local_addr=(CLIENT, 0))
                except (OSError, ssl.SSLError):
                    return False
                try:
                    writer.write(get("/orchestrator/echo/tls", "X-Forwarded-For: 6.6.6.6"))
                    answer = await read_answer(reader)
                finally:
                    writer.close()
                if answer.status != 200:
                    return False
                got.update(sent_headers(answer))
                return True

            await async_wait_until(answered, 20, what="a request through HAProxy over TLS")
            assert got["X-Forwarded-For"] == f"6.6.6.6, {CLIENT}"
            assert got["X-Forwarded-Proto"] == "https"
            line = await access_line(gw, "/orchestrator/echo/tls")
            assert line.startswith(f"{CLIENT} ") or f" {CLIENT} " in line, line
        # A client that skips the balancer is served over TLS directly, as itself.
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=ctx,
                                                       server_hostname="localhost")
        writer.write(get("/orchestrator/echo/direct"))
        answer = await read_answer(reader)
        writer.close()
        assert sent_headers(answer)["X-Forwarded-For"] == "127.0.0.1"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _ready(gw) -> bool:
    return "ready (pid" in gw.log()
