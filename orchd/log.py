"""Named loggers, one per concern, and the redaction every record goes through. Configured
only at the entry point (orchd.cli)."""

import logging
import re
import time
from typing import Final

__all__ = (
    "TEXT_FORMAT",
    "access_logger",
    "config_logger",
    "health_logger",
    "proxy_logger",
    "redact",
    "registry_logger",
    "server_logger",
    "utc_stamp",
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # log_format: text


def utc_stamp(when: float) -> str:
    """``when`` (epoch seconds) as log_format json writes it: ISO 8601 UTC, milliseconds."""
    return (f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(when))}."
            f"{int(when * 1000) % 1000:03d}Z")


_REDACTED = "[REDACTED]"
# A credential that slipped into a message: "Bearer xyz", "Authorization: ...", "api_key=...".
_SECRET_PATTERNS = (
    re.compile(r"(?i)\b(bearer|basic|digest)(\s+)[A-Za-z0-9._~+/=:-]+"),
    re.compile(r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-api-key|"
               r"api[_-]?key|admin_token|password)(['\"]?\s*[:=]\s*['\"]?)[^'\"\s,;}]+"),
    re.compile(r"(://[^/\s:@]+)(:)[^/\s@]+(?=@)"),  # a password in a URL
)
# Words one of the patterns above needs (lower case): most lines (every access line)
# contain none of them, and skip the three substitutions.
_SECRET_HINTS: Final = ("bearer", "basic", "digest", "auth", "cookie", "api", "token",
                        "password", "@")


def redact(message: str, secrets: tuple[str, ...] = ()) -> str:
    """``message`` with each of ``secrets`` and anything that looks like a credential
    replaced by ``[REDACTED]``."""
    clean = message
    for secret in secrets:
        if secret in clean:
            clean = clean.replace(secret, _REDACTED)
    low = clean.lower()
    for hint in _SECRET_HINTS:
        if hint in low:
            break
    else:
        return clean
    for pattern in _SECRET_PATTERNS:
        clean = pattern.sub(rf"\1\2{_REDACTED}", clean)
    return clean


server_logger = logging.getLogger("orchd.server")
config_logger = logging.getLogger("orchd.config")
registry_logger = logging.getLogger("orchd.registry")
proxy_logger = logging.getLogger("orchd.proxy")
health_logger = logging.getLogger("orchd.health")
access_logger = logging.getLogger("orchd.access")
