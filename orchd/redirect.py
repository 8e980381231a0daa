"""``server.redirect_http_port``: a plain HTTP listener whose every answer is a 308 to the
same host and path on the https port.

308 (not 301) keeps the method and body of a POST that followed it. The host is the one the
client asked for (``Host``), its port replaced by the public port; a request without a
usable ``Host`` gets a 400 problem document (orchd never redirects to a name it made up).

The listener keeps the public port's edge rules (``orchd.edge_rules``, through
``orchd.aiohttp_server.GuardedRunner``): the header deadline, the size limits (414, 431),
``server.max_connections`` (counted for this port alone) and the idle keep-alive timeout,
read from the running configuration as each connection opens. A plain port facing the
network is as open to slowloris and oversized heads as the TLS one.
"""

from __future__ import annotations

from aiohttp import web

from orchd.aiohttp_server import GuardedRunner
from orchd.edge_rules import SettingsFn
from orchd.errors import ProblemError
from orchd.problems import problem_response

__all__ = ("https_location", "redirect_app", "redirect_runner")


def https_location(host_header: str, raw_path: str, https_port: int) -> str | None:
    """The https URL for a request to ``host_header`` (port dropped) and ``raw_path`` (kept
    as sent, query included); None when the host is not a host name or address."""
    host = host_header.strip()
    if host.startswith("["):  # [v6]:port
        name = host.partition("]")[0] + "]"
        bad = not host.endswith(("]", "]:" + host.rpartition(":")[2])) or len(name) < 3
    else:
        name = host.partition(":")[0]
        bad = host.count(":") > 1
    if bad or not name or any(c in name for c in "/\\@?#% \t\r\n"):
        return None
    port = "" if https_port == 443 else f":{https_port}"
    path = raw_path if raw_path.startswith("/") else "/"
    return f"https://{name}{port}{path}"


def redirect_app(https_port: int) -> web.Application:
    async def redirect(request: web.Request) -> web.Response:
        location = https_location(request.headers.get("Host", ""), request.raw_path,
                                  https_port)
        if location is None:
            detail = "a Host header naming this gateway is needed to redirect to https"
            return problem_response(ProblemError(400, "Bad Request", detail), request)
        return web.Response(status=308, headers={"Location": location},
                            text=f"see {location}\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app


def redirect_runner(https_port: int, settings: SettingsFn) -> GuardedRunner:
    """The runner of the redirecting listener, with the edge rules of ``settings()``."""
    return GuardedRunner(redirect_app(https_port), settings=settings, handle_signals=False,
                         shutdown_timeout=1.0, access_log=None)
