"""A breaker's fallback answer cannot split a response: header names and values with control
characters are refused when the config is validated (file and API), with the key path and
line; the listener would not write them anyway (orchd.front drops such a header)."""

from __future__ import annotations

import textwrap

import pytest

from orchd.errors import ConfigError
from orchd.loader import parse_config
from tests.support import base_config, free_port

FILE = textwrap.dedent("""\
    health_check: {enabled: false}
    endpoints:
      - name: svc
        url: http://127.0.0.1:9/
    circuit_breaker:
      fallback_response:
        status: 200
        headers:
          X-Evil: "a\\r\\nSet-Cookie: injected=1"
          X-Ok: "yes; q=1\\tnext, caf\\u00e9"
          NAME: "x"
        body: resting
""")


def _errors(name: str = "X-Name") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(FILE.replace("NAME", name), "orchestrator.yaml")
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize("value", ["\\r\\nSet-Cookie: a=1", "a\\nb", "a\\rb", "a\\0b", "a\\x01b",
                                   "a\\x7fb", "a\\x85b", "a\\u2028b"])
def test_a_fallback_header_value_with_a_control_character_is_refused(value):
    with pytest.raises(ConfigError) as info:
        parse_config(FILE.replace("a\\r\\nSet-Cookie: injected=1", value).replace("NAME", "X-N"),
                     "orchestrator.yaml")
    (error,) = info.value.errors
    assert (error.path, error.line) == ("circuit_breaker.fallback_response.headers.X-Evil", 9)
    for raw in ("\r", "\n", "\0", "\x01", "\x7f", "\x85", "\u2028"):
        assert raw not in error.message, error.message


def test_file_error_names_the_key_path_and_line():
    errors = _errors()
    assert len(errors) == 1, errors
    assert errors[0].startswith("circuit_breaker.fallback_response.headers.X-Evil (line 9): ")


@pytest.mark.parametrize("name", ['"X\\nEvil"', '"X Evil"', '"X:Evil"', '""', '"X\\u00e9"'])
def test_a_fallback_header_name_that_is_not_a_token_is_refused(name):
    errors = _errors(name)
    assert len(errors) == 2, errors  # the value of X-Evil, and this name
    assert any(e.startswith("circuit_breaker.fallback_response.headers") and "X-Evil" not in e
               for e in errors), errors
    assert not any("\n" in e for e in errors), errors


def test_valid_fallback_headers_load():
    config = parse_config(FILE.replace("a\\r\\nSet-Cookie: injected=1", "ok")
                          .replace("NAME", "X-Name_1.~"), "orchestrator.yaml")
    assert config is not None


async def test_registration_with_a_control_character_in_a_fallback_header_is_422(
        orchd_factory, http):
    daemon = orchd_factory(base_config())
    body = {"config": {"name": "svc", "url": f"http://127.0.0.1:{free_port()}/",
                       "circuit_breaker": {"fallback_response": {
                           "status": 200, "headers": {"X-Evil": "a\r\nSet-Cookie: x=1"}}}}}
    async with http.post(f"{daemon.url}/registry/endpoints", json=body) as r:
        assert r.status == 422, await r.text()
        problem = await r.json(content_type=None)
    paths = [e["path"] for e in problem["errors"]]
    assert any(p.endswith("circuit_breaker.fallback_response.headers.X-Evil") for p in paths), (
        problem)
    async with http.get(f"{daemon.url}/registry/endpoints/svc") as r:
        assert r.status == 404


def test_the_error_says_what_a_header_may_hold():
    errors = _errors('"X\\nEvil"')
    value = next(e for e in errors if "X-Evil" in e)
    name = next(e for e in errors if "X-Evil" not in e)
    assert "does not match" not in value and "control character" in value, value
    assert "does not match" not in name and "header name" in name, name
