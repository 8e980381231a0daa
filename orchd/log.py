"""Named loggers, one per concern. Configured only at the entry point (orchd.cli)."""

import logging

__all__ = (
    "TEXT_FORMAT",
    "access_logger",
    "config_logger",
    "health_logger",
    "proxy_logger",
    "registry_logger",
    "server_logger",
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # log_format: text

server_logger = logging.getLogger("orchd.server")
config_logger = logging.getLogger("orchd.config")
registry_logger = logging.getLogger("orchd.registry")
proxy_logger = logging.getLogger("orchd.proxy")
health_logger = logging.getLogger("orchd.health")
access_logger = logging.getLogger("orchd.access")
