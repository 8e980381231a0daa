"""``orchctl start`` and ``orchctl stop``: the daemon's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from orchctl.client import ControlClient, Refused, Unreachable
from orchctl.session import CommandFailed, Session, session_of

__all__ = ("register",)

POLL = 0.1
LOG_TAIL = 20


def _resolve(session: Session, config: str | None) -> tuple[str | None, str]:
    """The config file orchd will load and the socket it will listen on.

    An explicit ``--socket``/``ORCHCTL_SOCKET`` is handed to orchd; otherwise orchd's own
    rules apply (``ORCHD_CONTROL_SOCKET``, then ``server.control_socket``) and orchctl waits
    on the socket they give. The file is validated here so a bad one fails at once.
    """
    from orchd.errors import ConfigError
    from orchd.loader import load_config
    from orchd.model import Config
    from orchd.settings import Overrides, apply_overrides, find_config

    path = find_config(config, os.environ)
    try:
        loaded = load_config(path) if path else Config()
        flag = session.socket if session.socket_explicit else None
        _, boot = apply_overrides(loaded, Overrides(control_socket=flag))
    except ConfigError as exc:
        raise CommandFailed(f"configuration invalid: {exc.source or path}",
                            [f"  {e}" for e in exc.errors]) from None
    if boot.control_socket is None:
        raise CommandFailed("the configuration disables the control socket "
                            "(server.control_socket); orchctl needs it")
    return (os.path.abspath(path) if path else None), boot.control_socket


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; its parent has not reaped it yet
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


async def _probe(socket_path: str) -> dict[str, Any] | None:
    """``/control/info`` of the orchd on the socket, or None when nobody answers."""
    try:
        async with ControlClient(socket_path, timeout=5) as client:
            info = await client.get("/control/info")
    except Unreachable:
        return None
    return info if isinstance(info, dict) else {}


async def _ready(socket_path: str) -> dict[str, Any] | None:
    try:
        async with ControlClient(socket_path, timeout=5) as client:
            await client.get("/health/ready")
            info = await client.get("/control/info")
    except (Unreachable, Refused):
        return None
    return info if isinstance(info, dict) else {}


def _tail(path: Path) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [f"  {line}" for line in lines[-LOG_TAIL:]]


def _command(config_path: str | None, session: Session) -> list[str]:
    # -P: "python -m" would put the working directory first on orchd's module path, where
    # any module named like one it imports would be run instead.
    cmd = [sys.executable, "-P", "-m", "orchd"]
    if config_path:
        cmd += ["--config", config_path]
    if session.socket_explicit:
        cmd += ["--control-socket", session.socket]
    return cmd


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        env.pop(key, None)
    # orchd runs with -P: what put orchctl's own modules on its path (PYTHONPATH, or
    # ``python -m orchctl`` in a source tree) is given to orchd the same way.
    stdlib = os.path.dirname(os.__file__)
    front = sys.path[:sys.path.index(stdlib)] if stdlib in sys.path else []
    env["PYTHONPATH"] = os.pathsep.join(path for path in front if path)
    return env


def start(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option(
        "--config", "-c", metavar="FILE",
        help="Configuration file (default: $CONFIG_PATH, /etc/orchd/orchestrator.yaml, "
             "./etc/orchestrator.yaml).")] = None,
    foreground: Annotated[bool, typer.Option(
        "--foreground", "-f", help="Run orchd in this terminal instead of detaching it.")
    ] = False,
    log_file: Annotated[Path | None, typer.Option(
        "--log-file", metavar="FILE",
        help="Where a detached orchd logs (default: orchd.log next to the socket).")] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.1, help="Seconds to wait for orchd to become ready.")] = 30.0,
) -> None:
    """Start orchd, wait until it is ready, print its pid."""
    session = session_of(ctx)
    config_path, socket_path = _resolve(session, config)
    session.socket = socket_path
    running = asyncio.run(_probe(socket_path))
    if running is not None:
        raise CommandFailed(f"orchd is already running on {socket_path} "
                            f"(pid {running.get('pid', '?')})")
    cmd = _command(config_path, session)
    if foreground:
        if not session.json:
            session.err.print(f"orchd pid {os.getpid()}, control socket {socket_path}",
                              markup=False)
        sys.stdout.flush()
        os.execve(sys.executable, cmd, _child_env())
    log_path = log_file or Path(socket_path).parent / "orchd.log"
    try:
        with contextlib.suppress(FileExistsError):
            Path(socket_path).parent.mkdir(parents=True, mode=0o750)
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    except OSError as exc:
        raise CommandFailed(f"cannot open the log file {log_path}: {exc.strerror} "
                            "(use --log-file, or run as orchd's user)") from None
    with log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=_child_env(),
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    info: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise CommandFailed(f"orchd exited with status {code} while starting; "
                                f"the end of {log_path}:", _tail(log_path))
        info = asyncio.run(_ready(socket_path))
        if info is not None:
            break
        time.sleep(POLL)
    if info is None:
        raise CommandFailed(f"orchd (pid {proc.pid}) is not ready after {timeout:g}s; "
                            f"it keeps starting, see {log_path}", _tail(log_path))
    if session.json:
        session.print_json(info)
    else:
        session.err.print(f"orchd started: listening on {info.get('listen')}, control socket "
                          f"{socket_path}, log {log_path}; pid:", markup=False)
        typer.echo(str(proc.pid))


def stop(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.1,
        help="Seconds to wait for orchd to exit (it drains for server.shutdown_timeout).")
    ] = 60.0,
) -> None:
    """Stop orchd gracefully (in-flight requests finish) and wait for it to exit."""
    session = session_of(ctx)
    answer = session.call("POST", "/control/stop")
    pid = answer.get("pid") if isinstance(answer, dict) else None
    deadline = time.monotonic() + timeout

    def gone() -> bool:
        if asyncio.run(_probe(session.socket)) is not None:
            return False
        return not (isinstance(pid, int) and _alive(pid))

    while not gone():
        if time.monotonic() > deadline:
            raise CommandFailed(f"orchd (pid {pid}) has not exited after {timeout:g}s")
        time.sleep(POLL)
    if session.json:
        session.print_json(answer)
    else:
        session.say(f"orchd stopped (pid {pid})")


def register(app: typer.Typer) -> None:
    app.command()(start)
    app.command()(stop)
