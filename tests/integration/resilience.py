"""Helpers for the breaker, health-check, balancing and drain tests: a backend whose
behaviour the test switches at run time, and a reader of orchd's ``/events`` stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.support import async_wait_until


@dataclass
class Backend:
    """What the backend does, switched by the test while it runs.

    ``mode`` for proxied requests: ``ok``, ``500``, ``hang`` (sleeps ``hang`` seconds),
    ``reset`` (sends headers and part of the body, then resets the connection), ``slow``
    (answers 200 after ``delay`` seconds), ``hold`` (waits for ``release``).
    orchd's health probes (told apart by their User-Agent) answer ``health_status``; with
    ``health_hold`` set they wait for ``health_release`` first.
    """

    name: str = "backend"
    mode: str = "ok"
    hang: float = 30.0
    delay: float = 0.3
    health_status: int = 200
    health_hold: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    health_release: asyncio.Event = field(default_factory=asyncio.Event)
    traffic: list[str] = field(default_factory=list)  # proxied paths, in arrival order
    probes: list[tuple[str, int]] = field(default_factory=list)  # (path, status answered)

    @property
    def hits(self) -> int:
        return len(self.traffic)

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            path = request.path
            if request.headers.get("User-Agent") == "orchd-health-check":
                return await self._probe(request)
            self.traffic.append(path)
            mode = self.mode
            if mode == "500":
                return web.json_response({"error": "boom"}, status=500)
            if mode == "hang":
                await asyncio.sleep(self.hang)
            elif mode == "slow":
                await asyncio.sleep(self.delay)
            elif mode == "hold":
                await self.release.wait()
            elif mode == "reset":
                resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
                resp.content_length = 100_000
                await resp.prepare(request)
                await resp.write(b"x" * 1000)
                await resp.drain()
                if request.transport is not None:
                    request.transport.abort()
                return resp
            return web.json_response({"backend": self.name, "path": path})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    async def _probe(self, request: web.Request) -> web.Response:
        if self.health_hold:
            await self.health_release.wait()
        status = self.health_status
        self.probes.append((request.path, status))
        return web.json_response({"status": "ok" if status < 400 else "bad"}, status=status)


class EventReader:
    """Reads ``GET /events`` in the background and keeps every event."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.events: list[dict[str, Any]] = []
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def __aenter__(self) -> EventReader:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        assert self._session is not None
        async with self._session.get(f"{self.base_url}/events") as resp:
            assert resp.status == 200
            kind = ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith(": connected"):
                    self._connected.set()
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.append({"event": kind, **json.loads(line[6:])})

    def of(self, type_: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == type_
                and all(e.get(k) == v for k, v in match.items())]

    async def wait_for(self, type_: str, timeout: float = 10.0, **match: Any
                       ) -> dict[str, Any]:
        async def found() -> dict[str, Any] | None:
            got = self.of(type_, **match)
            return got[0] if got else None

        result: dict[str, Any] = await async_wait_until(
            found, timeout, what=f"{type_} event {match}")
        return result


async def get(http: aiohttp.ClientSession, url: str, **kw: Any
              ) -> tuple[int | str, dict[str, str], bytes]:
    """A GET that reports a broken exchange as the status ``"broken"``."""
    try:
        async with http.get(url, **kw) as r:
            body = await r.read()
            return r.status, dict(r.headers), body
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError):
        return "broken", {}, b""


async def admin(http: aiohttp.ClientSession, method: str, url: str, **kw: Any
                ) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as r:
        return r.status, await r.json(content_type=None)


async def breaker_of(http: aiohttp.ClientSession, base: str, name: str) -> dict[str, Any]:
    status, body = await admin(http, "GET", f"{base}/health/circuit-breakers/{name}")
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def health_of(http: aiohttp.ClientSession, base: str, name: str) -> dict[str, Any]:
    status, body = await admin(http, "GET", f"{base}/health/endpoints/{name}")
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
                ) -> Any:
    """Poll a plain predicate without blocking the test's event loop."""

    async def check() -> Any:
        return predicate()

    return await async_wait_until(check, timeout, what=what)


async def until_equal(fetch: Callable[[], Awaitable[Any]], want: Any, timeout: float = 10.0,
                      what: str = "value") -> None:
    """Poll an async getter until it answers ``want``."""
    last: list[Any] = []

    async def check() -> bool:
        last[:] = [await fetch()]
        return bool(last[0] == want)

    try:
        await async_wait_until(check, timeout, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: wanted {want!r}, last {last!r}") from None
