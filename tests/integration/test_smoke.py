from __future__ import annotations

from tests.support import base_config


async def test_proxy_roundtrip(orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    daemon = orchd_factory(base_config({"name": "echo", "url": f"{up.url}/api",
                                        "methods": ["GET", "POST"]}))
    async with http.post(f"{daemon.url}/orchestrator/echo/items/1?a=1&a=2",
                         data=b"hello", headers={"Authorization": "Bearer abc"}) as r:
        assert r.status == 200
        body = await r.json()
        assert r.headers["X-Endpoint-ID"] == "echo"
        assert r.headers["X-Request-ID"]
    assert body["raw_path"] == "/api/items/1?a=1&a=2"
    assert body["body"] == "hello"
    assert body["headers"]["Authorization"] == "Bearer abc"
    assert body["headers"]["X-Request-ID"] == r.headers["X-Request-ID"]
