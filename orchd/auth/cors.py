"""CORS at the gateway: the answer to a preflight, and the header fields of an ordinary
answer to a page from an allowed origin. Pure functions of the settings and the request's
header values.

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is
answered here, never forwarded: 204 with the allow fields, or 403 for an origin not
allowed. Both carry ``Vary: Origin``. ``["*"]`` answers ``*`` (the schema refuses it with
``allow_credentials``: a browser would refuse the answer, and it would let every site use
the visitor's cookies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from yarl import URL

from orchd.model import CorsSettings

__all__ = ("CorsAnswer", "answer_headers", "is_preflight", "origin_allowed", "preflight")

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class CorsAnswer:
    status: int  # 204 or 403
    headers: dict[str, str]


def is_preflight(method: str, origin: str | None, request_method: str | None) -> bool:
    return method == "OPTIONS" and bool(origin) and bool(request_method)


def _normal(origin: str) -> str:
    """``HTTPS://App.Example.com:443`` -> ``https://app.example.com``."""
    try:
        url = URL(origin.strip())
        port = url.explicit_port
    except ValueError:
        return origin.strip().lower()
    if not url.scheme or not url.host:
        return origin.strip().lower()
    scheme, host = url.scheme.lower(), url.host.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and _DEFAULT_PORTS.get(scheme) != port:
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


def origin_allowed(settings: CorsSettings, origin: str | None) -> bool:
    if not origin:
        return False
    if "*" in settings.allow_origins:
        return True
    wanted = _normal(origin)
    return any(_normal(o) == wanted for o in settings.allow_origins)


def _allow_origin(settings: CorsSettings, origin: str) -> dict[str, str]:
    wildcard = "*" in settings.allow_origins and not settings.allow_credentials
    out = {"Access-Control-Allow-Origin": "*" if wildcard else origin, "Vary": "Origin"}
    if settings.allow_credentials:
        out["Access-Control-Allow-Credentials"] = "true"
    return out


def preflight(settings: CorsSettings, endpoint_methods: Sequence[str], origin: str,
              request_method: str) -> CorsAnswer:
    """The gateway's answer to a preflight. A method or header the page asks for and the
    settings do not allow is left out of the allow lists: the browser then refuses the
    call itself, as the CORS protocol intends."""
    vary = {"Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}
    if not origin_allowed(settings, origin):
        return CorsAnswer(403, vary)
    methods = settings.allow_methods if settings.allow_methods is not None else endpoint_methods
    headers = {**_allow_origin(settings, origin), **vary,
               "Access-Control-Allow-Methods": ", ".join(methods),
               "Access-Control-Max-Age": str(settings.max_age)}
    if settings.allow_headers:
        headers["Access-Control-Allow-Headers"] = ", ".join(settings.allow_headers)
    return CorsAnswer(204, headers)


def answer_headers(settings: CorsSettings, origin: str | None) -> dict[str, str]:
    """Fields to add to an ordinary answer (``Vary: Origin`` whenever the answer depends on
    the origin: always, unless the origins are ``*``)."""
    if origin is None or not origin_allowed(settings, origin):
        return {} if "*" in settings.allow_origins else {"Vary": "Origin"}
    out = _allow_origin(settings, origin)
    if settings.expose_headers:
        out["Access-Control-Expose-Headers"] = ", ".join(settings.expose_headers)
    return out
