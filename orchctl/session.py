"""What every command shares: the socket, ``--json``, the consoles, and calls to orchd.

``main.py`` builds one ``Session`` per invocation and hands it to commands through the Typer
context (``session_of(ctx)``); nothing here is global.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import typer
from rich.console import Console

from orchctl.client import ControlClient, Refused
from orchctl.render import View, to_plain, to_rich

__all__ = ("CommandFailed", "Session", "session_of")

T = TypeVar("T")


class CommandFailed(Exception):
    """A command could not do its job; ``details`` are printed under the message."""

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.details = list(details)


@dataclass
class Session:
    socket: str
    json: bool = False
    socket_explicit: bool = False
    console: Console = field(default_factory=lambda: Console(highlight=False))
    err: Console = field(
        default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True))

    def client(self, timeout: float = 30.0) -> ControlClient:
        return ControlClient(self.socket, timeout)

    def run(self, fn: Callable[[ControlClient], Awaitable[T]]) -> T:
        """Run ``fn(client)`` on a fresh event loop; a refusal in ``--json`` mode prints
        orchd's problem document on stdout before it propagates."""

        async def go() -> T:
            async with self.client() as client:
                return await fn(client)

        try:
            return asyncio.run(go())
        except Refused as exc:
            if self.json:
                self.print_json(exc.problem)
            raise

    def call(self, method: str, path: str, body: Any = None,
             params: Mapping[str, str] | None = None) -> Any:
        return self.run(lambda c: c.request(method, path, body=body, params=params))

    # -- output

    @property
    def terminal(self) -> bool:
        return self.console.is_terminal

    def print_json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        sys.stdout.flush()

    def show(self, view: View) -> None:
        if self.terminal:
            self.console.print(to_rich(view))
        else:
            sys.stdout.write(to_plain(view) + "\n")
            sys.stdout.flush()

    def emit(self, data: Any, view: View) -> None:
        """The API's JSON with ``--json``, else the rendered view."""
        if self.json:
            self.print_json(data)
        else:
            self.show(view)

    def say(self, text: str) -> None:
        if self.json:
            return
        self.show(View((text,)))


def session_of(ctx: typer.Context) -> Session:
    obj = ctx.find_root().obj
    if not isinstance(obj, Session):  # pragma: no cover - main.root always sets it
        raise RuntimeError("orchctl session is missing from the context")
    return obj
