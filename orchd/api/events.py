"""``GET /events``: Server-Sent Events from the event bus.

Each event is ``id: N``, ``event: <type>`` (registry, health, breaker, reload, stats,
subscriber_dropped) and ``data: <json>``; ``?types=breaker,health`` keeps only those types. A
``: ping`` comment every ``HEARTBEAT`` seconds keeps proxies from closing an idle stream.

Memory stays bounded whatever a client does: each stream reads from its own bounded queue; a
client that falls more than the queue behind gets a final ``subscriber_dropped`` event and
the stream ends; a client that stops reading altogether is cut off once one write has waited
``WRITE_TIMEOUT`` seconds. Streams end at once when orchd stops.

On the TCP port each stream holds a slot of ``orchd.streams`` (``server.max_streams``,
``server.max_streams_per_client``); one over a cap gets 429 before it starts. The control
socket is exempt: whoever can open it is an administrator (``orchctl status --live``), and its
connections do not count against ``server.max_connections``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web

from orchd.api.common import get_state
from orchd.api.control import STOP_EVENT
from orchd.log import server_logger
from orchd.state import STATE
from orchd.streams import StreamSlot

__all__ = ("HEARTBEAT", "WRITE_TIMEOUT", "close_streams", "routes")

routes = web.RouteTableDef()

HEARTBEAT = 15.0
WRITE_TIMEOUT = 30.0


class _Stalled(Exception):
    pass


async def _send(resp: web.StreamResponse, data: bytes) -> None:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            await resp.write(data)
    except TimeoutError:
        raise _Stalled from None


def _on_control_socket(request: web.Request) -> bool:
    """The control app (the one with ``/control/stop``) is served only on the socket."""
    return STOP_EVENT in request.app


@routes.get("/events")
async def events(request: web.Request) -> web.StreamResponse:
    state = get_state(request)
    slot: StreamSlot | contextlib.nullcontext[None] = contextlib.nullcontext()
    if not _on_control_socket(request):
        slot = state.streams.acquire(request.remote or "", "events")
    with slot:
        return await _stream(request)


async def _stream(request: web.Request) -> web.StreamResponse:
    state = get_state(request)
    types = {t for t in request.query.get("types", "").split(",") if t}
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    resp.force_close()  # a stream that ends closes its connection: the client sees the end
    await resp.prepare(request)
    with state.bus.subscribe() as sub:
        try:
            await _send(resp, b"retry: 2000\n: connected\n\n")
            while not state.stopping:
                try:
                    event = await asyncio.wait_for(sub.get(), HEARTBEAT)
                except TimeoutError:
                    await _send(resp, b": ping\n\n")
                    continue
                if event is None:
                    break
                if types and event.type not in types and event.type != "subscriber_dropped":
                    continue
                data = json.dumps(event.as_dict(), default=str)
                await _send(resp, f"id: {event.id}\nevent: {event.type}\n"
                                  f"data: {data}\n\n".encode())
                if event.type == "subscriber_dropped":
                    server_logger.warning("/events client %s fell behind and was dropped",
                                          request.remote)
                    break
        except _Stalled:
            server_logger.warning("/events client %s stopped reading for %gs; closing",
                                  request.remote, WRITE_TIMEOUT)
            if request.transport is not None:
                request.transport.abort()
            return resp
        except ConnectionError:
            return resp
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end every open stream now instead of at its next heartbeat."""
    state = app.get(STATE)
    if state is not None:
        state.bus.close()
