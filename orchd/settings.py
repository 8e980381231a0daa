"""Boot settings: the config file's ``server`` block with the environment and flags on top.

Precedence (highest first): flags, environment (``HOST``, ``PORT``, ``LOG_LEVEL``,
``ORCHD_STATE_DIR``, ``ORCHD_CONTROL_SOCKET``), the file, defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from orchd.errors import ConfigError, FieldError
from orchd.model import Config, ServerSettings

__all__ = ("DEFAULT_CONFIG_PATHS", "Overrides", "apply_overrides", "find_config")

DEFAULT_CONFIG_PATHS = ("/etc/orchd/orchestrator.yaml", "etc/orchestrator.yaml")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True)
class Overrides:
    host: str | None = None
    port: int | None = None
    log_level: str | None = None
    state_dir: str | None = None
    control_socket: str | None = None
    workers: int | str | None = None


def find_config(flag: str | None, env: Mapping[str, str]) -> str | None:
    if flag:
        return flag
    if env.get("CONFIG_PATH"):
        return env["CONFIG_PATH"]
    for candidate in DEFAULT_CONFIG_PATHS:
        if Path(candidate).is_file():
            return candidate
    return None


def _env_overrides(env: Mapping[str, str]) -> Overrides:
    port: int | None = None
    raw = env.get("PORT")
    if raw:
        try:
            port = int(raw)
        except ValueError:
            port = -1
        if not 0 <= port <= 65535:
            raise ConfigError([FieldError("PORT", f"{raw!r} is not a port number (0-65535)")],
                              "environment")
    level = env.get("LOG_LEVEL") or None
    if level is not None and level.upper() not in LOG_LEVELS:
        message = f"{level!r} is not one of {', '.join(LOG_LEVELS)}"
        raise ConfigError([FieldError("LOG_LEVEL", message)], "environment")
    return Overrides(host=env.get("HOST") or None, port=port, log_level=level,
                     state_dir=env.get("ORCHD_STATE_DIR") or None,
                     control_socket=env.get("ORCHD_CONTROL_SOCKET") or None)


def apply_overrides(config: Config, flags: Overrides,
                    env: Mapping[str, str] | None = None) -> tuple[Config, ServerSettings]:
    """The config with overrides applied, and the boot settings the daemon starts with."""
    env = os.environ if env is None else env
    from_env = _env_overrides(env)
    server = config.server
    changes: dict[str, object] = {}
    for key in ("host", "port", "state_dir", "control_socket", "workers"):
        value = getattr(flags, key)
        if value is None:
            value = getattr(from_env, key)
        if value is not None:
            changes[key] = value
    boot: ServerSettings = replace(server, **changes)  # type: ignore[arg-type]
    if boot.control_socket in ("", "none"):
        boot = replace(boot, control_socket=None)
    level = flags.log_level or from_env.log_level
    if level:
        config = replace(config, log_level=level.upper())
    config = replace(config, server=replace(config.server, state_dir=boot.state_dir))
    return config, boot
