"""``orchctl consumers add|list|show|remove NAME``, ``consumers key create|list NAME``,
``consumers key revoke NAME KEY_ID``: API consumers and their keys.

A created key is printed once (the daemon keeps only its hash); ``--json`` prints the
daemon's answer as it is. Views are pure functions of the answers, as in
``orchctl.render``.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from orchctl.render import Grid, View, fmt_time
from orchctl.session import session_of

__all__ = ("app", "consumer_view", "consumers_view", "keys_view", "new_key_view")

app = typer.Typer(help="API consumers and their keys: add, list, show, remove; key create, "
                  "list, revoke.", no_args_is_help=True)
key_app = typer.Typer(help="A consumer's API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(key_app, name="key")

Name = Annotated[str, typer.Argument(metavar="NAME", help="The consumer's name.")]
KeyId = Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (consumers key list).")]


def _path(name: str, suffix: str = "") -> str:
    return f"/consumers/{quote(name, safe='')}{suffix}"


def _key_rows(keys: list[Any]) -> tuple[tuple[str, ...], ...]:
    return tuple((str(k.get("key_id")), str(k.get("prefix")) + "…", fmt_time(k.get("created")))
                 for k in keys if isinstance(k, dict))


def consumers_view(doc: dict[str, Any]) -> View:
    rows = tuple((str(c.get("name")), str(c.get("keys")), fmt_time(c.get("created")))
                 for c in doc.get("consumers") or [] if isinstance(c, dict))
    if not rows:
        return View(("no consumers",))
    return View((Grid(("NAME", "KEYS", "CREATED"), rows),))


def consumer_view(doc: dict[str, Any]) -> View:
    head = f"consumer {doc.get('name')}, created {fmt_time(doc.get('created'))}"
    rows = _key_rows(doc.get("keys") or [])
    if not rows:
        return View((head, "no keys"))
    return View((head, Grid(("KEY_ID", "PREFIX", "CREATED"), rows)))


def keys_view(doc: dict[str, Any]) -> View:
    rows = _key_rows(doc.get("keys") or [])
    if not rows:
        return View((f"consumer {doc.get('consumer')} has no keys",))
    return View((Grid(("KEY_ID", "PREFIX", "CREATED"), rows),))


def new_key_view(doc: dict[str, Any]) -> View:
    return View((f"key {doc.get('key_id')} of consumer {doc.get('consumer')}:",
                 str(doc.get("key")),
                 "It is shown this once: the gateway keeps only its hash."))


@app.command()
def add(ctx: typer.Context, name: Annotated[str, typer.Argument(
        metavar="NAME", help="[A-Za-z0-9_-]{1,64}")]) -> None:
    """Add a consumer (kept in the registry store)."""
    session = session_of(ctx)
    doc = session.call("POST", "/consumers", body={"name": name})
    session.emit(doc, View((str(doc.get("message")),)))


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """Every consumer and how many keys it has."""
    session = session_of(ctx)
    doc = session.call("GET", "/consumers")
    session.emit(doc, consumers_view(doc))


@app.command()
def show(ctx: typer.Context, name: Name) -> None:
    """One consumer and its keys (ids and prefixes, never the keys)."""
    session = session_of(ctx)
    doc = session.call("GET", _path(name))
    session.emit(doc, consumer_view(doc))


@app.command()
def remove(ctx: typer.Context, name: Name) -> None:
    """Remove a consumer; its keys are refused at once."""
    session = session_of(ctx)
    doc = session.call("DELETE", _path(name))
    session.emit(doc, View((str(doc.get("message")),)))


@key_app.command("create")
def key_create(ctx: typer.Context, name: Name) -> None:
    """Create a key for the consumer and print it (this once)."""
    session = session_of(ctx)
    doc = session.call("POST", _path(name, "/keys"))
    session.emit(doc, new_key_view(doc))


@key_app.command("list")
def key_list(ctx: typer.Context, name: Name) -> None:
    """The consumer's keys: ids, prefixes, creation times."""
    session = session_of(ctx)
    doc = session.call("GET", _path(name, "/keys"))
    session.emit(doc, keys_view(doc))


@key_app.command("revoke")
def key_revoke(ctx: typer.Context, name: Name, key_id: KeyId) -> None:
    """Revoke a key: refused at once, on every instance sharing the store."""
    session = session_of(ctx)
    doc = session.call("DELETE", _path(name, f"/keys/{quote(key_id, safe='')}"))
    session.emit(doc, View((str(doc.get("message")),)))
