"""Long-lived exchanges across reloads, against a real orchd: a WebSocket and an SSE stream
opened before a reload keep delivering after it; a removed endpoint's streams get
``shutdown_timeout`` to finish and are then cut."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp

from tests.integration.lifecycle import lifecycle_app
from tests.support import async_wait_until, base_config, get_json


class Sse:
    """An SSE stream read in the background: the numbers received, and how it ended."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.numbers: list[int] = []
        self.ended: BaseException | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for line in self.resp.content:
                if line.startswith(b"data: "):
                    self.numbers.append(int(line[6:]))
            self.ended = EOFError("end of stream")
        except aiohttp.ClientError as exc:
            self.ended = exc

    async def more_than(self, count: int) -> None:
        async def grown() -> bool:
            assert self.ended is None, f"the stream ended: {self.ended!r}"
            return len(self.numbers) > count
        await async_wait_until(grown, what=f"more than {count} events")

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.resp.close()


async def echo(ws: aiohttp.ClientWebSocketResponse, text: str) -> str:
    await ws.send_str(text)
    msg = await asyncio.wait_for(ws.receive(), 10)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return str(msg.data)


async def route_names(http: aiohttp.ClientSession, daemon: Any) -> set[str]:
    _, body = await get_json(http, f"{daemon.url}/router/routes")
    return {r["endpoint_id"] for r in body["routes"]}


async def wait_names(http: aiohttp.ClientSession, daemon: Any, expected: set[str]) -> None:
    async def check() -> bool:
        return await route_names(http, daemon) == expected
    await async_wait_until(check, 15, what=f"routes {sorted(expected)}")


def ep(name: str, up: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": up.url, **extra}


async def test_streams_keep_flowing_across_reloads(orchd_factory, upstream_factory, http):
    up = await upstream_factory(lifecycle_app())
    daemon = orchd_factory(base_config(ep("live", up), ep("other", up)))
    ws = await http.ws_connect(f"{daemon.url}/orchestrator/live/ws")
    sse = Sse(await http.get(f"{daemon.url}/orchestrator/live/sse"))
    try:
        assert await echo(ws, "before") == "echo before"
        await sse.more_than(2)

        # A reload by the file that changes the endpoint the streams go through, removes
        # another and adds one; then SIGHUP and POST /config/reload.
        daemon.write_config(base_config(ep("live", up, timeout=45), ep("added", up)))
        await wait_names(http, daemon, {"live", "added"})
        daemon.signal(signal.SIGHUP)
        async with http.post(f"{daemon.url}/config/reload") as r:
            assert r.status == 200

        seen = len(sse.numbers)
        await sse.more_than(seen + 5)
        assert await echo(ws, "after") == "echo after"
        assert sse.numbers == list(range(len(sse.numbers))), "the stream skipped or restarted"
        _, status = await get_json(http, f"{daemon.url}/config/status")
        assert status["last_reload"]["ok"] is True
    finally:
        await ws.close()
        await sse.close()


async def test_a_removed_endpoints_streams_get_the_shutdown_timeout(orchd_factory,
                                                                   upstream_factory, http):
    up = await upstream_factory(lifecycle_app())
    daemon = orchd_factory(base_config(ep("doomed", up), ep("kept", up),
                                       server={"shutdown_timeout": 1.5}))
    doomed_ws = await http.ws_connect(f"{daemon.url}/orchestrator/doomed/ws")
    doomed = Sse(await http.get(f"{daemon.url}/orchestrator/doomed/sse"))
    kept = Sse(await http.get(f"{daemon.url}/orchestrator/kept/sse"))
    try:
        await doomed.more_than(1)
        daemon.write_config(base_config(ep("kept", up), server={"shutdown_timeout": 1.5}))
        await wait_names(http, daemon, {"kept"})
        at_reload = len(doomed.numbers)

        # Still delivering after the reload, within the grace period ...
        assert await echo(doomed_ws, "grace") == "echo grace"

        # ... then cut, and the WebSocket closed.
        async def cut() -> bool:
            return doomed.ended is not None
        await async_wait_until(cut, 20, what="the removed endpoint's stream to be cut")
        assert isinstance(doomed.ended, aiohttp.ClientPayloadError | EOFError), doomed.ended
        assert len(doomed.numbers) > at_reload + 5, "cut without its grace period"
        msg = await asyncio.wait_for(doomed_ws.receive(), 20)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR), msg

        # The surviving endpoint's stream was never touched.
        seen = len(kept.numbers)
        await kept.more_than(seen + 3)
        assert kept.numbers == list(range(len(kept.numbers)))
        assert "cutting its 2 request(s)" in daemon.log()
    finally:
        await doomed_ws.close()
        await doomed.close()
        await kept.close()
