"""The proxy's request contract (``orchd.proxy.ProxiedRequest``): both listeners' requests
satisfy it. mypy checks this module (``_read_all`` is called with each); the tests check
that every member it names is there at run time too, with the values the proxy expects."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from orchd.front import FrontHeaders, FrontRequest
from orchd.proxy import ProxiedRequest

# aiohttp recommends RequestKey objects for its item store; the proxy shares string keys with
# the public listener's request, a dict.
pytestmark = pytest.mark.filterwarnings("ignore:It is recommended to use web.RequestKey")


def _read_all(request: ProxiedRequest) -> dict[str, Any]:
    """Every member of the contract, as the proxy reads it."""
    request["endpoint"] = "svc"
    headers = request.headers
    return {
        "method": request.method, "raw_path": request.raw_path,
        "host": headers.get("host"), "items": list(headers.items()),
        "has_via": "Via" in headers, "query": dict(request.query),
        "remote": request.remote, "secure": request.secure,
        "content": request.content, "content_length": request.content_length,
        "body_exists": request.body_exists, "task": request.task,
    }


def _front_request() -> FrontRequest:
    pairs = [("Host", "gw"), ("Via", "1.1 a"), ("Content-Length", "3")]
    headers = FrontHeaders(pairs, {k.lower(): v for k, v in pairs})
    request = FrontRequest("POST", "/orchestrator/svc/x?a=1", "1.1", headers, "10.0.0.1",
                           mock.Mock(spec=asyncio.Transport), True)
    request.content_length = 3
    return request


def _aiohttp_request() -> web.Request:
    return make_mocked_request("POST", "/orchestrator/svc/x?a=1",
                               headers={"Host": "gw", "Via": "1.1 a", "Content-Length": "3"})


@pytest.mark.parametrize("make", [_front_request, _aiohttp_request], ids=["front", "aiohttp"])
def test_both_requests_satisfy_the_contract(make: Any) -> None:
    request = make()
    seen = _read_all(request)
    assert seen["method"] == "POST" and seen["raw_path"] == "/orchestrator/svc/x?a=1"
    assert seen["host"] == "gw" and seen["has_via"] and ("Via", "1.1 a") in seen["items"]
    assert seen["query"] == {"a": "1"} and seen["content_length"] == 3
    assert seen["secure"] is False
    assert request["endpoint"] == "svc"


def test_mypy_sees_each_request_as_the_contract() -> None:
    # The static half: these calls are what mypy checks (run under `mypy tests/unit/...`).
    front: ProxiedRequest = _front_request()
    via_aiohttp: ProxiedRequest = _aiohttp_request()
    assert _read_all(front)["remote"] == "10.0.0.1"
    assert _read_all(via_aiohttp)["method"] == "POST"
