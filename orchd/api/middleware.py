"""The one boundary where errors become answers, and the admin trust check on TCP.

``problem_middleware`` decides which problem an exception is (a ``ProblemError`` as it is,
a ``ConfigError`` as 422, aiohttp's own HTTP errors, anything else as 500); the document
itself is built by ``orchd.problems``."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from yarl import URL

from orchd.aiohttp_server import socket_peer
from orchd.errors import ConfigError, ProblemError
from orchd.hops import seen_here
from orchd.log import server_logger
from orchd.problems import problem_response
from orchd.router import PREFIX
from orchd.state import STATE

__all__ = ("admin_auth_middleware", "loop_middleware", "problem_middleware")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SAFE_METHODS = frozenset({"GET", "HEAD"})


def _from_http(exc: web.HTTPException) -> ProblemError:
    headers = {k: v for k, v in exc.headers.items()
               if k.lower() in ("allow", "retry-after", "www-authenticate")}
    detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    if exc.status == 404:
        detail = "no such route"
    elif exc.status == 405:
        detail = f"method not allowed here; allowed: {headers.get('Allow', '')}"
    elif exc.status == 413:
        detail = "request body too large"
    return ProblemError(exc.status, exc.reason, detail, headers=headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProblemError as exc:
        return problem_response(exc, request)
    except ConfigError as exc:
        return problem_response(ProblemError(422, "Validation failed", exc.summary(),
                                             errors=exc.errors), request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(_from_http(exc), request)
    except (ConnectionResetError, TimeoutError) as exc:
        # TimeoutError here is a bug or a client that went away; neither has an answer.
        if isinstance(exc, TimeoutError):
            server_logger.warning("%s %s: timed out", request.method, request.path)
        raise
    except Exception:
        server_logger.exception("%s %s failed", request.method, request.path)
        return problem_response(ProblemError(500, "Internal Server Error",
                                             "the gateway failed to handle this request; "
                                             "see its log"), request)


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The name or address of a ``Host`` value, without its port or brackets."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _loopback_host(host: str) -> bool:
    """A ``Host`` that names this machine's loopback: ``localhost`` (and, RFC 6761, any name
    under it) or a loopback address. Any other name is what DNS rebinding would send."""
    name = _host_name(host).rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost") or _is_loopback(name)


def _cross_site(request: web.Request) -> str | None:
    """Why a call with no admin token looks driven by another site's page, if it does.

    Loopback trust must not extend to a browser on this machine visiting a hostile page:
    it could POST to 127.0.0.1 (a "simple" request needs no preflight), or rebind its own
    name to 127.0.0.1. ``curl`` and scripts send none of these headers and pass."""
    host = request.headers.get(hdrs.HOST)
    if host is not None and not _loopback_host(host):
        return f"the Host header {host[:100]!r} is not a loopback name or address"
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return "the request comes from another site's page (Sec-Fetch-Site: cross-site)"
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None and not _same_origin(origin, request.scheme, host):
        return f"the Origin {origin[:100]!r} is not this gateway's own"
    return None


def _same_origin(origin: str, scheme: str, host: str | None) -> bool:
    """``Origin`` names the scheme, host and port the request was sent to (an opaque
    ``null`` origin never does)."""
    if host is None:
        return False
    try:
        url, own = URL(origin), URL(f"{scheme}://{host}")
        return (url.scheme, (url.host or "").lower(), url.port) == (
            own.scheme, (own.host or "").lower(), own.port) and url.path in ("", "/")
    except ValueError:
        return False


@web.middleware
async def loop_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """TCP only: a request that already passed through this orchd (its ``Via`` names it) went
    round a loop, e.g. an endpoint leading back here: refused (the proxy refuses its own)."""
    if request.rel_url.path_safe.startswith(PREFIX):
        return await handler(request)
    via = request.headers.getall(hdrs.VIA, None)
    if via and seen_here(", ".join(via)):
        server_logger.warning("refused a request from %s that already passed through this "
                              "gateway (Via): %s %s", request.remote, request.method,
                              request.rel_url.path_safe)
        raise ProblemError(508, "Loop detected",
                           "the request has already passed through this gateway",
                           extra={"reason": "loop_detected"})
    return await handler(request)


@web.middleware
async def admin_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """TCP only: every method but GET/HEAD outside /orchestrator/ is an admin call.

    What is under /orchestrator/ is decided on the path the router matched, not on the
    decoded one: ``/orchestrator%2F..%2Fregistry`` is not a proxied path."""
    if request.method in _SAFE_METHODS or request.rel_url.path_safe.startswith(PREFIX):
        return await handler(request)
    token = request.app[STATE].admin_token
    if token:
        auth = request.headers.get("Authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ProblemError(401, "Unauthorized",
                               "admin calls need 'Authorization: Bearer <admin_token>'",
                               headers={"WWW-Authenticate": 'Bearer realm="orchd-admin"'})
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ProblemError(403, "Forbidden", "the admin token is wrong")
        return await handler(request)
    peer = socket_peer(request)  # never a forwarded or PROXY header's client (section 11)
    if not _is_loopback(peer):
        raise ProblemError(403, "Forbidden",
                           "no server.admin_token is set, so admin calls are accepted "
                           "only from loopback clients")
    why = _cross_site(request)
    if why is not None:
        server_logger.warning("refused an admin call from %s: %s", peer, why)
        raise ProblemError(403, "Forbidden",
                           f"no server.admin_token is set, so admin calls are accepted only "
                           f"from loopback clients that are not driven by a web page: {why}")
    return await handler(request)
