"""Fuzzing the config loader: any text gives a Config or a ConfigError, nothing else.

Three generators: arbitrary text, YAML documents built from the schema's own vocabulary
with values of every type (so most of them get deep into validation), and real YAML
oddities (anchors, tags, merge keys, huge numbers, ``${VAR}`` forms).
"""

from __future__ import annotations

import contextlib

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchd.errors import ConfigError
from orchd.loader import parse_config, validate_endpoint, validate_registration
from orchd.model import Config

KEYS = ["server", "endpoints", "health_check", "circuit_breaker", "registry", "log_level",
        "metrics", "name", "url", "urls", "methods", "timeout", "retries", "version",
        "auth_type", "require_auth", "disabled", "health_check_path", "host", "port",
        "admin_token", "max_body_size", "allowed_upstreams", "header_timeout",
        "max_connections", "failure_threshold", "reset_timeout", "fallback_response",
        "status", "headers", "body", "etcd", "endpoints", "store", "ttl", "description",
        "interval", "enabled", "x", "", "0"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["http://127.0.0.1:9", "htp://x", "http://", "http://[::1", "GET",
                     "${HOME}", "${NOPE}", "${NOPE:-7}", "169.254.0.0/16", "*.x", "!",
                     "10.0.0.0/99", "http://169.254.169.254", "a" * 70]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=25,
)
ODDITIES = [
    "a: &x [1, *x]\n", "? [a, b]\n: c\n", "a: !!python/object:os.system x\n",
    "<<: {a: 1}\n", "server: {port: 1e999}\n", "endpoints: [{name: a, url: ${X}}]\n",
    "server: {port: ${PORT:-abc}}\n", "\t", "---\n---\n", "a: b\n  c: d\n", "[1, 2",
    "server: !!binary aGVsbG8=\n", "%YAML 9.9\n---\na: 1\n", "\ufeffserver: {}\n",
    "endpoints: {name: a}\n", "a: " + "[" * 200 + "]" * 200 + "\n",
    "a: " + "[" * 5000 + "]" * 5000 + "\n",
    # "billion laughs": nine aliases per level, nine levels
    "l0: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 10)),
]


def check(text: str) -> None:
    try:
        config = parse_config(text, "fuzz.yaml", env={"HOME": "/root", "X": "http://a"})
    except ConfigError as exc:
        assert exc.errors, "a ConfigError must name at least one error"
        for error in exc.errors:
            assert isinstance(error.message, str) and error.message
        return
    assert isinstance(config, Config)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    check(text)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.dictionaries(st.sampled_from(KEYS), documents, max_size=6))
@example({"endpoints": [{"name": "a", "url": "http://x", "circuit_breaker": None}]})
@example({"server": {"allowed_upstreams": [None]}})
@example({"endpoints": [{"name": "a", "urls": []}]})
def test_schema_shaped_documents(doc: dict) -> None:
    check(yaml.safe_dump(doc, allow_unicode=True))


@pytest.mark.parametrize("odd", ODDITIES)
def test_yaml_oddities(odd: str) -> None:
    check(odd)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents)
def test_registration_bodies(body: object) -> None:
    for fn in (validate_registration, validate_endpoint):
        with contextlib.suppress(ConfigError):
            fn(body)
        with contextlib.suppress(ConfigError):
            fn({"config": body})
