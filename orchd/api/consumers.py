"""``/consumers``: API consumers and their keys, kept in the registry store.

Every route here is an admin route, ``GET`` included: consumer names are not public
(design section 12). The public app's ``admin_auth_middleware`` lets ``GET`` through, so
each handler first applies that middleware's own rule to the request as if its method were
``POST`` (``_admin_only``): the admin token when one is set, else a loopback client not
driven by a web page. The control socket's app has no such middleware: whoever can open
the socket is an administrator.

A key is shown once, in the 201 that creates it (with ``Cache-Control: no-store``); no
other answer, log line or event carries it or its hash. Log lines name the consumer and
the key's id only.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from orchd.api.common import get_state, json_answer, read_json, stamped
from orchd.api.middleware import admin_auth_middleware
from orchd.auth.gateway import ANONYMOUS
from orchd.auth.keys import NAME_RE, new_key
from orchd.errors import ConfigError, FieldError
from orchd.log import registry_logger as logger
from orchd.state import sync_workers
from orchd.store import Store
from orchd.store.consumers import ConsumerRecord, KeyRecord, consumer_not_found, key_not_found

__all__ = ("routes",)

routes = web.RouteTableDef()

_NO_STORE = {"Cache-Control": "no-store"}


async def _allowed(request: web.Request) -> web.StreamResponse:
    return web.Response()


async def _admin_only(request: web.Request) -> Store:
    """Refuse a caller the public app would refuse an admin call to (see the module); the
    store otherwise."""
    if admin_auth_middleware in request.app.middlewares:
        await admin_auth_middleware(request.clone(method="POST"), _allowed)
    return get_state(request).store


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if NAME_RE.match(name) is None:
        raise consumer_not_found(name[:64])
    return name


def _consumer(store: Store, name: str) -> ConsumerRecord:
    record = store.consumers.get(name)
    if record is None:
        raise consumer_not_found(name)
    return record


def _summary(store: Store, record: ConsumerRecord) -> dict[str, Any]:
    return {"name": record.name, "created": record.created,
            "keys": len(store.consumers.keys_of(record.name))}


@routes.post("/consumers")
async def add_consumer(request: web.Request) -> web.Response:
    store = await _admin_only(request)
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise ConfigError([FieldError("name", 'the body must be {"name": "<consumer name>"}')])
    extra = sorted(set(body) - {"name"})
    if extra:
        raise ConfigError([FieldError(str(k), f"unknown key {k!r} (known keys: name)")
                           for k in extra])
    name = body["name"]
    if NAME_RE.match(name) is None:
        raise ConfigError([FieldError("name", "is not a valid name (1-64 of A-Z a-z 0-9 _ -)")])
    if name == ANONYMOUS:
        raise ConfigError([FieldError("name", f"{ANONYMOUS!r} is reserved (auth.anonymous "
                                              "lets requests without a credential pass as it)")])
    record = ConsumerRecord(name, time.time())
    await store.add_consumer(record)
    await sync_workers(get_state(request))
    logger.info("consumer %s added", name)
    return stamped({"success": True, "message": f"consumer {name!r} added",
                    **_summary(store, record)}, status=201)


@routes.get("/consumers")
async def list_consumers(request: web.Request) -> web.Response:
    store = await _admin_only(request)
    rows = [_summary(store, rec) for n in store.consumers.names()
            if (rec := store.consumers.get(n)) is not None]
    return stamped({"consumers": rows, "count": len(rows)})


@routes.get("/consumers/{name}")
async def show_consumer(request: web.Request) -> web.Response:
    store = await _admin_only(request)
    record = _consumer(store, _name(request))
    keys = [k.public() for k in store.consumers.keys_of(record.name)]
    return stamped({"name": record.name, "created": record.created, "keys": keys})


@routes.delete("/consumers/{name}")
async def remove_consumer(request: web.Request) -> web.Response:
    store = await _admin_only(request)
    name = _name(request)
    await store.remove_consumer(name)
    await sync_workers(get_state(request))
    logger.info("consumer %s removed, with its keys", name)
    return stamped({"success": True, "message": f"consumer {name!r} removed", "name": name})


@routes.post("/consumers/{name}/keys")
async def create_key(request: web.Request) -> web.Response:
    store = await _admin_only(request)
    name = _consumer(store, _name(request)).name
    made = new_key()
    record = KeyRecord(made.key_id, made.prefix, made.hash, time.time())
    await store.add_key(name, record)
    await sync_workers(get_state(request))
    logger.info("key %s of consumer %s created", made.key_id, name)
    return json_answer({"key_id": made.key_id, "key": made.key, "prefix": made.prefix,
                        "created": record.created, "consumer": name,
                        "message": "the key is shown this once: keep it now"},
                       status=201, headers=_NO_STORE)


@routes.get("/consumers/{name}/keys")
async def list_keys(request: web.Request) -> web.Response:
    store = await _admin_only(request)
    name = _consumer(store, _name(request)).name
    keys = [k.public() for k in store.consumers.keys_of(name)]
    return stamped({"consumer": name, "keys": keys, "count": len(keys)})


@routes.delete("/consumers/{name}/keys/{key_id}")
async def revoke_key(request: web.Request) -> web.Response:
    store = await _admin_only(request)
    name = _consumer(store, _name(request)).name
    key_id = request.match_info["key_id"]
    if not key_id.isalnum() or len(key_id) > 64:
        raise key_not_found(name, key_id[:64])
    await store.remove_key(name, key_id)
    await sync_workers(get_state(request))
    logger.info("key %s of consumer %s revoked", key_id, name)
    return stamped({"success": True, "message": f"key {key_id!r} of consumer {name!r} revoked",
                    "consumer": name, "key_id": key_id})
