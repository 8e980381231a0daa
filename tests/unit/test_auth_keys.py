"""Consumers and API keys: generation, the directory, the file store across a restart, and
the authenticator that uses them."""

from __future__ import annotations

import json

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
