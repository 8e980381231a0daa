"""``orchd``: flags, logging set-up and exit codes; the daemon itself is in orchd.daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

from orchd import __version__
from orchd.errors import ConfigError
from orchd.loader import load_config
from orchd.log import TextFormatter, redact, utc_stamp
from orchd.model import Config
from orchd.settings import LOG_LEVELS, Overrides, apply_overrides, find_config
from orchd.traffic import ACCESS_LINES

__all__ = ("EXIT_CONFIG", "EXIT_OK", "EXIT_STARTUP", "EXIT_USAGE", "JsonFormatter",
           "RedactingFilter", "configure_logging", "main")

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_STARTUP = 3


class RedactingFilter(logging.Filter):
    """The last guard: scrubs credentials and the admin token from every record's message.

    Nothing in orchd logs a header value; this catches what a library or a future change
    might let through.
    """

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if len(s) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True

    def redact(self, message: str) -> str:
        return redact(message, self.secrets)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; access log fields become keys of their own."""

    writes_json = True  # orchd.accesslog writes its lines in the same shape

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": self.formatTime(record), "level": record.levelname,
            "logger": record.name, "message": record.getMessage()}
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            out.update(access)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_stamp(record.created)


def configure_logging(level: str, fmt: str = "text", log_file: str | None = None,
                      secrets: Sequence[str] = ()) -> None:
    """Root handler on stderr, or on ``log_file`` (reopened on SIGUSR1 by the daemon)."""
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())  # one line a record: controls escaped
    handler.addFilter(RedactingFilter(secrets))
    handler.addFilter(ACCESS_LINES.before_record)  # batched access lines keep their place
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("orchd").setLevel(level)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


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
                          args.control_socket)
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


# glibc malloc parameters (mallopt): a proxy allocates and frees a buffer of each body it
# moves. With glibc's defaults the heap is trimmed back to the system after every burst and
# grown again for the next, so each request pays page faults: measured on 64 KiB bodies,
# 146 µs of kernel time per request instead of 91. Freed memory is kept for reuse instead,
# up to _TRIM_THRESHOLD. Operators who set MALLOC_* variables keep their own settings.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_TRIM_THRESHOLD = 64 * 1024 * 1024
_TOP_PAD = 4 * 1024 * 1024
_MMAP_THRESHOLD = 4 * 1024 * 1024


def _tune_malloc() -> None:
    if any(k.startswith("MALLOC_") for k in os.environ) or not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc (musl has no mallopt): nothing to tune
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    mallopt(_M_TOP_PAD, _TOP_PAD)


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

    _tune_malloc()
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
