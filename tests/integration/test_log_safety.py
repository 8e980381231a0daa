"""No client can write a log record of its own: one request, one line, control characters
escaped, on both listeners (a proxied path on orchd's own, an admin path on aiohttp's)."""

from __future__ import annotations

import json
import re

import pytest

from tests.integration.rawhttp import endpoint, exchange
from tests.support import async_wait_until, base_config

FORGED = "2026-01-01 00:00:00,000 CRITICAL orchd.server: forged-{n}."
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")
# What a path, decoded, can break a line with: LF, CR, NEL (U+0085), LINE SEPARATOR (U+2028).
BREAKS = {"%0a": "\n", "%0d": "\r", "%0d%0a": "\r\n", "%c2%85": "\x85", "%e2%80%a8": "\u2028"}


def _quoted(text: str) -> str:
    return text.replace(" ", "%20")


def _requests() -> dict[int, tuple[bytes, str]]:
    """Marker number -> (raw request, the logger its one line must come from)."""
    out: dict[int, tuple[bytes, str]] = {}
    n = 0
    for prefix in ("/orchestrator/svc/a", "/health/endpoints/a"):
        for encoded in BREAKS:
            n += 1
            target = f"{prefix}{encoded}{_quoted(FORGED.format(n=n))}"
            out[n] = (f"GET {target} HTTP/1.1\r\nHost: gw\r\n".encode()
                      + b"User-Agent: ua\x85\xe2\x80\xa8\r\nReferer: http://r/\xc2\x85\r\n"
                      + f"X-Request-ID: rid-{n}\xc2\x85{FORGED.format(n=n)}\r\n\r\n".encode(),
                      "orchd.access")
    return out


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_request_cannot_forge_a_log_record(orchd_factory, upstream_factory, log_format):
    up = await upstream_factory()
    daemon = orchd_factory(base_config(endpoint("svc", up.url), log_level="DEBUG",
                                       server={"log_format": log_format}))
    requests = _requests()
    for data, _logger in requests.values():
        answer = await exchange(daemon.port, data)
        assert answer.status in (200, 404), answer.head
    # A request aiohttp's parser refuses: its error (several lines) goes to the debug log.
    bad = await exchange(daemon.port, b"GET /health HTTP/1.1\r\nHost: gw\r\n"
                                      b"X-Forged\x01: 1\r\n\r\n")
    assert bad.status == 400, bad.head

    def text() -> str:
        return daemon.log_path.read_bytes().decode("utf-8", "backslashreplace")

    async def all_logged() -> bool:
        log = text()
        return (all(f"forged-{n}." in log for n in requests)
                and "bad request from" in log)

    await async_wait_until(all_logged, what="an access line for every request")
    log = text()
    for char in ("\r", "\x85", "\u2028", "\x01"):
        assert char not in log, f"{char!r} written raw to the log"
    lines = log.split("\n")
    assert lines[-1] == ""
    if log_format == "json":
        records = [json.loads(line) for line in lines[:-1]]  # each line is one record
        for n, (_data, logger) in requests.items():
            mine = [r for r in records if f"forged-{n}." in json.dumps(r)]
            assert len(mine) == 1 and mine[0]["logger"] == logger, (n, mine)
            assert FORGED.format(n=n) in mine[0]["path"]  # the field keeps the decoded path
        assert not any(r["level"] == "CRITICAL" for r in records), "a forged record"
        return
    strays = [line for line in lines[:-1] if not RECORD.match(line)]
    assert not strays, f"lines that are not records of their own: {strays}"
    for n, (_data, logger) in requests.items():
        mine = [line for line in lines if f"forged-{n}." in line]
        assert len(mine) == 1, (n, mine)
        assert RECORD.match(mine[0]) and f" {logger}: " in mine[0][:60], mine[0]
    assert not any(" CRITICAL " in line[:40] for line in lines), "a forged record"
