"""``/registry/*``: list, register, replace, remove endpoints and set administrative state."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchd.api.common import get_state, read_json, stamped, submit
from orchd.changes import Heartbeat, Register, Remove, Replace, SetStatus, SetTargetState
from orchd.errors import ConfigError, FieldError, ProblemError, endpoint_not_found
from orchd.loader import validate_registration
from orchd.router import Route
from orchd.target import ACTIVE, DRAINING

__all__ = ("routes",)

routes = web.RouteTableDef()

_NO_BODY = object()
_STATUSES = ("active", "disabled", "unhealthy", "draining", "inactive")


def _route(request: web.Request) -> Route:
    name = request.match_info["id"]
    route = get_state(request).registry.snapshot.routes.get(name)
    if route is None:
        raise endpoint_not_found(name)
    return route


def _int_param(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise ProblemError(400, "Invalid query parameter",
                           f"{key} must be a whole number from {lo} to {hi}, not {raw!r}",
                           errors=[FieldError(key, f"must be a whole number from {lo} to {hi}")])
    return value


def _bool_param(request: web.Request, key: str, default: bool) -> bool:
    raw = request.query.get(key)
    if raw is None:
        return default
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ProblemError(400, "Invalid query parameter", f"{key} must be true or false, not {raw!r}",
                       errors=[FieldError(key, "must be true or false")])


@routes.get("/registry/endpoints")
async def list_endpoints(request: web.Request) -> web.Response:
    state = get_state(request)
    status = request.query.get("status")
    if status is not None and status not in _STATUSES:
        raise ProblemError(400, "Invalid query parameter",
                           f"status must be one of {', '.join(_STATUSES)}, not {status!r}",
                           errors=[FieldError("status", "unknown status")])
    include_disabled = _bool_param(request, "include_disabled", True)
    limit = _int_param(request, "limit", 100, 1, 10000)
    offset = _int_param(request, "offset", 0, 0, 10**9)
    routes_ = list(state.registry.snapshot.routes.values())
    rows = [r.as_dict() for r in routes_]
    counts = {
        "total_count": len(rows),
        "active_count": sum(1 for r in rows if r["status"] == "active"),
        "unhealthy_count": sum(1 for r in rows if r["status"] == "unhealthy"),
        "disabled_count": sum(1 for r in rows if r["status"] == "disabled"),
    }
    if not include_disabled:
        rows = [r for r in rows if r["status"] != "disabled"]
    if status == "inactive":
        rows = [r for r in rows if r["status"] != "active"]
    elif status is not None:
        rows = [r for r in rows if r["status"] == status]
    matched = len(rows)
    return stamped({"endpoints": rows[offset:offset + limit], **counts,
                    "matched_count": matched, "limit": limit, "offset": offset,
                    "revision": state.registry.revision})


@routes.post("/registry/endpoints")
async def register(request: web.Request) -> web.Response:
    body = await read_json(request)
    spec = validate_registration(body)
    result = await submit(request, Register(spec))
    return stamped({"success": True,
                    "message": f"endpoint {spec.name!r} registered",
                    **result}, 201)


@routes.get("/registry/endpoints/{id}")
async def get_endpoint(request: web.Request) -> web.Response:
    route = _route(request)
    data = route.as_dict()
    data["config"] = route.spec.public_document()  # an HS secret never leaves
    return stamped(data)


@routes.put("/registry/endpoints/{id}")
async def replace(request: web.Request) -> web.Response:
    name = request.match_info["id"]
    body = await read_json(request)
    spec = validate_registration(body)
    if spec.name != name:
        raise ConfigError([FieldError("config.name",
                                      f"{spec.name!r} does not match the path's {name!r}")])
    result = await submit(request, Replace(spec))
    return stamped({"success": True, "message": f"endpoint {name!r} replaced", **result})


@routes.delete("/registry/endpoints/{id}")
async def remove(request: web.Request) -> web.Response:
    name = request.match_info["id"]
    result = await submit(request, Remove(name))
    return stamped({"success": True, "message": f"endpoint {name!r} removed", **result})


@routes.put("/registry/endpoints/{id}/status")
async def set_status(request: web.Request) -> web.Response:
    name = request.match_info["id"]
    status = request.query.get("status")
    body = await read_json(request, required=status is None, absent=_NO_BODY)
    if body is not _NO_BODY:  # a body is checked even when ?status= is given too
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            message = 'the body must be {"status": "active"} or {"status": "disabled"}'
            raise ConfigError([FieldError("status", message)])
        extra = sorted(set(body) - {"status"})
        if extra:
            raise ConfigError([FieldError(extra[0], f"unknown key {extra[0]!r}")])
        if status is not None and body["status"] != status:
            raise ConfigError([FieldError("status", f"the body says {body['status']!r} and "
                                                    f"the query says {status!r}")])
        status = body["status"]
    assert status is not None
    result = await submit(request, SetStatus(name, status))
    return stamped({"success": True, "message": f"endpoint {name!r} is {status}", **result})


async def _target_body(request: web.Request) -> str | None:
    body = await read_json(request, required=False, absent=_NO_BODY)
    if body is _NO_BODY:
        return None
    if not isinstance(body, dict):
        raise ConfigError([FieldError("", "the body must be an object such as {\"url\": ...}")])
    extra = sorted(set(body) - {"url"})
    if extra:
        raise ConfigError([FieldError(extra[0], f"unknown key {extra[0]!r}")])
    url = body.get("url")
    if url is not None and not isinstance(url, str):
        raise ConfigError([FieldError("url", "must be a string")])
    return url


async def _admin_state(request: web.Request, new: str) -> web.Response:
    name = request.match_info["id"]
    url = await _target_body(request)
    result: dict[str, Any] = await submit(request, SetTargetState(name, url, new))
    what = f"target {url}" if url else "every target"
    verb = "draining" if new == DRAINING else "active"
    return stamped({"success": True, "message": f"{name}: {what} {verb}", **result})


@routes.post("/registry/endpoints/{id}/drain")
async def drain(request: web.Request) -> web.Response:
    return await _admin_state(request, DRAINING)


@routes.post("/registry/endpoints/{id}/enable")
async def enable(request: web.Request) -> web.Response:
    return await _admin_state(request, ACTIVE)


@routes.post("/registry/endpoints/{id}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    """Renew a registration made with a ``ttl``: it lives ``ttl`` seconds from now."""
    name = request.match_info["id"]
    result = await submit(request, Heartbeat(name))
    return stamped({"success": True, "message": f"endpoint {name!r} renewed", **result})


@routes.get("/registry/stats")
async def stats(request: web.Request) -> web.Response:
    state = get_state(request)
    return stamped({
        "registry_stats": state.registry.stats(),
        "revision": state.registry.revision,
        "store": {"type": state.store.name,
                  "status": "degraded" if state.store_degraded else "ok",
                  "error": state.store_degraded},
    })



