"""``GET /openapi.json`` and ``GET /docs``.

The OpenAPI 3.1 document is built once from the JSON Schemas shipped in ``orchd.schema`` (the
one source of truth for the config file and the registration body) plus the answer shapes
below. ``/docs`` is Swagger UI served from the files of the ``swagger-ui-py`` package, so it
works with no internet access.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import Any

from aiohttp import web

from orchd import SERVICE_NAME, __version__
from orchd.errors import ProblemError
from orchd.schema import load_schema

__all__ = ("openapi_document", "routes")

routes = web.RouteTableDef()

_SCHEMA_NAMES = {"config": "Config", "endpoint": "Endpoint",
                 "circuit-breaker": "CircuitBreaker", "registration": "Registration"}
_URN = "urn:orchestrator:schema:"

# -- answer shapes (what the handlers in orchd.api answer; extra keys are allowed)

_NUM_OR_NULL = {"type": ["number", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}
_STAMPED = {"timestamp": {"type": "number"}, "timestamp_iso": {"type": "string"}}
_STAMP_REQ = ["timestamp", "timestamp_iso"]


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _stamped(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return _obj({**props, **_STAMPED}, [*required, *_STAMP_REQ])


_BREAKER_STATE = {"enum": ["closed", "open", "half_open", "forced_open", "partially_open"]}

_SHAPES: dict[str, Any] = {
    "Problem": _obj({
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "instance": {"type": "string"},
        "errors": {"type": "array", "items": _obj(
            {"path": {"type": "string"}, "message": {"type": "string"},
             "line": {"type": "integer"}}, ["path", "message"])},
    }, ["type", "title", "status", "detail"]),
    "BreakerInfo": _obj({
        "state": _BREAKER_STATE, "failure_count": {"type": "integer"},
        "last_failure_time": _NUM_OR_NULL, "last_success_time": _NUM_OR_NULL,
        "state_changed_time": _NUM_OR_NULL, "half_open_calls": {"type": "integer"},
        "last_failure": _STR_OR_NULL, "retry_at": _NUM_OR_NULL,
    }, ["state", "failure_count"]),
    "Target": _obj({
        "url": {"type": "string"},
        "health": {"enum": ["healthy", "unhealthy", "unknown"]},
        "admin_state": {"enum": ["active", "draining", "disabled"]},
        "circuit_breaker": _ref("BreakerInfo"), "in_flight": {"type": "integer"},
        "last_check_time": _NUM_OR_NULL, "response_time": _NUM_OR_NULL,
        "consecutive_failures": {"type": "integer"},
    }, ["url", "health", "admin_state", "circuit_breaker", "in_flight"]),
    "EndpointHealth": _obj({
        "endpoint_id": {"type": "string"},
        "status": {"enum": ["healthy", "unhealthy", "unknown"]},
        "last_check_time": _NUM_OR_NULL, "response_time": _NUM_OR_NULL,
        "error_message": _STR_OR_NULL, "consecutive_failures": {"type": "integer"},
        "consecutive_successes": {"type": "integer"}, "circuit_breaker": _BREAKER_STATE,
        "targets": {"type": "array", "items": _ref("Target")},
    }, ["endpoint_id", "status", "circuit_breaker", "targets"]),
    "HealthSummary": _obj({
        "total_endpoints": {"type": "integer"}, "healthy_endpoints": {"type": "integer"},
        "unhealthy_endpoints": {"type": "integer"}, "health_percentage": {"type": "number"},
        "average_response_time": _NUM_OR_NULL, "last_check_time": _NUM_OR_NULL,
        "config": {"type": "object"},
    }, ["total_endpoints", "healthy_endpoints", "unhealthy_endpoints", "health_percentage"]),
    "BreakerRow": _obj({
        "endpoint_id": {"type": "string"}, "state": _BREAKER_STATE,
        "failure_count": {"type": "integer"}, "last_failure_time": _NUM_OR_NULL,
        "last_success_time": _NUM_OR_NULL, "state_changed_time": _NUM_OR_NULL,
        "half_open_calls": {"type": "integer"}, "last_failure": _STR_OR_NULL,
        "retry_at": _NUM_OR_NULL, "config": {"type": "object"},
        "targets": {"type": "array", "items": _obj({"url": {"type": "string"},
                                                    "state": _BREAKER_STATE}, ["url", "state"])},
    }, ["endpoint_id", "state", "failure_count", "config", "targets"]),
    "BreakerList": _stamped({
        "summary": _obj({
            "total_circuit_breakers": {"type": "integer"}, "open_breakers": {"type": "integer"},
            "half_open_breakers": {"type": "integer"}, "closed_breakers": {"type": "integer"},
            "health_percentage": {"type": "number"},
        }, ["total_circuit_breakers", "open_breakers", "half_open_breakers",
            "closed_breakers", "health_percentage"]),
        "circuit_breakers": {"type": "array", "items": _ref("BreakerRow")},
    }, ["summary", "circuit_breakers"]),
    "ReloadStatus": _obj({
        "ok": {"type": "boolean"}, "at": _NUM_OR_NULL, "error": _STR_OR_NULL,
    }, ["ok", "at", "error"]),
    "RegistryEndpoint": _obj({
        "endpoint_id": {"type": "string"}, "url": {"type": "string"},
        "name": {"type": "string"}, "version": _STR_OR_NULL,
        "methods": {"type": "array", "items": {"type": "string"}},
        "auth_type": {"type": "string"}, "disabled": {"type": "boolean"},
        "status": {"enum": ["active", "draining", "disabled", "unhealthy"]},
        "circuit_breaker_state": _BREAKER_STATE, "registration_time": {"type": "number"},
        "source": {"enum": ["config", "api"]},
    }, ["endpoint_id", "url", "name", "methods", "status", "circuit_breaker_state",
        "source"]),
    "ChangeResult": _stamped({"success": {"type": "boolean"}, "message": {"type": "string"}},
                             ["success", "message"]),
}

_OK = "Success"


def _json(schema: dict[str, Any], description: str = _OK,
          media: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return _json(_ref("Problem"), description, "application/problem+json")


_ID = {"name": "id", "in": "path", "required": True, "description": "The endpoint's name.",
       "schema": {"type": "string"}, "example": "user_service"}


def _op(summary: str, tag: str, responses: dict[str, Any], *, admin: bool = False,
        params: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None,
        description: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {
        **responses, "default": _problem("An error, as an RFC 9457 problem document")}}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    if admin:
        op["security"] = [{"adminToken": []}]
        op["responses"]["401"] = _problem("Admin token missing (when server.admin_token is set)")
        op["responses"]["403"] = _problem("Admin token wrong, or not a loopback client")
    return op


def _consumer_paths() -> dict[str, Any]:
    """``/consumers``: admin routes, GET included (consumer names are not public)."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "The consumer's name.", "example": "billing-team"}
    key_id = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
    consumer = _obj({"name": {"type": "string"}, "created": {"type": "number"},
                     "keys": {"type": "integer"}}, ["name", "created"])
    key_row = _obj({"key_id": {"type": "string"}, "prefix": {"type": "string"},
                    "created": {"type": "number"}}, ["key_id", "prefix", "created"])
    done = _json(_stamped({"success": {"type": "boolean"}, "message": {"type": "string"}},
                          ["success", "message"]))
    missing = {"404": _problem("No consumer (or key) of that name")}
    return {
        "/consumers": {
            "get": _op("Every consumer", "consumers", {"200": _json(_stamped({
                "consumers": {"type": "array", "items": consumer},
                "count": {"type": "integer"}}, ["consumers", "count"]))}, admin=True),
            "post": _op("Add a consumer", "consumers", {
                "201": _json(_stamped({"success": {"type": "boolean"},
                                       "message": {"type": "string"},
                                       "name": {"type": "string"}}, ["success", "name"])),
                "409": _problem("A consumer of that name exists"),
                "422": _problem("Invalid name")}, admin=True,
                body={"required": True, "content": {"application/json": {"schema": _obj(
                    {"name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}},
                    ["name"])}}})},
        "/consumers/{name}": {
            "get": _op("One consumer and its keys (ids and prefixes, never the keys)",
                       "consumers", {"200": _json(_stamped({
                           "name": {"type": "string"}, "created": {"type": "number"},
                           "keys": {"type": "array", "items": key_row}}, ["name", "keys"])),
                           **missing}, admin=True, params=[name]),
            "delete": _op("Remove a consumer and its keys, on every instance", "consumers",
                          {"200": done, **missing}, admin=True, params=[name])},
        "/consumers/{name}/keys": {
            "get": _op("A consumer's keys (ids and prefixes, never the keys)", "consumers",
                       {"200": _json(_stamped({"consumer": {"type": "string"},
                                               "keys": {"type": "array", "items": key_row},
                                               "count": {"type": "integer"}},
                                              ["consumer", "keys"])), **missing},
                       admin=True, params=[name]),
            "post": _op("Create a key: the answer shows it this once", "consumers", {
                "201": _json(_obj({"key_id": {"type": "string"}, "key": {"type": "string"},
                                   "prefix": {"type": "string"}}, ["key_id", "key"])),
                **missing}, admin=True, params=[name])},
        "/consumers/{name}/keys/{key_id}": {
            "delete": _op("Revoke a key, on every instance at once", "consumers",
                          {"200": done, **missing}, admin=True, params=[name, key_id])},
    }


def _paths() -> dict[str, Any]:
    not_found = {"404": _problem("No endpoint of that name")}
    endpoint_health = _json(_stamped({**_SHAPES["EndpointHealth"]["properties"]},
                                     ["endpoint_id", "status", "targets"]))
    registration = {"required": True, "content": {"application/json": {
        "schema": _ref("Registration"),
        "example": {"config": {"name": "user_service", "url": "http://127.0.0.1:9001/api",
                               "methods": ["GET", "POST"]}}}}}
    target_body = {"required": False, "content": {"application/json": {"schema": {
        **_obj({"url": {"type": "string", "description": "Limit the change to this target."}}),
        "additionalProperties": False}}}}
    change = _json(_ref("ChangeResult"))
    query = [
        {"name": "status", "in": "query", "schema": {
            "enum": ["active", "disabled", "unhealthy", "draining", "inactive"]}},
        {"name": "include_disabled", "in": "query", "schema": {"type": "boolean",
                                                               "default": True}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                    "maximum": 10000, "default": 100}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                     "maximum": 1000000000, "default": 0}},
    ]
    text = {"text/plain": {"schema": {"type": "string"}}}

    def breaker_op(summary: str) -> dict[str, Any]:
        return _op(summary, "circuit breakers", {
            "200": _json(_stamped({"success": {"type": "boolean"},
                                   "circuit_breaker": _ref("BreakerRow")},
                                  ["success", "circuit_breaker"])), **not_found},
            admin=True, params=[_ID, {"name": "url", "in": "query", "schema": {
                "type": "string"}, "description": "Only this target."}])

    html = {"text/html": {"schema": {"type": "string"}}}
    return {
        "/": {"get": _op("Service name, version and route families", "meta", {
            "200": _json(_obj({"service": {"type": "string"}, "version": {"type": "string"},
                               "routes": {"type": "object"}},
                              ["service", "version", "routes"]))})},
        "/health": {"get": _op("Liveness probe", "health", {
            "200": _json(_stamped({"status": {"type": "string"},
                                   "configuration": {"type": "object"},
                                   "registry": {"type": "object"},
                                   "health_monitoring": {"type": "object"}},
                                  ["status", "configuration", "registry",
                                   "health_monitoring"])),
            "503": _json(_stamped({"status": {"type": "string"}}, ["status"]),
                         "Starting or stopping")})},
        "/health/ready": {"get": _op("Readiness probe", "health", {
            "200": _json(_stamped({"ready": {"const": True}}, ["ready"])),
            "503": _json(_stamped({"ready": {"const": False}}, ["ready"]), "Not ready")})},
        "/health/status": {"get": _op("System status: health, breakers, last reload", "health", {
            "200": _json(_stamped({
                "system_status": {"enum": ["healthy", "degraded", "unhealthy"]},
                "summary": _ref("HealthSummary"),
                "circuit_breaker_summary": {"type": "object"},
                "last_reload": _ref("ReloadStatus"),
                "tls": {"oneOf": [{"type": "null"}, _obj({
                    "certificates": {"type": "array", "items": _obj({
                        "file": {"type": "string"},
                        "subjects": {"type": "array", "items": {"type": "string"}},
                        "not_after": {"type": "number"},
                        "not_after_iso": {"type": "string"},
                        "days_left": {"type": "integer"},
                        "serial": {"type": "string"},
                    }, ["file", "subjects", "not_after", "days_left"])},
                    "min_version": {"enum": ["1.2", "1.3"]},
                    "client_auth": {"enum": ["none", "optional", "required"]},
                }, ["certificates"])],
                    "description": "The public port's certificates (null: plain HTTP)."},
            }, ["system_status", "summary", "circuit_breaker_summary", "last_reload"]))})},
        "/health/summary": {"get": _op("Health summary", "health", {
            "200": _json(_ref("HealthSummary"))})},
        "/health/unhealthy": {"get": _op("Unhealthy endpoints", "health", {
            "200": _json(_stamped({"unhealthy_endpoints": {
                "type": "array", "items": _ref("EndpointHealth")},
                "count": {"type": "integer"}}, ["unhealthy_endpoints", "count"]))})},
        "/health/endpoints": {"get": _op("Health of every endpoint and its targets", "health", {
            "200": _json(_stamped({"endpoints": {"type": "array",
                                                 "items": _ref("EndpointHealth")},
                                   "count": {"type": "integer"}}, ["endpoints"]))})},
        "/health/endpoints/{id}": {"get": _op("Health of one endpoint", "health", {
            "200": endpoint_health, **not_found}, params=[_ID])},
        "/health/check/{id}": {"post": _op("Probe an endpoint's targets now", "health", {
            "200": endpoint_health, **not_found}, admin=True, params=[_ID])},
        "/health/circuit-breakers": {"get": _op("Every circuit breaker", "circuit breakers", {
            "200": _json(_ref("BreakerList"))})},
        "/health/circuit-breakers/open": {"get": _op(
            "Breakers that are not closed", "circuit breakers",
            {"200": _json(_ref("BreakerList"))})},
        "/health/circuit-breakers/{id}": {"get": _op(
            "One endpoint's circuit breaker", "circuit breakers",
            {"200": _json(_ref("BreakerRow")), **not_found}, params=[_ID])},
        "/health/circuit-breakers/{id}/trip": {"post": breaker_op(
            "Force the breaker open (forced_open) until reset")},
        "/health/circuit-breakers/{id}/reset": {"post": breaker_op(
            "Close the breaker and clear its counts")},
        "/registry/endpoints": {
            "get": _op("List endpoints", "registry", {
                "200": _json(_stamped({
                    "endpoints": {"type": "array", "items": _ref("RegistryEndpoint")},
                    "total_count": {"type": "integer"}, "active_count": {"type": "integer"},
                    "unhealthy_count": {"type": "integer"},
                    "disabled_count": {"type": "integer"},
                }, ["endpoints", "total_count", "active_count", "unhealthy_count",
                    "disabled_count"])),
                "400": _problem("Invalid query parameter")}, params=query),
            "post": _op("Register an endpoint (durable, routable at once)", "registry", {
                "201": _json(_stamped({"success": {"const": True},
                                       "message": {"type": "string"},
                                       "endpoint_id": {"type": "string"},
                                       "endpoint_url": {"type": "string"}},
                                      ["success", "message", "endpoint_id", "endpoint_url"]),
                             "Registered"),
                "409": _problem("Name taken"), "422": _problem("Invalid endpoint")},
                admin=True, body=registration),
        },
        "/registry/endpoints/{id}": {
            "get": _op("One endpoint", "registry", {
                "200": _json(_stamped({**_SHAPES["RegistryEndpoint"]["properties"],
                                       "config": _ref("Endpoint")},
                                      ["endpoint_id", "config"])), **not_found},
                params=[_ID]),
            "put": _op("Replace an API-registered endpoint", "registry", {
                "200": change, **not_found,
                "409": _problem("The endpoint comes from the configuration file"),
                "422": _problem("Invalid endpoint")}, admin=True, params=[_ID],
                body=registration),
            "delete": _op("Remove an API-registered endpoint; requests in flight finish",
                          "registry", {"200": change, **not_found,
                                       "409": _problem("The endpoint comes from the "
                                                       "configuration file")},
                          admin=True, params=[_ID]),
        },
        "/registry/endpoints/{id}/status": {"put": _op(
            "Set the administrative status (sticks until changed)", "registry", {
                "200": change, **not_found, "422": _problem("Invalid status")},
            admin=True, params=[_ID, {"name": "status", "in": "query", "schema": {
                "enum": ["active", "disabled"]}, "description": "Instead of the body."}],
            body={"required": False, "content": {"application/json": {"schema": _obj(
                {"status": {"enum": ["active", "disabled"]}}, ["status"])}}})},
        "/registry/endpoints/{id}/drain": {"post": _op(
            "Stop sending new requests to the endpoint (or one target)", "registry",
            {"200": change, **not_found}, admin=True, params=[_ID], body=target_body)},
        "/registry/endpoints/{id}/enable": {"post": _op(
            "Resume sending requests", "registry",
            {"200": change, **not_found}, admin=True, params=[_ID], body=target_body)},
        "/registry/stats": {"get": _op("Registry counts", "registry", {
            "200": _json(_stamped({"registry_stats": _obj({
                "total": {"type": "integer"}, "active": {"type": "integer"},
                "inactive": {"type": "integer"}, "disabled": {"type": "integer"},
                "unhealthy": {"type": "integer"}, "draining": {"type": "integer"},
                "by_source": {"type": "object"}},
                ["total", "active", "inactive", "disabled", "unhealthy", "draining",
                 "by_source"]), "revision": {"type": "integer"}},
                ["registry_stats", "revision"]))})},
        "/config/reload": {"post": _op("Reload the configuration file", "config", {
            "200": _json(_stamped({"ok": {"const": True}, "added": {"type": "array"},
                                   "changed": {"type": "array"},
                                   "removed": {"type": "array"}}, ["ok"]), "The diff"),
            "409": _problem("orchd runs without a configuration file"),
            "422": _problem("The file is invalid; the running configuration stays")},
            admin=True)},
        "/config/status": {"get": _op("Configuration status", "config", {
            "200": _json(_stamped({"loaded": {"type": "boolean"},
                                   "config_path": _STR_OR_NULL,
                                   "endpoints_count": {"type": "integer"},
                                   "last_reload_error": _STR_OR_NULL,
                                   "watching": {"type": "boolean"}},
                                  ["loaded", "config_path", "endpoints_count",
                                   "last_reload_error", "watching"]))})},
        "/config/validate": {"post": _op(
            "Validate a configuration document (YAML) without applying it", "config", {
                "200": _json(_obj({"valid": {"const": True},
                                   "endpoints_count": {"type": "integer"}},
                                  ["valid", "endpoints_count"])),
                "400": _problem("Not UTF-8"), "413": _problem("Too large"),
                "422": _problem("Invalid: every error, with its key path and line")},
            admin=True, body={"required": True, "content": {
                "application/yaml": {"schema": {"type": "string"},
                                     "example": "endpoints:\n  - name: a\n"
                                                "    url: http://127.0.0.1:9001\n"}}})},
        "/router/routes": {"get": _op("The routing table", "router", {
            "200": _json(_stamped({"routes": {"type": "array", "items": _obj({
                "endpoint_id": {"type": "string"},
                "paths": {"type": "array", "items": {"type": "string"}},
                "upstreams": {"type": "array", "items": {"type": "string"}}},
                ["endpoint_id", "paths", "upstreams"])}, "count": {"type": "integer"}},
                ["routes", "count"]))})},
        "/router/debug/{path}": {"get": _op(
            "Which endpoint and upstream URL /orchestrator/{path} goes to", "router", {
                "200": _json(_stamped({"endpoint_id": {"type": "string"},
                                       "upstream_url": {"type": "string"}},
                                      ["endpoint_id", "upstream_url"])),
                "400": _problem("The path would climb above the upstream's base path"),
                "404": _problem("No endpoint matches")},
            params=[{"name": "path", "in": "path", "required": True,
                     "schema": {"type": "string"}, "example": "user_service/users/1"}])},
        "/orchestrator/{id}/{path}": {method: _op(
            "The proxy: forwards to the endpoint's upstream", "proxy", {
                "200": {"description": "The upstream's answer, streamed"},
                "404": _problem("Unknown endpoint"), "405": _problem("Method not allowed"),
                "401": _problem("Credential required (require_auth)"),
                "400": _problem("Malformed request (fragment in the target, a path that "
                                "climbs above the base path)"),
                "408": _problem("The request body arrived too slowly (server.body_timeout)"),
                "413": _problem("Body too large"),
                "429": _problem("A WebSocket over server.max_streams or "
                                "server.max_streams_per_client (Retry-After)"),
                "502": _problem("Upstream refused or broke"),
                "503": _problem("Disabled, breaker open or no healthy target "
                                "(with Retry-After)"),
                "504": _problem("Upstream timeout"),
                "508": _problem("Loop: the request already passed through this gateway (Via)")},
            params=[_ID, {"name": "path", "in": "path", "required": True,
                          "schema": {"type": "string"}}],
            description="Admin auth does not apply here: the client's Authorization "
                        "header belongs to the backend and is forwarded as sent.")
            for method in ("get", "post", "put", "patch", "delete", "head", "options")},
        "/openapi.json": {"get": _op("This document", "meta", {
            "200": _json({"type": "object"})})},
        "/docs": {"get": _op("Swagger UI (local files)", "meta", {
            "200": {"description": "HTML", "content": html}})},
        "/metrics": {"get": _op("Prometheus metrics (text format 0.0.4)", "monitoring", {
            "200": {"description": "Metrics", "content": text},
            "404": _problem("Metrics are off (server.metrics: false)")})},
        "/dashboard": {"get": _op("Live health dashboard", "monitoring", {
            "200": {"description": "HTML", "content": html}})},
        "/events": {"get": _op(
            "Server-Sent Events: registry, health, breaker, reload, stats", "monitoring", {
                "200": {"description": "An endless text/event-stream", "content": {
                    "text/event-stream": {"schema": {"type": "string"}}}},
                "429": _problem("Over server.max_streams or server.max_streams_per_client "
                                "(Retry-After)")},
            params=[{"name": "types", "in": "query", "schema": {"type": "string"},
                     "description": "Comma-separated event types to keep"}])},
        **_consumer_paths(),
        "/control/stop": {"post": _op("Graceful stop (control socket only)", "control", {
            "202": _json(_obj({"success": {"type": "boolean"}, "pid": {"type": "integer"}},
                              ["success"]))})},
        "/control/restart": {"post": _op(
            "Restart with no downtime: a new orchd takes over the sockets, this one drains "
            "(control socket only)", "control", {
                "200": _json(_obj({"success": {"type": "boolean"}, "pid": {"type": "integer"},
                                   "old_pid": {"type": "integer"}}, ["success", "pid"])),
                "409": _problem("A restart is under way, orchd is stopping, or it is process 1"),
                "422": _problem("The configuration file does not validate"),
                "500": _problem("The new process did not become ready; this one serves on")})},
        "/control/info": {"get": _op("Daemon info (control socket only)", "control", {
            "200": _json(_obj({"pid": {"type": "integer"}, "version": {"type": "string"}},
                              ["pid", "version"]))})},
    }


