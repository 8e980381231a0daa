"""JWT validation with real keys (RSA, EC, Ed25519, HMAC) and a real JWKS served by a local
aiohttp server on 127.0.0.1: rotated, stopped, asked for unknown kids."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt as pyjwt
import pytest
from aiohttp import ClientSession, web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchd.auth.jwks import JwksRegistry, aiohttp_fetch, max_age
from orchd.auth.jwt import JwtValidator, TokenError, claim_headers
from orchd.model import JwtSettings

ISS = "https://id.example.test/"
SECRET = "s" * 64


def _jwk(key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    algo = pyjwt.get_algorithm_by_name(alg or "RS256")
    doc: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    doc["kid"] = kid
    if alg:
        doc["alg"] = alg
    return doc


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
ED = ed25519.Ed25519PrivateKey.generate()


def token(key: Any, alg: str, kid: str | None = "r1", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISS, "aud": "orders", "exp": now + 300, "iat": now, "sub": "u1",
            "scope": "read write", **claims}
    body = {k: v for k, v in body.items() if v is not None}
    headers = {"kid": kid} if kid is not None else {}
    return pyjwt.encode(body, key, algorithm=alg, headers=headers)


class Jwks:
    """A JWKS endpoint whose keys, Cache-Control and availability the test changes."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = [_jwk(RSA, "r1"), _jwk(EC, "e1", "ES256"),
                                           _jwk(ED, "d1", "EdDSA")]
        self.hits = 0
        self.status = 200
        self.cache_control = "max-age=600"
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"keys": self.keys}, status=self.status,
                                 headers={"Cache-Control": self.cache_control})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/jwks.json"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def jwks() -> AsyncIterator[Jwks]:
    server = Jwks()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def registry() -> AsyncIterator[JwksRegistry]:
    async with ClientSession() as session:
        reg = JwksRegistry(aiohttp_fetch(session, timeout=2))
        yield reg
        await reg.close()


def settings_for(url: str, **kw: Any) -> JwtSettings:
    base: dict[str, Any] = {"issuer": ISS, "jwks_url": url, "audiences": ("orders",),
                            "algorithms": ("RS256", "ES256", "EdDSA", "PS256"), "leeway": 5}
    base.update(kw)
    return JwtSettings(**base)


async def refused(v: JwtValidator, tok: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        await v.verify(tok)
    assert tok not in str(info.value) and tok not in info.value.www_authenticate
    return info.value


async def test_rsa_ec_ed25519_tokens_pass_and_are_cached(jwks: Jwks, registry: JwksRegistry):
    v = JwtValidator(settings_for(jwks.url), registry.for_url(jwks.url))
    for key, alg, kid in ((RSA, "RS256", "r1"), (RSA, "PS256", "r1"), (EC, "ES256", "e1"),
                          (ED, "EdDSA", "d1")):
        tok = token(key, alg, kid)
        assert (await v.verify(tok)).subject == "u1"
        assert v.cached(tok) is not None
    assert jwks.hits == 1  # one fetch for every endpoint and token


async def test_each_failure_has_its_reason(jwks: Jwks, registry: JwksRegistry):
    v = JwtValidator(settings_for(jwks.url, required_scopes=("admin",)),
                     registry.for_url(jwks.url))
    now = int(time.time())
    cases = {
        "expired": token(RSA, "RS256", exp=now - 60),
        "wrong_issuer": token(RSA, "RS256", iss="https://evil.test/"),
        "wrong_audience": token(RSA, "RS256", aud="billing"),
        "not_yet_valid": token(RSA, "RS256", nbf=now + 600),
        "bad_signature": token(RSA2, "RS256", kid="r1"),
        "unknown_key": token(RSA2, "RS256", kid="nope"),
        "algorithm_not_allowed": token(RSA, "RS512"),
        "missing_claim": token(RSA, "RS256", exp=None),
        "malformed": "a.b.c",
    }
    for reason, tok in cases.items():
        err = await refused(v, tok)
        assert err.reason == reason and err.status == 401, (reason, err)
        assert 'error="invalid_token"' in err.www_authenticate
    err = await refused(v, token(RSA, "RS256"))
    assert (err.reason, err.status) == ("insufficient_scope", 403)
    assert 'error="insufficient_scope"' in err.www_authenticate and 'scope="admin"' in \
        err.www_authenticate


async def test_alg_none_and_hs_with_the_public_key_are_refused(jwks: Jwks,
                                                               registry: JwksRegistry):
    v = JwtValidator(settings_for(jwks.url), registry.for_url(jwks.url))
    unsigned = pyjwt.encode({"iss": ISS, "aud": "orders", "exp": time.time() + 60}, None,
                            algorithm="none")
    assert (await refused(v, unsigned)).reason == "algorithm_not_allowed"
    assert (await refused(v, token(SECRET, "HS256"))).reason == "algorithm_not_allowed"


async def test_hmac_secret():
    s = JwtSettings(issuer=ISS, secret=SECRET, algorithms=("HS256",))
    v = JwtValidator(s, None)
    assert (await v.verify(token(SECRET, "HS256"))).claims["sub"] == "u1"
    assert (await refused(v, token("t" * 64, "HS256"))).reason == "bad_signature"


async def test_rotation_unknown_kid_refetch_is_rate_limited(jwks: Jwks, registry: JwksRegistry):
    cache = registry.for_url(jwks.url)
    v = JwtValidator(settings_for(jwks.url), cache)
    first = token(RSA, "RS256", "r1")
    await v.verify(first)
    jwks.keys = [_jwk(RSA2, "r2")]  # rotation: r1 gone, r2 new
    assert (await v.verify(token(RSA2, "RS256", "r2"))).subject == "u1"
    assert jwks.hits == 2
    # The keys changed: what the old key verified is checked again, and refused.
    assert v.cached(first) is None
    assert (await refused(v, first)).reason == "unknown_key"
    for _ in range(5):  # unknown kids within 10 s: no more fetches
        assert (await refused(v, token(RSA2, "RS256", "zz"))).reason == "unknown_key"
    assert jwks.hits == 2


async def test_failures_keep_the_last_good_keys(jwks: Jwks, registry: JwksRegistry):
    cache = registry.for_url(jwks.url)
    v = JwtValidator(settings_for(jwks.url), cache)
    await v.verify(token(RSA, "RS256"))
    jwks.status = 500
    assert await cache.refresh() is False
    assert cache.status()["last_error"] == "HTTP 500" and cache.status()["keys"] == 3
    await jwks.stop()
    assert await cache.refresh() is False
    assert cache.status()["last_error"] and cache.status()["keys"] == 3
    assert (await v.verify(token(EC, "ES256", "e1"))).subject == "u1"
    status = registry.status()
    assert status[0]["url"] == jwks.url and status[0]["fetched_at"] is not None


async def test_one_cache_per_url_and_retain(jwks: Jwks, registry: JwksRegistry):
    assert registry.for_url(jwks.url) is registry.for_url(jwks.url)
    await registry.refresh_all()
    await registry.retain([])
    assert registry.status() == []


def test_max_age_is_clamped():
    assert max_age("public, max-age=5") == 60
    assert max_age("max-age=999999") == 86400
    assert max_age("max-age=3600") == 3600
    assert max_age(None) == 300 and max_age("no-store") == 60


async def test_jwks_file(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_jwk(ED, "d1", "EdDSA"),
                                         {"kty": "oct", "k": "c2VjcmV0"}]}))
    reg = JwksRegistry(aiohttp_fetch(None, 1))  # type: ignore[arg-type]
    v = JwtValidator(JwtSettings(issuer=ISS, jwks_file=str(path), algorithms=("EdDSA",)),
                     reg.for_file(str(path)))
    assert (await v.verify(token(ED, "EdDSA", "d1"))).subject == "u1"


