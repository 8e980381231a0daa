"""orchctl's commands, one module per noun.

A module here is registered by ``orchctl.main`` when it has either shape:

* ``register(app: typer.Typer) -> None``: it adds its own commands to the root app
  (``@app.command()``), e.g. top-level verbs such as ``start`` and ``stop``; or
* ``app: typer.Typer``: a command group, added as ``orchctl <NAME> ...`` where NAME is the
  module's ``NAME`` attribute or else the module's name (``endpoints.py`` -> ``endpoints``).

``register`` wins when both exist. Modules in ``ORDER`` come first in ``orchctl --help``; any
other module is picked up after them in name order, so a new file is enough to add a command.
A command reaches the socket and ``--json`` through ``orchctl.session.session_of(ctx)``;
it raises ``orchctl.client.Refused`` / ``Unreachable`` or ``orchctl.session.CommandFailed``
and ``orchctl.main`` turns them into exit codes 1 / 3 / 1.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import typer

__all__ = ("ORDER", "register_all")

ORDER = ("daemon", "restart", "config", "status", "endpoints", "breakers")


def _modules() -> list[ModuleType]:
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    names = [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]
    return [importlib.import_module(f"{__name__}.{name}") for name in names]


def register_all(app: typer.Typer) -> None:
    for module in _modules():
        register = getattr(module, "register", None)
        group = getattr(module, "app", None)
        if callable(register):
            register(app)
        elif isinstance(group, typer.Typer):
            name = getattr(module, "NAME", module.__name__.rsplit(".", 1)[-1])
            app.add_typer(group, name=name)
