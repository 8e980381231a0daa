"""``orchctl status [--live]``: the health table, once or redrawn as events arrive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Annotated, Any

import typer
from rich.live import Live

from orchctl.client import ControlClient, Event, Unreachable
from orchctl.render import View, status_view, to_plain, to_rich
from orchctl.session import Session, session_of

__all__ = ("register",)

REFRESH = 2.0  # in-flight counts move without events: redraw at least this often
RECONNECT = 0.5
EVENT_TYPES = ("registry", "health", "breaker", "reload")


async def _fetch(client: ControlClient) -> dict[str, Any]:
    """``/health/status`` with the ``endpoints`` of ``/health/endpoints`` merged in."""
    status, endpoints = await asyncio.gather(client.get("/health/status"),
                                             client.get("/health/endpoints"))
    return {**status, "endpoints": endpoints.get("endpoints", [])}


def _view(doc: dict[str, Any], last: Event | None = None) -> View:
    view = status_view(doc, doc)
    if last is None:
        return view
    data = dict(last.data)
    for key in ("id", "type", "time"):
        data.pop(key, None)
    detail = " ".join(f"{k}={v}" for k, v in data.items() if v is not None)
    return View((*view.parts, f"last event: {last.type} {detail}"))


async def _events(client: ControlClient, queue: asyncio.Queue[Event | Exception]) -> None:
    """Forward ``/events`` to ``queue``; reconnect when orchd ends the stream."""
    while True:
        try:
            async for event in client.events(EVENT_TYPES):
                await queue.put(event)
        except Unreachable as exc:
            await queue.put(exc)
            return
        await asyncio.sleep(RECONNECT)


async def _ticks(queue: asyncio.Queue[Event | Exception]) -> None:
    while True:
        await asyncio.sleep(REFRESH)
        await queue.put(Event("tick"))


async def _live(session: Session) -> None:
    async with session.client() as client:
        queue: asyncio.Queue[Event | Exception] = asyncio.Queue()
        doc = await _fetch(client)
        tasks = [asyncio.create_task(_events(client, queue)),
                 asyncio.create_task(_ticks(queue))]
        last: Event | None = None
        try:
            with contextlib.ExitStack() as stack:
                live: Live | None = None
                if session.terminal and not session.json:
                    live = stack.enter_context(Live(to_rich(_view(doc)), console=session.console,
                                                    auto_refresh=False))
                elif not session.json:
                    sys.stdout.write(to_plain(_view(doc)) + "\n\n")
                    sys.stdout.flush()
                while True:
                    item = await queue.get()
                    if isinstance(item, Exception):
                        raise item
                    if session.json:
                        if item.type != "tick":
                            sys.stdout.write(json.dumps({"event": item.type, **item.data}) + "\n")
                            sys.stdout.flush()
                        continue
                    if item.type != "tick":
                        last = item
                    while not queue.empty():  # coalesce a burst into one redraw
                        extra = queue.get_nowait()
                        if isinstance(extra, Exception):
                            raise extra
                        if extra.type != "tick":
                            last = extra
                    doc = await _fetch(client)
                    if live is not None:
                        live.update(to_rich(_view(doc, last)), refresh=True)
                    elif item.type != "tick":
                        sys.stdout.write(to_plain(_view(doc, last)) + "\n\n")
                        sys.stdout.flush()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def status(
    ctx: typer.Context,
    live: Annotated[bool, typer.Option(
        "--live", "-l", help="Keep the table on screen and redraw it as events arrive "
                             "(Ctrl-C quits); with --json, print each event as a JSON line.")
    ] = False,
) -> None:
    """Endpoints, targets, health, breakers, in-flight requests and the last reload."""
    session = session_of(ctx)
    if not live:
        doc = session.run(_fetch)
        session.emit(doc, _view(doc))
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_live(session))


def register(app: typer.Typer) -> None:
    app.command()(status)
