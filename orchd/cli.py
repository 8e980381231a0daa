"""``orchd``: flags and exit codes; logging set-up is in orchd.process, the daemon itself in
orchd.daemon."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from orchd import __version__
from orchd.errors import ConfigError
from orchd.loader import load_config
from orchd.model import Config
from orchd.process import JsonFormatter, RedactingFilter, configure_logging, tune_malloc
from orchd.settings import LOG_LEVELS, Overrides, apply_overrides, find_config

__all__ = ("EXIT_CONFIG", "EXIT_OK", "EXIT_STARTUP", "EXIT_USAGE", "JsonFormatter",
           "RedactingFilter", "configure_logging", "main")

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_STARTUP = 3


def _workers(text: str) -> int | str:
    """``--workers``: what server.workers takes."""
    if text == "auto":
        return text
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= 256:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to 256, or auto")
    return number


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orchd", description="Orchestrator API gateway daemon.",
        epilog="Environment: CONFIG_PATH, HOST, PORT, LOG_LEVEL, ORCHD_STATE_DIR, "
               "ORCHD_CONTROL_SOCKET. Signals: TERM/INT stop gracefully, HUP reloads, "
               "USR1 reopens log files.")
    p.add_argument("-c", "--config", help="configuration file (default: $CONFIG_PATH, "
                   "/etc/orchd/orchestrator.yaml, ./etc/orchestrator.yaml)")
    p.add_argument("--host", help="listen address (overrides server.host)")
    p.add_argument("--port", type=int, help="listen port (overrides server.port)")
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                   help="log level (overrides log_level)")
    p.add_argument("--state-dir", help="state directory (overrides server.state_dir)")
    p.add_argument("--control-socket",
                   help="control socket path, or 'none' (overrides server.control_socket)")
    p.add_argument("-w", "--workers", type=_workers,
                   help="processes serving the public port: N, or auto for one per CPU "
                        "(overrides server.workers)")
    p.add_argument("-t", "--check", action="store_true",
                   help="validate the configuration and exit (0 valid, 1 invalid)")
    p.add_argument("-V", "--version", action="version", version=f"orchd {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.port is not None and not 0 <= args.port <= 65535:
        print(f"orchd: --port {args.port} is not a port number (0-65535)", file=sys.stderr)
        return EXIT_USAGE
    path = find_config(args.config, os.environ)
    try:
        config = load_config(path, show_env_values=args.check) if path else Config()
        flags = Overrides(args.host, args.port, args.log_level, args.state_dir,
                          args.control_socket, args.workers)
        config, boot = apply_overrides(config, flags)
    except ConfigError as exc:
        print(f"orchd: configuration invalid: {exc.source or path}", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        for warning in config.warnings:
            print(f"orchd: warning: {path}: {warning}", file=sys.stderr)
        print(f"orchd: configuration {path or '(defaults)'} is valid "
              f"({len(config.endpoints)} endpoint{'' if len(config.endpoints) == 1 else 's'})")
        return EXIT_OK
    try:
        configure_logging(config.log_level, config.server.log_format, config.server.log_file,
                          secrets=[config.server.admin_token])
    except OSError as exc:
        print(f"orchd: cannot open log file {config.server.log_file}: {exc.strerror}",
              file=sys.stderr)
        return EXIT_STARTUP
    if path is None:
        logging.getLogger("orchd.config").warning(
            "no configuration file found; starting with defaults and no endpoints")
    return _run(config, boot, path)


def _unprivileged_hint(error: str) -> str:
    """What a user without root passes when a system path refuses it (the example file and
    the defaults name /var/lib/orchd and /run/orchd, a system service's places)."""
    if os.geteuid() == 0 or not any(why in error for why in (
            "Permission denied", "Read-only file system", "Operation not permitted")):
        return ""
    return ("; as a user without root, pass --state-dir DIR and --control-socket PATH (or "
            "ORCHD_STATE_DIR and ORCHD_CONTROL_SOCKET) in a directory of yours, as "
            "`make run` does: --state-dir run/state --control-socket run/orchd.sock")


def _run(config: Config, boot: object, path: str | None) -> int:
    from orchd.daemon import Daemon, StartupError

    tune_malloc()
    daemon = Daemon(config, boot, path)  # type: ignore[arg-type]
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        factory = None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(daemon.run())
    except StartupError as exc:
        logging.getLogger("orchd.server").error("cannot start: %s%s", exc,
                                                _unprivileged_hint(str(exc)))
        if getattr(boot, "log_file", None):  # the log is a file: say it here too
            print(f"orchd: cannot start: {exc}{_unprivileged_hint(str(exc))}", file=sys.stderr)
        return EXIT_STARTUP
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 1
