"""``health_check_path`` semantics: '/x' from the target's root, 'x' under its base URL,
none: the base URL itself."""

from __future__ import annotations

import pytest

from orchd.breaker import CircuitBreaker
from orchd.health import probe_url
from orchd.model import BreakerSettings
from orchd.target import Target


def target(url: str) -> Target:
    return Target("svc", url, CircuitBreaker(BreakerSettings()))


@pytest.mark.parametrize(("base", "path", "expected"), [
    ("http://10.0.0.5:8080/api/v1", "/health", "http://10.0.0.5:8080/health"),
    ("http://10.0.0.5:8080/api/v1", "health", "http://10.0.0.5:8080/api/v1/health"),
    ("http://10.0.0.5:8080/api/v1", None, "http://10.0.0.5:8080/api/v1"),
    ("http://10.0.0.5:8080/api/v1", "", "http://10.0.0.5:8080/api/v1"),
    ("http://10.0.0.5:8080", "/healthz", "http://10.0.0.5:8080/healthz"),
    ("http://10.0.0.5:8080", "healthz", "http://10.0.0.5:8080/healthz"),
    ("http://10.0.0.5:8080", None, "http://10.0.0.5:8080"),
    ("http://10.0.0.5:8080/api", "status/ready", "http://10.0.0.5:8080/api/status/ready"),
    ("http://10.0.0.5:8080/api", "/status?full=1", "http://10.0.0.5:8080/status?full=1"),
    ("https://svc.example:8443/base", "/health", "https://svc.example:8443/health"),
    ("http://[::1]:9000/api", "/health", "http://[::1]:9000/health"),
])
def test_probe_url(base: str, path: str | None, expected: str) -> None:
    assert str(probe_url(target(base), path)) == expected
