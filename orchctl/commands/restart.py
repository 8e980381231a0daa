"""``orchctl restart``: restart orchd with no downtime.

orchd starts a new orchd that takes over its listening sockets, waits until the new one is
ready, then drains and exits (see orchd's ``orchd.handover``). The answer comes once the new
process serves; if it could not start, the old one keeps serving and orchd says why (exit 1).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from orchctl.client import ControlClient, Refused
from orchctl.session import session_of

__all__ = ("register",)


def restart(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=1.0,
        help="Seconds to wait for orchd's answer (the new process must be ready by then).")
    ] = 90.0,
) -> None:
    """Restart orchd with no downtime: a new process takes over the sockets, the old drains."""
    session = session_of(ctx)

    async def call() -> Any:
        async with ControlClient(session.socket, timeout) as client:
            return await client.post("/control/restart")

    try:
        answer = asyncio.run(call())
    except Refused as exc:
        if session.json:
            session.print_json(exc.problem)
        raise
    if session.json:
        session.print_json(answer)
        return
    old, new = answer.get("old_pid"), answer.get("pid")
    session.say(f"orchd restarted: pid {new} serves now; pid {old} drains and exits")


def register(app: typer.Typer) -> None:
    app.command()(restart)
