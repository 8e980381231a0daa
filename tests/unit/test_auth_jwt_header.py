"""A token's header, read from its first segment alone (``orchd.auth.jwt._header``): what
PyJWT reads, and a malformed token refused as such, whatever its header says."""

from __future__ import annotations

import base64
import json

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from orchd.auth.jwt import TokenError, _header

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def segment(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def test_the_header_is_what_pyjwt_reads():
    token = pyjwt.encode({"sub": "u"}, KEY, algorithm="RS256", headers={"kid": "k1"})
    assert _header(token) == pyjwt.get_unverified_header(token)
    head, _, rest = token.partition(".")
    padded = head + "=" * (-len(head) % 4) + "." + rest  # padding, as some issuers send
    assert _header(padded) == pyjwt.get_unverified_header(padded)


@pytest.mark.parametrize("token", [
    "", "a", "a.b", "a.b.c", "a.b.c.d", "..", "a..c",
    segment({"alg": "RS256"}) + "!.e30.sig",
    segment({"alg": "RS256"}) + ".e30!.sig",
    segment({"alg": "RS256"}) + ".e30.s+g",
    segment([1, 2]) + ".e30.sig",
    segment("RS256") + ".e30.sig",
    base64.urlsafe_b64encode(b"\xff\xfe{").decode() + ".e30.sig",
    segment({"alg": "RS256"}) + ".e30.sig\n",
    "é" + segment({"alg": "RS256"}) + ".e30.sig",
])
def test_malformed_tokens_are_refused_as_such(token: str):
    with pytest.raises(TokenError) as info:
        _header(token)
    assert info.value.reason == "malformed"
