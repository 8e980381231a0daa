"""What every route family shares: the state, the change consumer, JSON answers, and
reading a JSON body."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from orchd.changes import Change, ChangeConsumer
from orchd.errors import ProblemError
from orchd.state import STATE, GatewayState
from orchd.timestamps import stamp

__all__ = ("CHANGES", "get_state", "json_answer", "read_body", "read_json", "stamped", "submit")

MAX_JSON_BODY = 1024 * 1024
MAX_JSON_DEPTH = 64  # nesting levels of arrays and objects in an admin body

# The change consumer writes the state (``STATE``), so it is built after it and given to the
# applications under a key of its own.
CHANGES: web.AppKey[ChangeConsumer] = web.AppKey("changes", ChangeConsumer)


def get_state(request: web.Request) -> GatewayState:
    return request.app[STATE]


async def submit(request: web.Request, change: Change) -> Any:
    """Hand a change to the one change consumer and wait for its result (or its problem)."""
    return await request.app[CHANGES].submit(change)


def _dumps(data: Any) -> str:
    return json.dumps(data, default=str)


def json_answer(data: Any, status: int = 200, headers: dict[str, str] | None = None
                ) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def stamped(data: dict[str, Any], status: int = 200) -> web.Response:
    """A JSON answer with ``timestamp`` and ``timestamp_iso``."""
    return json_answer(stamp(data), status)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or its first ``limit + 1`` bytes when it is longer (the caller
    answers 413). ``read(n)`` returns what has arrived so far, so it is called in a loop:
    a body split over several packets is read whole."""
    raw = b""
    while len(raw) <= limit:
        chunk = await request.content.read(limit + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    return raw


async def read_json(request: web.Request, *, required: bool = True, absent: Any = None) -> Any:
    """The request's JSON body; a problem answer names what is wrong with it. With
    ``required=False`` an empty body reads as ``absent``."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise ProblemError(413, "Request body too large",
                           f"the body is {request.content_length} bytes; "
                           f"the limit for admin calls is {MAX_JSON_BODY}")
    raw = await read_body(request, MAX_JSON_BODY)
    if len(raw) > MAX_JSON_BODY:
        raise ProblemError(413, "Request body too large",
                           f"the limit for admin calls is {MAX_JSON_BODY} bytes")
    if not raw.strip():
        if required:
            raise ProblemError(400, "Missing body", "this call needs a JSON body")
        return absent
    too_deep = ProblemError(400, "Malformed JSON", f"the body is nested more than "
                            f"{MAX_JSON_DEPTH} levels deep")
    if _nesting(raw) > MAX_JSON_DEPTH:
        raise too_deep
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise ProblemError(400, "Malformed JSON", "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ProblemError(400, "Malformed JSON",
                           f"the body is not valid JSON: {exc.msg} at line {exc.lineno} "
                           f"column {exc.colno}") from None
    except RecursionError:
        raise too_deep from None


def _nesting(raw: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text, found without parsing it (the
    parser and the schema validator recurse, and a deep enough body would exhaust the
    stack): brackets inside strings do not count."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot be deeper: most bodies stop here
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest
