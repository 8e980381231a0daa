"""``/config/*`` (reload, status, validate) and ``/router/*`` (the routing table)."""

from __future__ import annotations

from aiohttp import web

from orchd.api.common import get_state, json_answer, read_body, stamped, submit
from orchd.changes import Reload
from orchd.errors import ConfigError, ProblemError
from orchd.loader import parse_config
from orchd.router import PREFIX, PathError, map_path

__all__ = ("routes",)

routes = web.RouteTableDef()

MAX_CONFIG_BODY = 4 * 1024 * 1024


@routes.post("/config/reload")
async def reload(request: web.Request) -> web.Response:
    result = await submit(request, Reload("api"))
    if not result["ok"]:
        raise ProblemError(422, "Reload failed", result["error"],
                           extra={"errors": result["errors"], "ok": False})
    return stamped(result)


@routes.get("/config/status")
async def status(request: web.Request) -> web.Response:
    state = get_state(request)
    return stamped({
        "loaded": True,
        "config_path": state.config_path,
        "endpoints_count": len(state.registry.names("config")),
        "api_endpoints_count": len(state.registry.names("api")),
        "last_reload_error": state.last_reload.error,
        "last_reload": state.last_reload.as_dict(),
        "watching": state.watching,
        "revision": state.registry.revision,
    })


@routes.post("/config/validate")
async def validate(request: web.Request) -> web.Response:
    raw = await read_body(request, MAX_CONFIG_BODY)
    if len(raw) > MAX_CONFIG_BODY:
        raise ProblemError(413, "Request body too large",
                           f"a configuration document is limited to {MAX_CONFIG_BODY} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProblemError(400, "Not UTF-8", "the body must be a UTF-8 YAML document") from None
    try:
        # ${VAR} is expanded only in the file orchd loads: never from a request.
        config = parse_config(text, "request body", expand_env=False)
    except ConfigError as exc:
        raise ProblemError(422, "Invalid configuration", exc.summary(), errors=exc.errors,
                           extra={"valid": False}) from None
    return json_answer({"valid": True, "endpoints_count": len(config.endpoints),
                        "endpoints": [e.name for e in config.endpoints],
                        "warnings": list(config.warnings)})


@routes.get("/router/routes")
async def table(request: web.Request) -> web.Response:
    state = get_state(request)
    snap = state.registry.snapshot
    rows = []
    for route in snap.routes.values():
        paths = [f"{PREFIX}{route.name}/{{path}}"]
        if route.spec.version:
            paths.append(f"{PREFIX}{route.spec.version}/{route.name}/{{path}}")
        rows.append({"endpoint_id": route.name, "paths": paths, "methods": list(route.spec.methods),
                     "upstreams": list(route.spec.urls), "source": route.source,
                     "status": route.status()})
    return stamped({"routes": rows, "count": len(rows), "revision": snap.revision})


@routes.get("/router/debug/{path:.*}")
async def debug(request: web.Request) -> web.Response:
    state = get_state(request)
    raw = request.raw_path
    rest = raw.split("/router/debug/", 1)[1] if "/router/debug/" in raw else ""
    path, _, _query = rest.partition("?")
    if path.startswith("orchestrator/"):
        path = path[len("orchestrator/"):]
    resolved = state.registry.snapshot.resolve(path)
    if resolved is None:
        raise ProblemError(404, "No route", f"no endpoint matches {PREFIX}{path}")
    route, segments = resolved
    try:
        upstreams = [f"{t.origin}{map_path(t.base_path, segments)}" for t in route.targets]
    except PathError as exc:
        raise ProblemError(400, "Invalid path", str(exc)) from None
    return stamped({"path": f"{PREFIX}{path}", "endpoint_id": route.name,
                    "upstream_url": upstreams[0], "upstream_urls": upstreams,
                    "methods": list(route.spec.methods), "status": route.status(),
                    "query_forwarded": request.query_string or None})
