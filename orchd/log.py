"""Named loggers, one per concern, the redaction every record goes through, and the text
format that keeps each record on one line. Configured only at the entry point (orchd.cli).

One record, one line: a request path, a header or a parser's error can carry CR, LF or other
control characters; written raw they would end the line and start one of the client's
choosing (a forged record). ``escape_controls`` writes them as Python escapes (``\\n``,
``\\x85``, ``\\u2028``); the access lines (orchd.traffic) escape their fields with it, and
``TextFormatter`` the final message of every other record. A traceback that follows a
message stays as it is. ``log_format: json`` needs neither: ``json.dumps`` escapes them.
"""

import logging
import re
import time
from typing import Final

__all__ = (
    "TEXT_FORMAT",
    "TextFormatter",
    "access_logger",
    "config_logger",
    "escape_controls",
    "health_logger",
    "proxy_logger",
    "redact",
    "registry_logger",
    "server_logger",
    "utc_stamp",
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # log_format: text


def escape_controls(text: str) -> str:
    """``text`` with each character that is not printable (C0 and C1 controls, DEL, line and
    paragraph separators, lone surrogates...) written as its Python escape, so that it cannot
    end a log line. Printable text (nearly every call) is returned as it is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


class TextFormatter(logging.Formatter):
    """``log_format: text``: ``TEXT_FORMAT``, each record's message on one line whatever
    its arguments hold (``escape_controls``); a traceback after it keeps its lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        message: str = record.message
        if not message.isprintable():
            record.message = escape_controls(message)
        return super().formatMessage(record)


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
