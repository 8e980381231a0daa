"""orchd.http1: HTTP/1.1 framing as pure functions, tested with bytes alone."""

from __future__ import annotations

import pytest

from orchd.http1 import (
    ChunkedEnd,
    answer_head,
    host_ok,
    line_refusal,
    phrase,
    request_refusal,
    split_unsafe,
    target_refusal,
)


@pytest.mark.parametrize(("body", "rest"), [
    (b"0\r\n\r\n", b""),
    (b"5\r\nhello\r\n0\r\n\r\n", b"GET / HTTP/1.1\r\n"),
    (b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n", b"next"),
    (b"a\r\n0123456789\r\n0\r\n\n", b""),
])
def test_chunked_end_finds_the_end_in_one_read(body: bytes, rest: bytes) -> None:
    assert ChunkedEnd().end(body + rest) == len(body)


def test_chunked_end_across_reads_byte_by_byte() -> None:
    data = b"3\r\nabc\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\nNEXT"
    finder = ChunkedEnd()
    ends = [finder.end(data[i:i + 1]) for i in range(len(data))]
    assert ends.index(1) == len(data) - len(b"NEXT") - 1
    assert all(e == -1 for e in ends[:ends.index(1)])


@pytest.mark.parametrize("data", [b"zz\r\n", b"5\r\nhel", b"-1\r\n"])
def test_chunked_end_not_found(data: bytes) -> None:
    assert ChunkedEnd().end(data) == -1


@pytest.mark.parametrize(("value", "ok"), [
    ("gw", True), ("gw:8000", True), ("[::1]:80", True), ("10.0.0.1", True), ("", True),
    ("user@gw", False), ("gw/path", False), ("gw:80:81", False), ("g w", False),
])
def test_host_ok(value: str, ok: bool) -> None:
    assert host_ok(value) is ok


@pytest.mark.parametrize(("line", "status"), [
    (b"GET /x", 505), (b"GET /x HTTP/0.9", 505), (b"GET /x HTTP/2.0", 505),
    (b"GET /x#f HTTP/1.1", 400), (b"GET /x HTTP/1.1", None), (b"GET /x HTTP/x", None),
    (b"GET", None),
])
def test_line_refusal(line: bytes, status: int | None) -> None:
    refusal = line_refusal(line)
    assert (refusal[0] if refusal else None) == status


def test_request_refusal_codings() -> None:
    assert request_refusal("/", (1, 1), "chunked") is None
    refusal = request_refusal("/", (1, 1), "gzip, chunked")
    assert refusal is not None and refusal[0] == 501


@pytest.mark.parametrize(("target", "method", "ok"), [
    ("/a", "GET", True), ("*", "OPTIONS", True), ("*", "GET", False),
    ("http://x/", "GET", False), ("x:80", "CONNECT", False),
])
def test_target_refusal(target: str, method: str, ok: bool) -> None:
    assert (target_refusal(target, method) is None) is ok


def _lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def test_answer_head_with_length_keeps_the_connection() -> None:
    head, chunked, keep = answer_head("1.1", False, 200, "", [(b"X-A", b"1")], 5, True)
    lines = _lines(head)
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"X-A: 1" in lines and b"Content-Length: 5" in lines
    assert any(line.startswith(b"Date: ") for line in lines)
    assert any(line.startswith(b"Server: ") for line in lines)
    assert not chunked and keep
    assert not any(line.startswith(b"Connection") for line in lines)


def test_answer_head_without_length_is_chunked_on_1_1_and_closes_on_1_0() -> None:
    head, chunked, keep = answer_head("1.1", False, 200, "OK", [], None, True)
    assert chunked and keep and b"Transfer-Encoding: chunked" in _lines(head)
    head, chunked, keep = answer_head("1.0", False, 200, "OK", [], None, True)
    assert not chunked and not keep and b"Transfer-Encoding" not in head


def test_answer_head_connection_header_is_the_writers_own() -> None:
    head, _, keep = answer_head("1.1", False, 200, "", [(b"Connection", b"close")], 0, True)
    assert not keep and _lines(head).count(b"Connection: close") == 1
    head, _, keep = answer_head("1.0", False, 200, "", [], 0, True)
    assert keep and b"Connection: keep-alive" in _lines(head)


@pytest.mark.parametrize("status", [204, 304, 101])
def test_answer_head_without_body(status: int) -> None:
    head, chunked, _ = answer_head("1.1", False, status, "", [], None, True)
    assert not chunked and b"Transfer-Encoding" not in head and b"Content-Type" not in head


def test_answer_head_to_head_request_adds_no_framing() -> None:
    head, chunked, _ = answer_head("1.1", True, 200, "", [], None, True)
    assert not chunked and b"Transfer-Encoding" not in head


@pytest.mark.parametrize(("reason", "headers"), [
    ("OK\r\nX-Evil: 1", []),
    ("", [(b"X-A", b"1\r\nX-Evil: 1")]),
    ("", [(b"X-A", b"1\0")]),
])
def test_answer_head_never_splits_a_line(reason: str, headers: list[tuple[bytes, bytes]]) -> None:
    assert answer_head("1.1", False, 200, reason, headers, 0, True) == (b"", False, False)
    kept, dropped = split_unsafe(headers)
    head, _, _ = answer_head("1.1", False, 200, "", kept, 0, True)
    assert head and b"X-Evil" not in head and b"\0" not in head
    assert dropped == [name for name, _ in headers]


def test_phrase() -> None:
    assert phrase(404) == b"Not Found" and phrase(599) == b"Unknown"
