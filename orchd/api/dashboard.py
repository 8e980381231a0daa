"""``GET /dashboard``: the live health dashboard, static files shipped in ``orchd/static``.

The page is read-only: it reads ``/health/*`` once, then follows ``/events``. It needs no
token, since every GET is open.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from orchd.errors import ProblemError

__all__ = ("routes",)

routes = web.RouteTableDef()

_FILES = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}


def _read(name: str) -> bytes:
    return resources.files("orchd").joinpath("static", name).read_bytes()


@routes.get("/dashboard")
async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=_read("dashboard.html"), content_type="text/html",
                        charset="utf-8", headers={"Cache-Control": "no-cache"})


@routes.get("/dashboard/static/{name}")
async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    ctype = _FILES.get(name)
    if ctype is None:
        raise ProblemError(404, "Not found", f"no such file {name!r}")
    return web.Response(body=_read(name), headers={"Content-Type": ctype,
                                                   "Cache-Control": "no-cache"})
