"""``orchctl``: the Typer app, global options, and the one place errors become exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.console import Console

from orchctl import DEFAULT_SOCKET
from orchctl.client import Refused, Unreachable
from orchctl.commands import register_all
from orchctl.render import problem_lines
from orchctl.session import CommandFailed, Session

__all__ = ("EXIT_OK", "EXIT_REFUSED", "EXIT_UNREACHABLE", "EXIT_USAGE", "app",
           "hoist_global_options", "main")

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

app = typer.Typer(
    name="orchctl",
    help="Control orchd, the Orchestrator API gateway, over its Unix control socket.",
    epilog="Exit codes: 0 ok, 1 orchd refused (its message is printed), 2 usage, "
           "3 orchd not reachable on the socket.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"orchctl {version('orchestrator-gateway')}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    socket: Annotated[str, typer.Option(
        "--socket", "-s", envvar="ORCHCTL_SOCKET", metavar="PATH",
        help="orchd's control socket.")] = DEFAULT_SOCKET,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the API's JSON instead of tables.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", "-V", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    source = ctx.get_parameter_source("socket")
    explicit = source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")
    ctx.obj = Session(socket=os.path.expanduser(socket), json=json_output,
                      socket_explicit=explicit)


register_all(app)


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """Let ``--json`` and ``--socket PATH`` follow the command too (``orchctl endpoints list
    --json``, as ``kubectl get -o json`` allows): move them in front of it. Nothing after
    ``--`` is touched."""
    front: list[str] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg == "--json" or arg.startswith("--socket="):
            front.append(arg)
        elif arg == "--socket" and i + 1 < len(args):
            front += args[i:i + 2]
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def main(argv: Sequence[str] | None = None) -> int:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    args = hoist_global_options(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="orchctl")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    except Unreachable as exc:
        err.print(f"orchctl: {exc}", markup=False)
        if exc.reason == "no such socket":
            err.print("orchctl: is orchd running? Start it with 'orchctl start', or pass "
                      "--socket / ORCHCTL_SOCKET", markup=False)
        return EXIT_UNREACHABLE
    except Refused as exc:
        lines = problem_lines(exc.detail, exc.errors) if not exc.errors else problem_lines(
            str(exc.problem.get("title") or exc.detail), exc.errors)
        err.print(f"orchctl: {lines[0]}", markup=False)
        for line in lines[1:]:
            err.print(line, markup=False)
        return EXIT_REFUSED
    except CommandFailed as exc:
        err.print(f"orchctl: {exc}", markup=False)
        for line in exc.details:
            err.print(line, markup=False)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
