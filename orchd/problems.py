"""Problem documents (RFC 9457): the one place where an error's answer body is built.

Every problem answer of the gateway, whoever sends it, carries the same fields: ``type``,
``title``, ``status``, ``detail``, ``instance`` when the request's path is known, ``errors``
for validation, the error's extension members (such as ``reason``), and ``timestamp`` and
``timestamp_iso`` as every answer of the admin API has them. Three shapes of one document:

* ``problem_body``: the document as a dict;
* ``problem_response``: an aiohttp ``web.Response`` (the admin API's error boundary,
  ``orchd.api.middleware``, and both listeners' answers to a request);
* ``problem_bytes``: a whole raw HTTP/1.1 answer, for the listeners' refusals outside any
  request (a header section too large or too slow), written straight to the transport.

It imports nothing of ``orchd.api`` nor of the listeners, so that all of them can use it.
What it does not do: decide which error an exception is (``orchd.api.middleware``) or log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Protocol

from aiohttp import web

from orchd.errors import ProblemError
from orchd.timestamps import stamp

__all__ = ("PROBLEM_TYPE", "Located", "problem_body", "problem_bytes", "problem_response")

PROBLEM_TYPE = "application/problem+json"


class Located(Protocol):
    """A request as a problem document sees it: its decoded path is the ``instance``
    (``web.Request`` and the public listener's own request both have one)."""

    @property
    def path(self) -> str: ...


def problem_body(exc: ProblemError, instance: str | None = None) -> dict[str, Any]:
    """The problem document of ``exc``, stamped with the time it is answered."""
    return stamp(exc.body(instance))


def _document(exc: ProblemError, instance: str | None) -> str:
    return json.dumps(problem_body(exc, instance), default=str)


def problem_response(exc: ProblemError, request: Located | None = None) -> web.Response:
    """``exc`` as an ``application/problem+json`` answer, with the headers it carries."""
    instance = request.path if request is not None else None
    return web.Response(status=exc.status, text=_document(exc, instance),
                        content_type=PROBLEM_TYPE, headers=dict(exc.headers))


def problem_bytes(status: int, detail: str, *, title: str | None = None,
                  headers: Mapping[str, str] | None = None, close: bool = True) -> bytes:
    """A whole HTTP/1.1 problem answer as bytes, for a listener to write itself outside any
    request; it ends the connection unless ``close`` is False. The title is the status's
    phrase unless given; ``headers`` come from the gateway, never from a client."""
    phrase = HTTPStatus(status).phrase
    body = _document(ProblemError(status, title or phrase, detail), None).encode()
    lines = [f"HTTP/1.1 {status} {phrase}", f"Content-Type: {PROBLEM_TYPE}; charset=utf-8"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
