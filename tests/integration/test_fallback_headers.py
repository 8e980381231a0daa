"""A breaker's fallback answer cannot split a response: header names and values with control
characters are refused when the config is validated (file and API)."""

from __future__ import annotations

from tests.integration.rawhttp import exchange
from tests.support import base_config, free_port

EVIL = {"X-Evil": "a\r\nSet-Cookie: injected=1", "X-Ok": "yes"}


def _endpoint(headers: dict[str, str]) -> dict[str, object]:
    return {"name": "svc", "url": f"http://127.0.0.1:{free_port()}/", "retries": 0,
            "circuit_breaker": {"fallback_response": {"status": 200, "headers": headers,
                                                      "body": "resting"}}}


async def test_fallback_header_with_crlf_is_never_written(orchd_factory, http):
    daemon = orchd_factory(base_config(_endpoint(EVIL)))
    async with http.post(f"{daemon.url}/health/circuit-breakers/svc/trip") as r:
        assert r.status == 200, await r.text()
    answer = await exchange(daemon.port, b"GET /orchestrator/svc/x HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert b"injected" not in answer.head.lower(), answer.head
    assert b"x-ok: yes" in answer.head.lower(), answer.head
