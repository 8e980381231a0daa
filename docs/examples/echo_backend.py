"""A tiny backend for trying orchd: answers every request with what it received, as JSON.

    python docs/examples/echo_backend.py            # http://127.0.0.1:9001
    python docs/examples/echo_backend.py 9002       # another port

``/health`` answers 200 so active health checks pass.
"""

from __future__ import annotations

import sys

from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({
        "method": request.method,
        "path": request.raw_path,
        "headers": dict(request.headers),
        "body": body.decode("utf-8", "replace"),
    })


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9001
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
