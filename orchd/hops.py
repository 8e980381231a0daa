"""Loop detection: this orchd's entry in ``Via`` (RFC 9110 section 7.6.3).

Every request orchd forwards carries ``Via: 1.1 orchd-<token>`` after the entries it came
with; a request that arrives with this instance's token in its ``Via`` has already passed
through here, and is refused with 508 (Loop Detected) instead of going round again. The token
is made once per process at import, so processes forked from one orchd (its workers) share
it. Not compiled: the admin API imports it too, and it runs once per request.
"""

from __future__ import annotations

import os

__all__ = ("TOKEN", "VIA", "seen_here", "via_after")

TOKEN = "orchd-" + os.urandom(6).hex()  # pseudonymous: says nothing of host or port
VIA = "1.1 " + TOKEN  # this hop's entry: protocol version and received-by


def seen_here(via: str | None) -> bool:
    """Whether a received ``Via`` (its field lines joined with commas) names this instance."""
    if not via or TOKEN not in via:
        return False
    for entry in via.split(","):
        # entry: [protocol-name "/"] protocol-version RWS received-by [RWS comment]
        parts = entry.split(None, 2)
        if len(parts) >= 2 and parts[1] == TOKEN:
            return True
    return False


def via_after(received: str | None) -> str:
    """The ``Via`` to forward: what was received, then this hop's entry."""
    return f"{received}, {VIA}" if received else VIA
