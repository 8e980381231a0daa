"""Consumers and API keys: generation, the directory, the file store across a restart, and
the authenticator that uses them."""

from __future__ import annotations

import json
import time

import jwt as pyjwt
import pytest
from multidict import CIMultiDict

from orchd.auth.gateway import Authenticator, AuthFailure, build_authenticator
from orchd.auth.jwks import JwksRegistry
from orchd.auth.keys import hash_key, new_key
from orchd.errors import ProblemError
from orchd.model import ApiKeySettings, AuthSettings
from orchd.store.consumers import ConsumerRecord, KeyRecord
from orchd.store.file import FileStore


def test_new_keys_are_random_and_hashed():
    a, b = new_key(), new_key()
    assert a.key != b.key and a.key.startswith("ok_") and len(a.key) == 46
    assert a.prefix == a.key[:11] and hash_key(a.key) == a.hash and len(a.hash) == 64
    assert hash_key("not a key") is None


async def test_file_store_keeps_consumers_across_a_restart(tmp_path):
    store = FileStore(tmp_path)
    await store.load()
    await store.add_consumer(ConsumerRecord("shop", 1.0))
    made = new_key()
    await store.add_key("shop", KeyRecord(made.key_id, made.prefix, made.hash, 2.0))
    with pytest.raises(ProblemError) as info:
        await store.add_consumer(ConsumerRecord("shop", 3.0))
    assert info.value.status == 409
    assert store.consumers.lookup(made.key) == "shop"
    text = (tmp_path / "consumers.json").read_text()
    assert made.key not in text and made.hash in text
    await store.close()

    again = FileStore(tmp_path)  # a restart
    await again.load()
    assert again.consumers.lookup(made.key) == "shop"
    assert [k.key_id for k in again.consumers.keys_of("shop")] == [made.key_id]
    await again.remove_key("shop", made.key_id)
    assert again.consumers.lookup(made.key) is None
    with pytest.raises(ProblemError):
        await again.remove_key("shop", made.key_id)
    await again.remove_consumer("shop")
    assert json.loads((tmp_path / "consumers.json").read_text())["consumers"] == {}
    await again.close()


async def test_authenticator_with_keys_and_anonymous(tmp_path):
    store = FileStore(tmp_path)
    await store.load()
    await store.add_consumer(ConsumerRecord("shop", 1.0))
    made = new_key()
    await store.add_key("shop", KeyRecord(made.key_id, made.prefix, made.hash, 2.0))
    settings = AuthSettings(api_key=ApiKeySettings(query="api_key"), hide_credentials=True)
    auth = build_authenticator(settings, JwksRegistry(None), store.consumers)  # type: ignore[arg-type]
    who = await auth.authenticate(CIMultiDict({"x-api-key": made.key}))
    assert who.consumer == "shop"
    fwd = auth.forwarding(who)
    assert fwd.add == {"X-Consumer-Name": "shop"} and "x-api-key" in fwd.drop
    assert "x-consumer-name" in fwd.drop and fwd.drop_query == "api_key"
    assert (await auth.authenticate(CIMultiDict(), {"api_key": made.key})).consumer == "shop"
    for headers in (CIMultiDict(), CIMultiDict({"X-API-Key": "ok_" + "x" * 43})):
        with pytest.raises(AuthFailure) as info:
            await auth.authenticate(headers)
        assert info.value.status == 401 and info.value.challenges == ('ApiKey realm="orchd"',)
        assert made.key not in info.value.problem().detail
    anon = Authenticator(AuthSettings(api_key=ApiKeySettings(), anonymous=True), None,
                         store.consumers)
    assert (await anon.authenticate(CIMultiDict())).consumer == "anonymous"
    with pytest.raises(AuthFailure):
        await anon.authenticate(CIMultiDict({"X-API-Key": "wrong"}))
    await store.close()


async def test_known_credentials_answer_as_authenticate_does(tmp_path):
    """``known`` is a shortcut for credentials already accepted: for each of them it
    answers what ``authenticate`` + ``forwarding`` answer, and None for everything that
    ``authenticate`` has to decide (a token not verified yet or expired, an unknown key,
    no credential)."""
    from orchd.auth.jwt import JwtValidator
    from orchd.model import JwtSettings

    store = FileStore(tmp_path)
    await store.load()
    await store.add_consumer(ConsumerRecord("shop", 1.0))
    made = new_key()
    await store.add_key("shop", KeyRecord(made.key_id, made.prefix, made.hash, 2.0))
    now = [float(int(time.time()))]
    secret = "s" * 64
    jwt_settings = JwtSettings(issuer="https://id.test/", secret=secret, algorithms=("HS256",),
                               claims_to_headers=(("sub", "X-User"),))
    validator = JwtValidator(jwt_settings, None, clock=lambda: now[0])
    auth = Authenticator(AuthSettings(jwt=jwt_settings, api_key=ApiKeySettings(),
                                      hide_credentials=True), validator, store.consumers)
    token = pyjwt.encode({"iss": "https://id.test/", "sub": "u1", "exp": now[0] + 60}, secret,
                         algorithm="HS256")
    bearer = CIMultiDict({"Authorization": f"Bearer {token}"})
    assert auth.known(bearer) is None  # not verified yet: authenticate decides
    who = await auth.authenticate(bearer)
    known = auth.known(bearer)
    assert known is not None
    assert known[0] == who and known[1] == auth.forwarding(who)
    assert known[1].add == {"X-User": "u1"} and "authorization" in known[1].drop
    assert auth.known(bearer)[1] is known[1]  # kept, not rebuilt
    # A cached token decides before an API key, as in authenticate.
    both = CIMultiDict({"Authorization": f"Bearer {token}", "X-API-Key": made.key})
    assert auth.known(both) == known and (await auth.authenticate(both)).method == "jwt"
    now[0] += 60  # expired (on the validator's clock): authenticate decides again
    assert auth.known(bearer) is None and len(validator) == 0
    key = CIMultiDict({"X-API-Key": made.key})
    who = await auth.authenticate(key)
    known = auth.known(key)
    assert known is not None and known == (who, auth.forwarding(who))
    assert known[1].add == {"X-Consumer-Name": "shop"} and "x-api-key" in known[1].drop
    for other in (CIMultiDict(), CIMultiDict({"X-API-Key": "ok_" + "x" * 43})):
        assert auth.known(other) is None
    await store.remove_consumer("shop")
    assert auth.known(key) is None
    await store.close()


def test_forwarding_joins_drop_sets_once():
    from orchd.auth.gateway import Forwarding

    fwd = Forwarding(frozenset({"x-consumer-name"}), {})
    base = frozenset({"host", "via"})
    joined = fwd.dropping(base)
    assert joined == {"host", "via", "x-consumer-name"} and fwd.dropping(base) is joined