def _rewrite_refs(node: Any) -> Any:
    """Shipped schemas refer to each other by URN; point those refs into components."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("$id", "$schema"):
                continue
            if key == "$ref" and isinstance(value, str) and value.startswith(_URN):
                value = f"#/components/schemas/{_SCHEMA_NAMES[value[len(_URN):]]}"
            out[key] = _rewrite_refs(value)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


@cache
def openapi_document() -> dict[str, Any]:
    schemas = {title: _rewrite_refs(copy.deepcopy(load_schema(name)))
               for name, title in _SCHEMA_NAMES.items()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{SERVICE_NAME} (orchd) HTTP API",
            "version": __version__,
            "description": (
                "The admin API of orchd, served on the TCP port and on the control socket. "
                "GET and HEAD are open; every other method outside /orchestrator/ needs "
                "`Authorization: Bearer <admin_token>` when server.admin_token is set, or a "
                "loopback client when it is not. Errors are RFC 9457 problem documents."),
        },
        "paths": _paths(),
        "components": {
            "schemas": {**schemas, **copy.deepcopy(_SHAPES)},
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer",
                                               "description": "server.admin_token"}},
        },
    }


def _swagger_dir() -> Path | None:
    """The static files of the swagger-ui-py package, found without importing it."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "static"
    return path if (path / "swagger-ui-bundle.js").is_file() else None


_DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>orchd API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
<style>body{margin:0;background:#fafafa}</style>
</head><body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/swagger-ui-standalone-preset.js"></script>
<script src="/docs/init.js"></script>
</body></html>
"""

_DOCS_INIT = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "BaseLayout", validatorUrl: null, tryItOutEnabled: false
  });
};
"""

_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png",
                 ".html": "text/html"}


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    body = json.dumps(openapi_document(), indent=1)
    return web.Response(text=body, content_type="application/json")


@routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    if _swagger_dir() is None:
        raise ProblemError(404, "Swagger UI not installed",
                           "install the swagger-ui-py package; /openapi.json works without it")
    return web.Response(text=_DOCS_HTML, content_type="text/html")


@routes.get("/docs/init.js")
async def docs_init(request: web.Request) -> web.Response:
    return web.Response(text=_DOCS_INIT, content_type="text/javascript")


@routes.get("/docs/static/{name}")
async def docs_static(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    base = _swagger_dir()
    suffix = Path(name).suffix
    if base is None or "/" in name or name.startswith(".") or suffix not in _STATIC_TYPES:
        raise ProblemError(404, "Not found", f"no such file {name!r}")
    path = base / name
    if not path.is_file():
        raise ProblemError(404, "Not found", f"no such file {name!r}")
    return web.FileResponse(path, headers={"Content-Type": _STATIC_TYPES[suffix],
                                           "Cache-Control": "public, max-age=86400"})
