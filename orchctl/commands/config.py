"""``orchctl reload`` and ``orchctl config check``: the configuration file."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from orchctl.render import View, counted, reload_view
from orchctl.session import CommandFailed, session_of

__all__ = ("app", "register")

app = typer.Typer(help="The configuration file.", no_args_is_help=True)


def reload(ctx: typer.Context) -> None:
    """Reload the configuration file; print the diff, or the errors (exit 1)."""
    session = session_of(ctx)
    result = session.call("POST", "/config/reload")
    session.emit(result, reload_view(result))


@app.command("check")
def check(
    ctx: typer.Context,
    file: Annotated[str | None, typer.Argument(
        metavar="[FILE]",
        help="The file to check (default: $CONFIG_PATH, /etc/orchd/orchestrator.yaml, "
             "./etc/orchestrator.yaml).")] = None,
) -> None:
    """Validate a configuration file offline: exit 0 valid, 1 invalid (every error shown)."""
    from orchd.errors import ConfigError
    from orchd.loader import load_config
    from orchd.settings import find_config

    session = session_of(ctx)
    path = find_config(file, os.environ)
    if path is None:
        raise typer.BadParameter("no FILE given and no configuration file found "
                                 "($CONFIG_PATH, /etc/orchd/orchestrator.yaml, "
                                 "./etc/orchestrator.yaml)", param_hint="FILE")
    try:
        config = load_config(path, show_env_values=True)
    except ConfigError as exc:
        errors = [e.as_dict() for e in exc.errors]
        if session.json:
            session.print_json({"valid": False, "config_path": path, "errors": errors})
        raise CommandFailed(f"{path} is invalid: {len(errors)} "
                            f"error{'s' if len(errors) != 1 else ''}",
                            [f"  {e}" for e in exc.errors]) from None
    answer: dict[str, Any] = {
        "valid": True, "config_path": path, "endpoints_count": len(config.endpoints),
        "endpoints": [e.name for e in config.endpoints], "warnings": list(config.warnings)}
    lines = [f"{path} is valid ({counted(len(config.endpoints), 'endpoint')})"]
    lines += [f"warning: {w}" for w in config.warnings]
    session.emit(answer, View(tuple(lines)))


def register(app_: typer.Typer) -> None:
    app_.command()(reload)
    app_.add_typer(app, name="config")
