"""orchd.problems: every shape of a problem document carries the same fields."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import httptools

from orchd.errors import FieldError, ProblemError
from orchd.problems import PROBLEM_TYPE, problem_body, problem_bytes, problem_response

FIELDS = ("type", "title", "status", "detail", "timestamp", "timestamp_iso")


def _assert_problem(doc: dict[str, Any], status: int) -> None:
    assert all(name in doc for name in FIELDS), doc
    assert doc["status"] == status and doc["type"] == "about:blank"
    assert abs(doc["timestamp"] - time.time()) < 5
    assert doc["timestamp_iso"].endswith("Z")
    parsed = datetime.strptime(doc["timestamp_iso"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs(parsed.replace(tzinfo=UTC).timestamp() - doc["timestamp"]) < 0.002


class _Path:
    path = "/registry/endpoints/x"


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers (lower-case names), body and whether it is the whole answer."""
    seen: dict[str, Any] = {"headers": {}, "body": b"", "done": False}

    class Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            seen["headers"][name.decode().lower()] = value.decode()

        def on_body(self, body: bytes) -> None:
            seen["body"] += body

        def on_message_complete(self) -> None:
            seen["done"] = True

    parser = httptools.HttpResponseParser(Sink())
    parser.feed_data(raw)
    return parser.get_status_code(), seen["headers"], seen["body"], seen["done"]


def test_the_body_has_every_field_and_the_error_s_own() -> None:
    exc = ProblemError(422, "Validation failed", "1 error",
                       errors=[FieldError("config.url", "not a URL")],
                       extra={"reason": "invalid"})
    doc = problem_body(exc, "/registry/endpoints")
    _assert_problem(doc, 422)
    assert doc["instance"] == "/registry/endpoints" and doc["reason"] == "invalid"
    assert doc["errors"] == [{"path": "config.url", "message": "not a URL"}]
    assert "instance" not in problem_body(exc)


def test_the_response_is_problem_json_with_the_error_s_headers() -> None:
    exc = ProblemError(503, "Endpoint disabled", "disabled", headers={"Retry-After": "30"})
    resp = problem_response(exc, _Path())
    assert resp.status == 503 and resp.content_type == PROBLEM_TYPE
    assert resp.headers["Retry-After"] == "30"
    assert isinstance(resp.body, bytes)
    doc = json.loads(resp.body)
    _assert_problem(doc, 503)
    assert doc["instance"] == "/registry/endpoints/x"
    assert "instance" not in json.loads(problem_response(exc).body)  # type: ignore[arg-type]


def test_the_raw_answer_is_whole_and_closes() -> None:
    status, headers, body, done = _parse(problem_bytes(431, "too large"))
    assert done and status == 431
    assert headers["content-type"].startswith(PROBLEM_TYPE)
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    doc = json.loads(body)
    _assert_problem(doc, 431)
    assert doc["title"] == "Request Header Fields Too Large" and doc["detail"] == "too large"


def test_the_raw_answer_takes_a_title_and_headers_and_may_keep_the_connection() -> None:
    raw = problem_bytes(503, "full", title="Too many connections",
                        headers={"Retry-After": "1"}, close=False)
    status, headers, body, done = _parse(raw)
    assert done and status == 503 and headers["retry-after"] == "1"
    assert "connection" not in headers
    assert raw.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert json.loads(body)["title"] == "Too many connections"


def test_every_shape_carries_the_same_fields() -> None:
    exc = ProblemError(408, "Request Timeout", "too slow")
    shapes = [problem_body(exc), json.loads(problem_response(exc).body),  # type: ignore[arg-type]
              json.loads(_parse(problem_bytes(408, "too slow"))[2])]
    assert len({frozenset(doc) for doc in shapes}) == 1, shapes
    for doc in shapes:
        _assert_problem(doc, 408)
