"""``GET /events``: Server-Sent Events from the event bus.

Each event is ``id: N``, ``event: <type>`` (registry, health, breaker, reload,
subscriber_dropped) and ``data: <json>``; a ``: ping`` comment every ``HEARTBEAT`` seconds
keeps proxies from closing an idle stream. A subscriber that falls more than its queue behind
gets a final ``subscriber_dropped`` event and the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web

from orchd.api.common import get_state

__all__ = ("HEARTBEAT", "routes")

routes = web.RouteTableDef()

HEARTBEAT = 15.0


@routes.get("/events")
async def events(request: web.Request) -> web.StreamResponse:
    state = get_state(request)
    types = {t for t in request.query.get("types", "").split(",") if t}
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await resp.prepare(request)
    await resp.write(b"retry: 2000\n: connected\n\n")
    with state.bus.subscribe() as sub:
        while not state.stopping:
            try:
                event = await asyncio.wait_for(sub.get(), HEARTBEAT)
            except TimeoutError:
                await resp.write(b": ping\n\n")
                continue
            if event is None:
                break
            if types and event.type not in types and event.type != "subscriber_dropped":
                continue
            data = json.dumps(event.as_dict(), default=str)
            await resp.write(f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode())
            if event.type == "subscriber_dropped":
                break
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp
