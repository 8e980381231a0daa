"""``/control/*``: served only on the control socket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from orchd import __version__
from orchd.api.common import get_state, json_answer

__all__ = ("RESTART", "STOP_EVENT", "routes")

routes = web.RouteTableDef()

STOP_EVENT: web.AppKey[asyncio.Event] = web.AppKey("stop_event", asyncio.Event)
RESTART: web.AppKey[Callable[[], Awaitable[dict[str, Any]]]] = web.AppKey("restart")


@routes.post("/control/stop")
async def stop(request: web.Request) -> web.Response:
    request.app[STOP_EVENT].set()
    return json_answer({"success": True, "message": "stopping", "pid": os.getpid()}, 202)


@routes.post("/control/restart")
async def restart(request: web.Request) -> web.Response:
    """Start a new orchd on the same sockets, wait until it is ready, then drain and exit
    (``orchd.handover``). Answers once the new process serves: its pid and the old one's."""
    return json_answer(await request.app[RESTART]())


@routes.get("/control/info")
async def info(request: web.Request) -> web.Response:
    state = get_state(request)
    return json_answer({"pid": os.getpid(), "version": __version__,
                        "config_path": state.config_path, "ready": state.ready,
                        "listen": f"{state.boot.host}:{state.boot.port}"})
