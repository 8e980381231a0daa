"""The public port's edge: which file holds which part, and the runner that assembles them.

A request on the public port meets, in this order:

=====================  ==================================================================
``orchd.front``        the own HTTP/1.1 listener, for ``/orchestrator/`` requests: the
                       connection protocol (``FrontConnection``: parser callbacks, buffer,
                       one worker task, deadlines, hand-off to aiohttp) and the answer to
                       one request (``FrontReply``, the proxy's ``Reply``: its state, not
                       started → head sent → finished or aborted, and its writes)
``orchd.http1``        pure framing: where a head and a chunked body end, request lines
                       and targets refused although they parse, ``Host`` syntax, the
                       answer's head
``orchd.edge_rules``   every edge rule, once for both listeners: the header, body and send
                       deadlines, the URL and header size limits (414, 431), refusal (a
                       problem document, then a lingering close), eviction and the
                       connection cap (``server.max_connections``)
``orchd.aiohttp_server`` aiohttp's side: ``GuardedHandler`` (its connection handler with the
                       rules), ``GuardedServer`` (makes and counts connections),
                       ``GuardedRunner``; it serves everything the own listener hands over
``orchd.aiohttp_edge`` the only module that touches aiohttp's private attributes
=====================  ==================================================================

Dependencies run one way: ``edge`` → ``front`` → ``aiohttp_server`` → ``edge_rules`` →
``http1`` and ``aiohttp_edge``. Behind the edge, both listeners hand a proxied request to
``orchd.proxy`` (``Proxy.serve``, with a ``Reply``: ``FrontReply``, or aiohttp's response
for the connections aiohttp serves), which forwards it through ``orchd.upstream``.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from orchd.aiohttp_server import GuardedRunner as _AiohttpRunner
from orchd.edge_rules import SettingsFn
from orchd.front import FrontServer

if TYPE_CHECKING:
    from orchd.proxy import Proxy
    from orchd.traffic import RequestHook

__all__ = ("PublicRunner",)


class PublicRunner(_AiohttpRunner):
    """The public app's runner: connections start as ``orchd.front`` connections, which
    serve proxied requests themselves and hand each finished one to ``hook`` (aiohttp's
    connections, to their access logger), and pass every other one on to aiohttp."""

    def __init__(self, app: web.Application, *, settings: SettingsFn, proxy: Proxy,
                 hook: RequestHook | None = None, **kwargs: Any) -> None:
        hook = hook if hook is not None and hook.enabled else None
        super().__init__(app, settings=settings,
                         server_class=partial(FrontServer, proxy=proxy, hook=hook), **kwargs)
