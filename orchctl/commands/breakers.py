"""``orchctl breakers list|trip|reset``: circuit breakers."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from orchctl.commands.endpoints import complete_name
from orchctl.render import View, breakers_view
from orchctl.session import session_of

__all__ = ("app",)

app = typer.Typer(help="Circuit breakers: list, trip (force open), reset.",
                  no_args_is_help=True)

Name = Annotated[str, typer.Argument(metavar="NAME", help="The endpoint.",
                                     autocompletion=complete_name)]


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """Every breaker, one row per target."""
    session = session_of(ctx)
    doc = session.call("GET", "/health/circuit-breakers")
    session.emit(doc, breakers_view(doc))


@app.command()
def trip(ctx: typer.Context, name: Name) -> None:
    """Force an endpoint's breakers open (forced_open) until reset."""
    session = session_of(ctx)
    doc = session.call("POST", f"/health/circuit-breakers/{quote(name, safe='')}/trip")
    session.emit(doc, View((str(doc.get("message") or f"{name}: breaker tripped"),)))


@app.command()
def reset(ctx: typer.Context, name: Name) -> None:
    """Close an endpoint's breakers and clear their counts."""
    session = session_of(ctx)
    doc = session.call("POST", f"/health/circuit-breakers/{quote(name, safe='')}/reset")
    session.emit(doc, View((str(doc.get("message") or f"{name}: breaker reset"),)))
