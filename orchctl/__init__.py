"""orchctl: the command-line control tool of orchd, over its Unix control socket."""

from __future__ import annotations

__all__ = ("DEFAULT_SOCKET",)

DEFAULT_SOCKET = "/run/orchd/orchd.sock"