def test_claims_to_headers():
    s = JwtSettings(issuer=ISS, secret=SECRET, algorithms=("HS256",),
                    claims_to_headers=(("sub", "X-User-Id"), ("roles", "X-Roles"),
                                       ("evil", "X-Evil"), ("n", "X-N")))
    got = claim_headers(s, {"sub": "u1", "roles": ["a", "b"], "evil": "x\r\nY: z", "n": 3})
    assert got == {"X-User-Id": "u1", "X-Roles": "a,b", "X-N": "3"}


async def test_the_verified_cache_is_bounded():
    s = JwtSettings(issuer=ISS, secret=SECRET, algorithms=("HS256",))
    v = JwtValidator(s, None, cache_size=8)
    for i in range(20):
        await v.verify(token(SECRET, "HS256", sub=f"u{i}"))
    assert len(v) == 8


_HS = JwtValidator(JwtSettings(issuer=ISS, secret=SECRET, algorithms=("HS256",),
                               audiences=("orders",)), None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from([SECRET, "k" * 64]),
    alg=st.sampled_from(["HS256", "HS384", "none"]),
    iss=st.sampled_from([ISS, "https://other/", None]),
    aud=st.sampled_from(["orders", "billing", None]),
    exp_offset=st.integers(-10_000, 10_000) | st.none(),
    nbf_offset=st.integers(-10_000, 10_000) | st.none(),
    extra=st.dictionaries(st.sampled_from(["sub", "scope", "jti"]), st.text(max_size=8)),
)
async def test_only_current_key_and_configured_claims_pass(key, alg, iss, aud, exp_offset,
                                                           nbf_offset, extra):
    now = int(time.time())
    body: dict[str, Any] = dict(extra)
    for name, value in (("iss", iss), ("aud", aud),
                        ("exp", None if exp_offset is None else now + exp_offset),
                        ("nbf", None if nbf_offset is None else now + nbf_offset)):
        if value is not None:
            body[name] = value
    tok = pyjwt.encode(body, None if alg == "none" else key, algorithm=alg)
    right = key == SECRET and alg == "HS256" and iss == ISS and aud == "orders"
    # leeway is 30 s: a second either side of it is left alone (the clock moves)
    bad = (not right or exp_offset is None or exp_offset < -31
           or (nbf_offset is not None and nbf_offset > 31))
    good = (right and exp_offset is not None and exp_offset > -29
            and (nbf_offset is None or nbf_offset < 29))
    try:
        await _HS.verify(tok)
        passed = True
    except TokenError:
        passed = False
    if bad:
        assert not passed, body
    if good:
        assert passed, body
