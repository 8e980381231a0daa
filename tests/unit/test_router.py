"""orchd.router: resolving /orchestrator/<name>/... and mapping paths under the base path."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchd.model import BreakerSettings, EndpointSpec
from orchd.router import PathError, Route, RoutingTable, map_path


def route(name: str, version: str | None = None) -> Route:
    spec = EndpointSpec(name=name, urls=("http://127.0.0.1:1/base",), version=version)
    return Route(spec, "config", (), BreakerSettings(), 0.0, False, frozenset(spec.methods))


@pytest.mark.parametrize(("segments", "expected"), [
    ([], "/base"),
    ([""], "/base/"),
    (["a", "b"], "/base/a/b"),
    (["a", ".", "b"], "/base/a/b"),
    (["a", "%2E", "b"], "/base/a/b"),
    (["a%20b", "c"], "/base/a%20b/c"),
    (["file.txt"], "/base/file.txt"),
    (["..."], "/base/..."),
])
def test_map_path_keeps_base(segments: list[str], expected: str) -> None:
    assert map_path("/base", segments) == expected


def test_map_path_empty_base() -> None:
    assert map_path("", []) == "/"
    assert map_path("", ["x"]) == "/x"


@pytest.mark.parametrize("segment", ["..", "%2e%2e", "%2E%2e", ".%2e", "%2e.", "a%2f..",
                                     "..%2fa", "%2f..%2f", "a%5c..", "..\\x", "%2e%2e%2f"])
def test_map_path_refuses_climbing(segment: str) -> None:
    with pytest.raises(PathError):
        map_path("/base", ["a", segment, "b"])


def test_double_encoded_dots_stay_literal() -> None:
    # %252e%252e decodes once to the literal text "%2e%2e": forwarded as is, never a climb.
    assert map_path("/base", ["%252e%252e"]) == "/base/%252e%252e"


@given(st.lists(st.text(alphabet="ab./%2eEf5c\\", max_size=8), max_size=6))
def test_map_path_never_climbs(segments: list[str]) -> None:
    try:
        out = map_path("/base", segments)
    except PathError:
        return
    assert out.startswith("/base")
    from urllib.parse import unquote
    parts = [unquote(p) for p in out.split("/")]
    assert ".." not in parts


def test_resolve_by_name_and_version() -> None:
    a, b = route("users", "v1"), route("orders")
    table = RoutingTable.build([a, b], 3)
    assert table.revision == 3
    assert table.resolve("users/x/y") == (a, ["x", "y"])
    assert table.resolve("users") == (a, [])
    assert table.resolve("v1/users/x") == (a, ["x"])
    assert table.resolve("orders/") == (b, [""])
    assert table.resolve("v2/users/x") is None
    assert table.resolve("nope/x") is None
    assert table.resolve("us%65rs/x") == (a, ["x"])


def test_route_as_dict_fields() -> None:
    data = route("users", "v1").as_dict()
    for key in ("endpoint_id", "name", "url", "version", "methods", "auth_type", "timeout",
                "retries", "health_check_path", "status", "circuit_breaker_state",
                "registration_time", "source"):
        assert key in data
    assert data["endpoint_id"] == "users"
    assert data["source"] == "config"
