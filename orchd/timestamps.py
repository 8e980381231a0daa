"""The ``timestamp`` and ``timestamp_iso`` fields every answer of the admin API carries, and
every problem document (``orchd.problems``).

A module of its own, importing nothing of orchd's, so that the gateway state, the API and
the listeners' early refusals can all use it without an import cycle.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

__all__ = ("iso", "stamp")


def iso(ts: float | None) -> str | None:
    """``ts`` (epoch seconds) as ISO 8601 UTC with milliseconds, ending in ``Z``."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def stamp(data: dict[str, Any]) -> dict[str, Any]:
    """Add ``timestamp`` and ``timestamp_iso`` to an answer."""
    now = time.time()
    data["timestamp"] = now
    data["timestamp_iso"] = iso(now)
    return data
