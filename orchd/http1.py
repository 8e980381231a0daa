"""HTTP/1.1 framing as pure functions: bytes in, values out.

What both public listeners need to know about the wire format, apart from any connection:
where a request head ends, which request lines and targets are refused although they parse
(``request_refusal``), whether a ``Host`` value is well-formed, where a chunked body ends
(``ChunkedEnd``), and the head of an answer (``answer_head``). llhttp (``httptools``, and
aiohttp's copy of it) parses; these functions decide what the parser does not.

What it does not do: I/O, timers, logging, or anything about limits and deadlines (those are
``orchd.edge_rules``); it knows no connection, so every function can be tested with bytes.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import ClassVar

from aiohttp.http import SERVER_SOFTWARE

__all__ = ("HEAD_END", "HOST_RE", "HTTP1_LINE_ENDS", "ChunkedEnd", "Refusal", "answer_head",
           "date_line", "host_ok", "line_refusal", "phrase", "request_refusal",
           "split_unsafe", "target_refusal")

HEAD_END = b"\r\n\r\n"
HTTP1_LINE_ENDS = (b" HTTP/1.1", b" HTTP/1.0")  # how the request lines served here end

Refusal = tuple[int, str]  # status and detail of a request refused before it is served
WireHeaders = list[tuple[bytes, bytes]]  # names and values as they go on the wire

# RFC 3986 host (reg-name, IPv4, or IP literal) and an optional port: no userinfo, no path.
HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(:[0-9]*)?")
_VERSION_RE = re.compile(rb"HTTP/([0-9])\.([0-9])")

_SERVER_LINE = f"Server: {SERVER_SOFTWARE}\r\n".encode()
# Answer headers the head writer looks at on their way out (by lower-case name).
_LENGTH, _TYPE, _DATE, _SERVER, _CONNECTION = "length", "type", "date", "server", "connection"
_WATCHED = {b"content-length": _LENGTH, b"content-type": _TYPE, b"date": _DATE,
            b"server": _SERVER, b"connection": _CONNECTION}


# -- requests in

def host_ok(value: str) -> bool:
    """A ``Host`` value is ``host[:port]`` (RFC 9110 section 7.2): no userinfo, no path."""
    return HOST_RE.fullmatch(value) is not None


def request_refusal(target: str, version: tuple[int, int] | None,
                    coding: str | None = None) -> Refusal | None:
    """Why a request must be refused although it parses, if it must: ``version`` is None
    for a request line without one (HTTP/0.9), ``coding`` its ``Transfer-Encoding``."""
    if version is None:
        return 505, "HTTP/0.9 requests are not supported; send HTTP/1.1"
    if version[0] != 1:  # HTTP/0.9 with its version written out, 2.0, 3.0
        return 505, (f"HTTP/{version[0]}.{version[1]} is not supported on this port; "
                     "send HTTP/1.1")
    if "#" in target:
        return 400, "the request target has a fragment (#...); fragments are not sent"
    if coding is not None:
        codings = [c.strip().lower() for c in coding.split(",")]
        if codings[-1] == "chunked" and len(codings) > 1:
            return 501, (f"the transfer coding {coding[:100]!r} is not supported: "
                         "only 'chunked' alone is")
    return None


def line_refusal(line: bytes) -> Refusal | None:
    """``request_refusal`` of a request line (without its line end), before a parser sees
    it; None also when it is malformed otherwise (the parser says what is wrong)."""
    parts = line.split()
    if len(parts) == 2:
        return request_refusal(parts[1].decode("latin-1"), None)
    if len(parts) == 3:
        match = _VERSION_RE.fullmatch(parts[2])
        if match is not None:
            return request_refusal(parts[1].decode("latin-1"), (int(match[1]), int(match[2])))
    return None


def target_refusal(target: str, method: str) -> Refusal | None:
    """An origin server takes origin-form targets only: an absolute-form target (a forward
    proxy's) names a host of its own that could disagree with Host."""
    if target.startswith("/") or (target == "*" and method == "OPTIONS"):
        return None
    return 400, ("the request target must be a path (origin-form); "
                 "absolute-form and authority-form targets are refused")


class ChunkedEnd:
    """Finds where a chunked body ends, so that the bytes after it (the next request) are
    not fed to the parser with it. It follows the framing only; llhttp, fed the same bytes,
    validates them (if the two disagreed, the parser would stop the connection)."""

    __slots__ = ("left", "line", "trailer")

    def __init__(self) -> None:
        self.left = 0  # bytes of chunk data (and its CRLF) still to skip
        self.line = b""  # a size or trailer line split across reads
        self.trailer = False  # past the last chunk: trailer lines until an empty one

    def end(self, data: bytes) -> int:
        """The offset in ``data`` just past the body's end; -1 if it is not in ``data``."""
        i, n = 0, len(data)
        while i < n:
            if self.left:
                take = min(self.left, n - i)
                self.left -= take
                i += take
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                return -1
            line, self.line = self.line + data[i:j], b""
            i = j + 1
            if self.trailer:
                if line in (b"", b"\r"):
                    return i
                continue
            try:
                size = int(line.partition(b";")[0].strip(), 16)
            except ValueError:
                return -1  # malformed: the parser says so
            if size < 0:
                return -1
            if size == 0:
                self.trailer = True
            else:
                self.left = size + 2
        return -1


# -- answers out

def answer_head(version: str, head_only: bool, status: int, reason: str,
                headers: WireHeaders, length: int | None,
                keep: bool) -> tuple[bytes, bool, bool]:
    """The head of an answer to an HTTP/``version`` request, whether its body goes chunked,
    and whether the connection stays open after it (``keep`` is what the connection allows;
    the answer's own headers and framing may end it). The head is empty if a header or the
    reason would split a line or holds NUL: ``split_unsafe`` then gives what may be sent.

    ``length`` is the body's size when known (Content-Length is added unless the headers
    carry one); ``head_only``: the request was HEAD (no body follows, whatever the headers
    say). Date and Server are added when missing; Connection is always the writer's own."""
    http10 = version == "1.0"
    must_be_empty = status < 200 or status == 204 or status == 304
    lines = [b"HTTP/%s %d %s\r\n" % (version.encode(), status,
                                     reason.encode("latin-1", "replace")
                                     if reason else phrase(status))]
    has_length = has_type = has_date = has_server = False
    for k, v in headers:
        watched = _WATCHED.get(k.lower())
        if watched is not None:
            if watched == _LENGTH:
                if must_be_empty and status != 304:
                    continue
                has_length = True
            elif watched == _TYPE:
                has_type = True
            elif watched == _DATE:
                has_date = True
            elif watched == _SERVER:
                has_server = True
            else:  # Connection: the writer's own
                if b"close" in v.lower():
                    keep = False
                continue
        lines.append(b"%s: %s\r\n" % (k, v))
    chunked = False
    if not must_be_empty and not head_only:
        if not has_length:
            if length is not None:
                lines.append(b"Content-Length: %d\r\n" % length)
            elif http10:
                keep = False  # the end of the body is the end of the connection
            else:
                chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
        if not has_type and length != 0:
            lines.append(b"Content-Type: application/octet-stream\r\n")
    if not has_date:
        lines.append(date_line())
    if not has_server:
        lines.append(_SERVER_LINE)
    if keep:
        if http10:
            lines.append(b"Connection: keep-alive\r\n")
    elif not http10:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    head = b"".join(lines)
    # One line per header and none split: three scans of the whole head (~0.5 µs for 400
    # bytes, interpreted) rather than a check per header. Whatever produced them (a config,
    # an upstream, a future change), CR, LF and NUL never go out.
    n = len(lines)
    if head.count(b"\n") != n or head.count(b"\r") != n or b"\0" in head:
        return b"", False, False
    return head, chunked, keep


def split_unsafe(headers: WireHeaders) -> tuple[WireHeaders, list[bytes]]:
    """``headers`` without those whose name or value holds CR, LF or NUL, and the names of
    those left out."""
    kept: WireHeaders = []
    dropped: list[bytes] = []
    for name, value in headers:
        if any(c in part for part in (name, value) for c in (b"\r", b"\n", b"\0")):
            dropped.append(name)
        else:
            kept.append((name, value))
    return kept, dropped


def phrase(status: int) -> bytes:
    """The reason phrase of ``status``; ``Unknown`` for a code HTTP does not name."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


class _DateLine:
    """The ``Date`` header line, formatted once a second."""

    second: ClassVar[int] = 0
    line: ClassVar[bytes] = b""

    @classmethod
    def now(cls) -> bytes:
        now = int(time.time())
        if cls.second != now:
            cls.second = now
            cls.line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return cls.line


date_line = _DateLine.now
