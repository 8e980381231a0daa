"""The control-socket client: HTTP over orchd's Unix socket (aiohttp ``UnixConnector``).

Two failures are told apart, as ``supervisorctl`` does: the daemon cannot be reached
(``Unreachable``: no such socket, connection refused, permission denied) and the daemon
answered with an error (``Refused``: its RFC 9457 problem document).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp

__all__ = ("ControlClient", "Event", "Refused", "Unreachable", "iter_sse")

DEFAULT_TIMEOUT = 30.0

_REASONS = {
    errno.ENOENT: "no such socket",
    errno.ECONNREFUSED: "connection refused (a stale socket: nothing listens on it)",
    errno.EACCES: "permission denied (join the socket's group or use sudo)",
    errno.ENOTSOCK: "not a socket",
    errno.ENOTDIR: "no such socket",
}


class Unreachable(Exception):
    """Nobody answers on the control socket."""

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(f"cannot reach orchd on {socket_path}: {reason}")
        self.socket_path = socket_path
        self.reason = reason


class Refused(Exception):
    """orchd answered with an error status; ``problem`` is its problem document."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        super().__init__(str(detail))
        self.status = status
        self.problem = dict(problem)

    @property
    def detail(self) -> str:
        return str(self)

    @property
    def errors(self) -> list[dict[str, Any]]:
        errors = self.problem.get("errors")
        return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


@dataclass(frozen=True, slots=True)
class Event:
    """One Server-Sent Event from ``GET /events``."""

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None


def _reason(exc: BaseException, socket_path: str) -> str:
    os_error = getattr(exc, "os_error", None)
    code = getattr(os_error, "errno", None)
    if code == errno.ECONNREFUSED:
        # Linux refuses a connection to any file that is not a listening socket.
        try:
            mode = os.stat(socket_path).st_mode
        except OSError:
            mode = stat.S_IFSOCK
        if not stat.S_ISSOCK(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a regular file" \
                if stat.S_ISREG(mode) else "some other file"
            return f"not a socket ({kind})"
    if code in _REASONS:
        return _REASONS[code]
    return getattr(os_error, "strerror", None) or str(exc) or type(exc).__name__


async def iter_sse(content: aiohttp.StreamReader) -> AsyncIterator[Event]:
    """Parse a ``text/event-stream`` body into events (comments and ``retry`` skipped)."""
    kind, ident = "message", None
    data: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except json.JSONDecodeError:
                    payload = {"text": "\n".join(data)}
                yield Event(kind, payload if isinstance(payload, dict) else {"data": payload},
                            ident)
            kind, data, ident = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            ident = value


class ControlClient:
    """``async with ControlClient(path) as c: await c.get("/health/status")``."""

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ControlClient:
        connector = aiohttp.UnixConnector(path=self.socket_path)
        self._session = aiohttp.ClientSession(
            base_url="http://orchd", connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=self.timeout),
            headers={"User-Agent": "orchctl"})
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ControlClient is used outside 'async with'")
        return self._session

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: Mapping[str, str] | None = None) -> Any:
        """The JSON answer of ``method path``; raises ``Refused`` or ``Unreachable``."""
        try:
            async with self.session.request(method, path, json=body, params=params) as resp:
                text = await resp.text()
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(self.socket_path, _reason(exc, self.socket_path)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unreachable(self.socket_path,
                              f"the connection failed: {exc or type(exc).__name__}") from None
        try:
            data = json.loads(text) if text else {}
        except json.JSONDecodeError:
            data = {"detail": text.strip()[:500]}
        if status >= 400:
            raise Refused(status, data if isinstance(data, dict) else {"detail": str(data)})
        return data

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.request("POST", path, body=body)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)

    async def events(self, types: tuple[str, ...] = ()) -> AsyncIterator[Event]:
        """The ``/events`` stream, until orchd ends it."""
        params = {"types": ",".join(types)} if types else None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
        try:
            async with self.session.get("/events", params=params, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise Refused(resp.status, {"detail": (await resp.text())[:500]})
                async for event in iter_sse(resp.content):
                    yield event
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(self.socket_path, _reason(exc, self.socket_path)) from None
        except aiohttp.ClientPayloadError:
            return
