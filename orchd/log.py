"""Named loggers, one per concern. Configured only at the entry point (orchd.cli)."""

import logging
import time

__all__ = (
    "TEXT_FORMAT",
    "access_logger",
    "config_logger",
    "health_logger",
    "proxy_logger",
    "registry_logger",
    "server_logger",
    "utc_stamp",
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # log_format: text


def utc_stamp(when: float) -> str:
    """``when`` (epoch seconds) as log_format json writes it: ISO 8601 UTC, milliseconds."""
    return (f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(when))}."
            f"{int(when * 1000) % 1000:03d}Z")


server_logger = logging.getLogger("orchd.server")
config_logger = logging.getLogger("orchd.config")
registry_logger = logging.getLogger("orchd.registry")
proxy_logger = logging.getLogger("orchd.proxy")
health_logger = logging.getLogger("orchd.health")
access_logger = logging.getLogger("orchd.access")
