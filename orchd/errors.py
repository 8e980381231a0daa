"""Errors that carry their HTTP answer: turned into RFC 9457 problem documents at one boundary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ("ConfigError", "FieldError", "ProblemError", "StoreError", "UpstreamBroke",
           "UpstreamConnectError", "endpoint_not_found")


@dataclass(frozen=True, slots=True)
class FieldError:
    """One validation error: where (a key path such as ``endpoints[1].url``) and what."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or "(document)"
        if self.line is not None:
            where = f"{where} (line {self.line})"
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "message": self.message}
        if self.line is not None:
            out["line"] = self.line
        return out


class ConfigError(Exception):
    """A configuration document (file or request body) is invalid; carries every error."""

    def __init__(self, errors: Sequence[FieldError], source: str | None = None) -> None:
        self.errors = tuple(errors)
        self.source = source
        super().__init__(self.summary())

    def summary(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        if len(self.errors) == 1:
            return prefix + str(self.errors[0])
        lines = "; ".join(str(e) for e in self.errors)
        return f"{prefix}{len(self.errors)} errors: {lines}"


class StoreError(Exception):
    """The registry store cannot be read or written."""


class UpstreamConnectError(OSError):
    """The connection to the upstream could not be opened (refused, unreachable, DNS)."""


class UpstreamBroke(ConnectionError):
    """The upstream closed or garbled the exchange after the connection was open."""


@dataclass(eq=False)
class ProblemError(Exception):
    """An error answered as ``application/problem+json``."""

    status: int
    title: str
    detail: str
    errors: Sequence[FieldError] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    type: str = "about:blank"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)

    def body(self, instance: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            out["instance"] = instance
        if self.errors:
            out["errors"] = [e.as_dict() for e in self.errors]
        out.update(self.extra)
        return out


def endpoint_not_found(name: str, title: str = "Endpoint not found") -> ProblemError:
    """404: no endpoint named ``name`` is registered (the admin API's routes and the change
    path). The proxy keeps its documented title, ``Unknown endpoint``."""
    return ProblemError(404, title, f"no endpoint named {name!r} is registered")
