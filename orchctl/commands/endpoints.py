"""``orchctl endpoints list|show|add|remove|drain|enable``: the registry."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any
from urllib.parse import quote

import typer

from orchctl import DEFAULT_SOCKET
from orchctl.client import ControlClient, Refused, Unreachable
from orchctl.render import View, endpoint_view, endpoints_view
from orchctl.session import session_of

__all__ = ("app", "complete_name")

app = typer.Typer(help="Registered endpoints: list, show, add, remove, drain, enable.",
                  no_args_is_help=True)

LIST_LIMIT = 10000


def complete_name(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of endpoint names, asked of the running orchd (none if it is down)."""
    root = ctx.find_root()
    path = root.params.get("socket") or os.environ.get("ORCHCTL_SOCKET") or DEFAULT_SOCKET

    async def names() -> list[str]:
        async with ControlClient(str(path), timeout=2) as client:
            doc = await client.get("/registry/endpoints", {"limit": str(LIST_LIMIT)})
        return [str(e.get("endpoint_id")) for e in doc.get("endpoints") or []]

    try:
        found = asyncio.run(names())
    except (Unreachable, Refused, OSError):
        return []
    return [n for n in found if n.startswith(incomplete)]


Name = Annotated[str, typer.Argument(metavar="NAME", help="The endpoint's name.",
                                     autocompletion=complete_name)]
TargetUrl = Annotated[str | None, typer.Option(
    "--url", metavar="URL", help="Only this target of the endpoint.")]


def _path(name: str, suffix: str = "") -> str:
    return f"/registry/endpoints/{quote(name, safe='')}{suffix}"


@app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(
        "--status", help="Only endpoints with this status (active, unhealthy, disabled, ...).")
    ] = None,
) -> None:
    """Every registered endpoint, from the file and from the API."""
    session = session_of(ctx)
    params = {"limit": str(LIST_LIMIT)}
    if status:
        params["status"] = status
    doc = session.call("GET", "/registry/endpoints", params=params)
    session.emit(doc, endpoints_view(doc))


@app.command()
def show(ctx: typer.Context, name: Name) -> None:
    """One endpoint: its settings and its targets."""
    session = session_of(ctx)
    doc = session.call("GET", _path(name))
    session.emit(doc, endpoint_view(doc))


@app.command()
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="[A-Za-z0-9_-]{1,64}")],
    url: Annotated[str, typer.Argument(metavar="URL", help="The upstream base URL.")],
    method: Annotated[list[str] | None, typer.Option(
        "--method", "-m", metavar="M", help="An allowed method; repeat it (default: GET).")
    ] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", metavar="S", help="Seconds per request, 1-300 (default 30).")] = None,
    ttl: Annotated[float | None, typer.Option(
        "--ttl", metavar="S", help="Seconds it lives without a heartbeat "
        "(POST /registry/endpoints/NAME/heartbeat); default: until removed.")] = None,
) -> None:
    """Register an endpoint (source api): routable at once, kept across restarts."""
    session = session_of(ctx)
    config: dict[str, Any] = {"name": name, "url": url}
    if method:
        config["methods"] = [m.upper() for m in method]
    if timeout is not None:
        config["timeout"] = timeout
    if ttl is not None:
        config["ttl"] = ttl
    doc = session.call("POST", "/registry/endpoints", body={"config": config})
    session.emit(doc, View((f"{doc.get('message')} -> {doc.get('endpoint_url')}",)))


@app.command()
def remove(ctx: typer.Context, name: Name) -> None:
    """Remove an API-registered endpoint (requests in flight finish)."""
    session = session_of(ctx)
    doc = session.call("DELETE", _path(name))
    session.emit(doc, View((str(doc.get("message")),)))


def _admin(ctx: typer.Context, name: str, action: str, url: str | None) -> None:
    session = session_of(ctx)
    doc = session.call("POST", _path(name, f"/{action}"), body={"url": url} if url else None)
    session.emit(doc, View((str(doc.get("message")),)))


@app.command()
def drain(ctx: typer.Context, name: Name, url: TargetUrl = None) -> None:
    """Stop sending new requests to the endpoint (or one target); in-flight ones finish."""
    _admin(ctx, name, "drain", url)


@app.command()
def enable(ctx: typer.Context, name: Name, url: TargetUrl = None) -> None:
    """Resume sending requests to a drained endpoint (or one target)."""
    _admin(ctx, name, "enable", url)
