"""CORS preflight answers and the header fields of ordinary answers."""

from __future__ import annotations

import pytest

from orchd.auth.cors import answer_headers, is_preflight, preflight
from orchd.errors import ConfigError
from orchd.loader import validate_endpoint
from orchd.model import CorsSettings

APP = "https://app.example.com"


def test_preflight_allowed_and_refused():
    s = CorsSettings(allow_origins=(APP,), allow_headers=("Authorization", "Content-Type"),
                     allow_credentials=True, max_age=600)
    assert is_preflight("OPTIONS", APP, "POST") and not is_preflight("OPTIONS", APP, None)
    ok = preflight(s, ("GET", "POST"), "HTTPS://APP.example.com:443", "POST")
    assert ok.status == 204
    assert ok.headers["Access-Control-Allow-Origin"] == "HTTPS://APP.example.com:443"
    assert ok.headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert ok.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert ok.headers["Access-Control-Allow-Credentials"] == "true"
    assert ok.headers["Access-Control-Max-Age"] == "600" and "Origin" in ok.headers["Vary"]
    bad = preflight(s, ("GET",), "https://evil.example", "GET")
    assert bad.status == 403 and "Origin" in bad.headers["Vary"]
    assert "Access-Control-Allow-Origin" not in bad.headers


def test_answer_headers():
    s = CorsSettings(allow_origins=(APP,), expose_headers=("X-Request-ID",))
    assert answer_headers(s, APP) == {"Access-Control-Allow-Origin": APP, "Vary": "Origin",
                                      "Access-Control-Expose-Headers": "X-Request-ID"}
    assert answer_headers(s, "https://evil.example") == {"Vary": "Origin"}
    star = CorsSettings(allow_origins=("*",))
    assert answer_headers(star, "https://any.example")["Access-Control-Allow-Origin"] == "*"
    assert preflight(star, ("GET",), "https://any.example", "GET").status == 204


def test_star_with_credentials_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        validate_endpoint({"name": "a", "url": "http://127.0.0.1:9",
                           "cors": {"allow_origins": ["*"], "allow_credentials": True}})
    assert info.value.errors[0].path == "cors.allow_origins[0]"
