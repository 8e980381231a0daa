"""The auth, rate_limit and cors endpoint keys: loaded into frozen settings, and every
mistake named with its key path and line."""

from __future__ import annotations

import textwrap

import pytest

from orchd.errors import ConfigError
from orchd.loader import parse_config
from orchd.model import AuthSettings, CorsSettings, RateLimitSettings

ENV = {"JWT_SECRET": "x" * 64}


def load(block: str):
    text = ("endpoints:\n  - name: a\n    url: http://127.0.0.1:9\n"
            + textwrap.indent(textwrap.dedent(block), "    "))
    return parse_config(text, "o.yaml", env=ENV).endpoints[0]


def errors(block: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(block)
    return [str(e) for e in info.value.errors]


def test_full_blocks_load():
    ep = load("""
        auth:
          jwt:
            issuer: https://id.example.com/
            audiences: [orders]
            jwks_url: https://id.example.com/.well-known/jwks.json
            algorithms: [RS256, ES256, EdDSA]
            required_scopes: [read]
            claims_to_headers: {sub: X-User-Id}
          api_key: {header: X-API-Key, query: false}
          anonymous: false
          hide_credentials: true
        rate_limit: {rate: 100, per: 1, key: client_ip}
        cors:
          allow_origins: [https://app.example.com]
          allow_headers: [Authorization, Content-Type]
          expose_headers: [X-Request-ID]
          max_age: 600
    """)
    assert isinstance(ep.auth, AuthSettings) and ep.auth.jwt is not None
    assert ep.auth.jwt.claims_to_headers == (("sub", "X-User-Id"),)
    assert ep.auth.api_key is not None and ep.auth.api_key.query is None
    assert ep.rate_limit == RateLimitSettings(rate=100.0, per=1.0, burst=100)
    assert isinstance(ep.cors, CorsSettings) and ep.cors.allow_methods is None
    hs = load("""
        auth: {jwt: {issuer: i, secret: "${JWT_SECRET}", algorithms: [HS256]}}
    """)
    assert hs.auth is not None and hs.auth.jwt is not None and hs.auth.jwt.secret == "x" * 64
    assert "x" * 64 not in repr(hs.auth) and "x" * 64 not in str(hs.public_document())


def test_without_an_auth_block_auth_type_keeps_its_meaning():
    ep = load("auth_type: bearer\nrequire_auth: true\n")
    assert ep.auth is None and ep.require_auth and ep.auth_type == "bearer"


def test_mistakes_name_the_key_and_line():
    got = errors("""
        auth:
          jwt: {issuer: i, algorithms: [none], jwks_url: https://i/j, bogus: 1}
        rate_limit: {rate: 1, key: cookie}
    """)
    assert any(e.startswith("endpoints[0].auth.jwt.bogus (line 6): unknown key") for e in got)
    assert any("endpoints[0].auth.jwt.algorithms[0] (line 6): 'none' is not one of" in e
               for e in got)
    assert any(e.startswith("endpoints[0].rate_limit.key (line 7)") for e in got)
    got = errors("""
        auth: {jwt: {issuer: i, algorithms: [HS256, RS256], secret: "${JWT_SECRET}"}}
    """)
    assert any("cannot be listed with HS* algorithms" in e for e in got)
    assert all("x" * 64 not in e for e in got)
    assert any("'secret' is required" in e for e in errors(
        "auth: {jwt: {issuer: i, algorithms: [HS256]}}\n"))
    assert any("'jwks_url' is required" in e for e in errors("auth: {jwt: {issuer: i}}\n"))
