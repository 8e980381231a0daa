"""The request path: ``/orchestrator/<endpoint>/<rest>`` -> one upstream target.

Reads the routing snapshot once, checks method and credentials, maps the path under the
target's base path (never above it), picks a target through its breaker, streams the body
both ways, and reports the outcome to the breaker. Gateway errors are problem documents.

Both listeners use it the same way: they hand it a request that keeps the ``ProxiedRequest``
contract (aiohttp's ``web.Request``, or ``orchd.front``'s own) and a ``Reply`` the answer is
written through.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Final, Protocol
from urllib.parse import unquote_plus

import aiohttp
from aiohttp import hdrs, web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError
from yarl import URL

from orchd.auth.gateway import Forwarding
from orchd.auth.guard import Guard, Passage
from orchd.balancer import RetryBudget, choose
from orchd.client_ip import FORWARDED_BY, AddressRule, forwarded_for
from orchd.errors import ProblemError, UpstreamBroke, UpstreamConnectError, endpoint_not_found
from orchd.hops import seen_here, via_after
from orchd.inflight import InFlight
from orchd.log import proxy_logger
from orchd.model import IDEMPOTENT_METHODS
from orchd.router import PREFIX, PathError, Route, map_path
from orchd.state import GatewayState
from orchd.target import Target
from orchd.tls import client_server_name, client_ssl
from orchd.upstream import Body, UpstreamPool

__all__ = ("HOP_BY_HOP", "BodyTooLarge", "Headers", "ProxiedRequest", "Proxy", "Reply",
           "RequestHeaders")

HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
    "TE", "Trailer", "Trailers", "Transfer-Encoding", "Upgrade",
))
# Never copied from the client to the upstream: hop-by-hop, and what the proxy sets itself.
_REQUEST_DROP = HOP_BY_HOP | {"host", "x-forwarded-for", "x-forwarded-proto",
                              "x-forwarded-host", "x-request-id", "content-length", "via"}
_RESPONSE_DROP = frozenset(h.encode() for h in HOP_BY_HOP | {
    "content-length", "x-request-id", "x-endpoint-id", "x-response-time"})
_NAMES_NO_HEADER = frozenset({b"close", b""})  # Connection tokens that are not header names
_WS_DROP = _REQUEST_DROP | {"sec-websocket-key", "sec-websocket-version",
                            "sec-websocket-extensions", "sec-websocket-protocol",
                            "sec-websocket-accept"}

_CREDENTIAL_SCHEMES = {"bearer": ("bearer ",), "oauth2": ("bearer ",), "basic": ("basic ",)}
CHUNK = 64 * 1024
# Answers with a Content-Length up to this are read whole before they are sent (as nginx's
# proxy_buffering does); longer ones, and those of unknown length (SSE), stream.
GATHER_LIMIT = 256 * 1024
Headers = list[tuple[bytes, bytes]]  # names and values as they go on the wire
# "00" to "99": X-Response-Time's hundredths without formatting a float per answer
_TWO_DIGITS = tuple(f"{i:02d}" for i in range(100))


class BodyTooLarge(Exception):
    pass


class ClientBodyBroke(Exception):
    """The client's request body broke off (it went away, or framed it wrongly): not the
    upstream's fault, so its breaker does not hear of it."""


class _LimitedBody:
    """The client's request body in chunks: ``BodyTooLarge`` past ``limit`` bytes,
    ``ClientBodyBroke`` if it breaks off. An iterator class rather than an async
    generator, so that the module compiles with mypyc (see docs/performance.md)."""

    __slots__ = ("_content", "_limit", "_seen")

    def __init__(self, content: StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self._seen = 0

    def __aiter__(self) -> _LimitedBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._content.read(CHUNK)
        except (OSError, RequestPayloadError) as exc:
            raise ClientBodyBroke(f"{type(exc).__name__}: {exc}") from exc
        if not chunk:
            raise StopAsyncIteration
        self._seen += len(chunk)
        if self._seen > self._limit:
            raise BodyTooLarge(self._seen)
        return chunk


def _request_body(content: StreamReader, limit: int) -> bytes | _LimitedBody:
    """The client's request body as the upstream pool takes it: whole, when it has all
    arrived already within ``limit`` (a small body comes with its head), so that it leaves
    with the request's head in one write, with no task to send it; else a ``_LimitedBody``
    that reads it as it comes. Whole or not, the upstream gets the same bytes."""
    if content.is_eof() and content.exception() is None and content.total_bytes <= limit:
        return content.read_nowait()
    return _LimitedBody(content, limit)


class _UpstreamFailed(Exception):
    """A try that failed before any byte reached the client."""

    def __init__(self, problem: ProblemError, reason: str, retriable: bool) -> None:
        super().__init__(reason)
        self.problem = problem
        self.reason = reason
        self.retriable = retriable


# Generated request IDs: 32 hex digits, a random per-process half and a counter half; as
# unique as uuid4 for this purpose at a tenth of its cost on the request path. The counter
# carries a 65th bit so that ``hex()`` always gives 16 digits after it (no format spec).
_rid_prefix = os.urandom(8).hex()
_rid_counter = itertools.count((1 << 64) | int.from_bytes(os.urandom(4), "big"))


def _reseed_request_ids() -> None:
    global _rid_prefix, _rid_counter
    _rid_prefix = os.urandom(8).hex()
    _rid_counter = itertools.count((1 << 64) | int.from_bytes(os.urandom(4), "big"))


os.register_at_fork(after_in_child=_reseed_request_ids)  # forked workers never share IDs


def _request_id(request: ProxiedRequest) -> str:
    rid = request.headers.get("X-Request-ID") or ""
    if 0 < len(rid) <= 200 and rid.isprintable() and rid.isascii():
        return rid
    return _rid_prefix + hex(next(_rid_counter))[3:]


def _upstream_problem(status: int, title: str, endpoint: str, rid: str, what: str,
                      reason: str, target: str, why: str,
                      headers: dict[str, str]) -> ProblemError:
    """A gateway error caused upstream. The client learns the endpoint, what went wrong in
    general words (``what``, and ``reason`` as a field) and the request id; the target's
    address and the failure's own words (``why``) go to the log only, on one line."""
    proxy_logger.warning("request %s: endpoint %s: upstream %s: %s (%s)",
                         rid, endpoint, target, why, reason)
    return ProblemError(status, title,
                        f"endpoint {endpoint!r}: {what}; request id {rid}; "
                        "details are in the gateway's log",
                        headers=headers, extra={"reason": reason})


def _received_via(headers: RequestHeaders) -> str | None:
    """The request's ``Via`` field lines, joined with commas (None without one)."""
    if "Via" not in headers:
        return None
    return ", ".join([v for k, v in headers.items() if k.lower() == "via"])


def _check_address(addresses: AddressRule, client: str, endpoint: str, rid: str) -> None:
    """403 unless the endpoint's ``ip_deny``/``ip_allow`` let ``client`` in."""
    why = addresses.refusal(client)
    if why is not None:
        proxy_logger.info("request %s: endpoint %s: refused %s: %s", rid, endpoint, client, why)
        raise ProblemError(403, "Forbidden",
                           f"endpoint {endpoint!r} does not accept requests from {client}: "
                           f"{why}; request id {rid}",
                           headers={"X-Endpoint-ID": endpoint},
                           extra={"reason": "ip_denied"})


def _too_large(detail: str, headers: dict[str, str]) -> ProblemError:
    return ProblemError(413, "Request body too large", detail, headers=headers)


# How a try ended, as its target's breaker hears it (``_Exchange.settle``).
_SUCCESS: Final = 0
_FAILURE: Final = 1
_RELEASE: Final = 2  # nothing learnt of the upstream: the call it was allowed is given back


class _Exchange:
    """One proxied request on its way upstream, as ``Proxy._try`` reads it: what stays the
    same over its tries, built once per request, and the current try (``begin``): its
    target, its URL, and whether that target's breaker has heard how it went (``settle``)."""

    __slots__ = ("answer", "body", "connect_timeout", "has_body", "headers", "max_body",
                 "method", "reply", "request", "rid", "route", "settled", "started", "target",
                 "url")

    target: Target
    url: str

    def __init__(self, request: ProxiedRequest, reply: Reply, route: Route, method: str,
                 headers: list[tuple[str, str]], has_body: bool, connect_timeout: float,
                 rid: str, started: float, max_body: int) -> None:
        self.request = request
        self.reply = reply
        self.route = route
        self.method = method
        self.headers = headers  # to send upstream
        self.has_body = has_body
        self.connect_timeout = connect_timeout
        self.rid = rid
        self.started = started  # time.perf_counter() when the request arrived
        self.max_body = max_body
        self.settled = True  # no try yet
        # The gateway's own fields of the answer (CORS, RateLimit-*): None without a guard.
        self.answer: Headers | None = None
        # The request body once read whole (``_request_body``): kept for another try.
        self.body: bytes | None = None

    def begin(self, target: Target, url: str) -> None:
        """A try on ``target`` (its breaker let the call through), of ``url`` under it."""
        self.target = target
        self.url = url
        self.settled = False

    def settle(self, outcome: int, reason: str = "") -> None:
        """Tell the try's breaker how it went: ``_SUCCESS``, ``_FAILURE`` (``reason`` says
        which) or ``_RELEASE``. Only the first call of a try counts; later ones do nothing."""
        if self.settled:
            return
        self.settled = True
        breaker = self.target.breaker
        if outcome == _SUCCESS:
            breaker.success()
        elif outcome == _FAILURE:
            breaker.failure(reason)
        else:
            breaker.release()

    def endpoint_headers(self) -> dict[str, str]:
        """The headers of a gateway error about this request's endpoint."""
        return {"X-Endpoint-ID": self.route.name}

    def upstream_problem(self, status: int, title: str, what: str, reason: str,
                         why: str) -> ProblemError:
        """The current try's failure as the client learns it (``_upstream_problem``)."""
        return _upstream_problem(status, title, self.route.name, self.rid, what, reason,
                                 self.target.url, why, self.endpoint_headers())


def _drop_set(headers: RequestHeaders, base: frozenset[str] | set[str]) -> set[str]:
    conn = headers.get(hdrs.CONNECTION)
    if not conn:
        return set(base)
    return set(base) | {t.strip().lower() for t in conn.split(",") if t.strip()}


def has_credential(request: ProxiedRequest, auth_type: str) -> bool:
    auth = request.headers.get(hdrs.AUTHORIZATION) or ""
    if auth_type == "api_key":
        return bool(request.headers.get("X-API-Key") or auth or "api_key" in request.query)
    prefixes = _CREDENTIAL_SCHEMES.get(auth_type)
    if prefixes is None:
        return True
    low = auth.lower()
    return any(low.startswith(p) and len(auth) > len(p) for p in prefixes)


class Proxy:
    def __init__(self, state: GatewayState, session: aiohttp.ClientSession,
                 budget: RetryBudget | None = None, pool: UpstreamPool | None = None) -> None:
        self.state = state
        self.session = session  # WebSocket upgrades
        self.upstream = pool or UpstreamPool()  # every other request: see orchd/upstream.py
        self.upstream.check_address = state.upstream_address_allowed
        self.budget = budget or RetryBudget()
        self.streams = InFlight()  # by endpoint: a reload that removes one cuts them late

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp route: the answer goes out through a ``web.StreamResponse``."""
        reply = _StreamReply(request)
        answer = await self.serve(request, reply)
        return answer if answer is not None else reply.response

    def refused_early(self, request: ProxiedRequest) -> ProblemError | None:
        """What a request with ``Expect: 100-continue`` gets instead of ``100 Continue``: a
        body over ``max_body_size`` is refused before the client sends it, not after."""
        max_body = self.state.config.server.max_body_size
        length = request.content_length
        if length is None or length <= max_body:
            return None
        return _too_large(f"the body is {length} bytes; the limit is {max_body}",
                          {"X-Request-ID": _request_id(request)})

    async def serve(self, request: ProxiedRequest, reply: Reply) -> web.Response | None:
        """Forward ``request`` (a ``web.Request``, or ``orchd.front``'s own request object)
        and send the answer through ``reply``. Returns a whole answer the caller must send
        itself (a breaker's fallback), or None when ``reply`` has sent it; raises
        ``ProblemError`` for gateway errors (nothing has been sent then)."""
        started = time.perf_counter()
        rid = _request_id(request)
        request["request_id"] = rid
        request["started"] = started  # for the access log and metrics (orchd.accesslog)
        try:
            return await self._handle(request, reply, rid, started)
        except ProblemError as exc:
            exc.headers = {**exc.headers, "X-Request-ID": rid}
            raise

    async def _handle(self, request: ProxiedRequest, reply: Reply, rid: str,
                      started: float) -> web.Response | None:
        via = _received_via(request.headers)
        if via is not None and seen_here(via):
            # Already forwarded by this orchd (an endpoint that leads back here): refused
            # instead of going round again.
            proxy_logger.warning("request %s: %s %s has already passed through this gateway "
                                 "(Via: %s): loop refused", rid, request.method,
                                 request.raw_path, via)
            raise ProblemError(508, "Loop detected",
                               "the request has already passed through this gateway (its "
                               f"Via header names it); request id {rid}",
                               extra={"reason": "loop_detected"})
        raw = request.raw_path
        path, _, query = raw.partition("?")
        snapshot = self.state.registry.snapshot
        resolved = snapshot.resolve(path[len(PREFIX):])
        if resolved is None:
            name = path[len(PREFIX):].split("/", 1)[0]
            raise endpoint_not_found(name, "Unknown endpoint")
        route, segments = resolved
        request["endpoint"] = route.name
        addresses = route.spec.addresses  # ip_allow / ip_deny: None when neither is set
        if addresses is not None:
            _check_address(addresses, request.remote or "", route.name, rid)
        guard = route.guard  # None unless the endpoint has auth, rate_limit or cors
        forwarding: Forwarding | None = None
        answer: dict[str, str] | None = None
        if guard is not None and guard.cors is not None and request.method == "OPTIONS":
            preflight = _preflight(guard, request.headers, route.name, rid)
            if preflight is not None:
                return preflight
        try:
            if guard is None:
                max_body = self._admit(request, route, True)
            else:
                passage = guard.passage(request.headers.get("Origin"))
                answer = passage.answer
                max_body = await self._guarded(request, route, guard, passage)
                forwarding = passage.forwarding
                if forwarding is not None and forwarding.drop_query is not None and query:
                    query = _without_param(query, forwarding.drop_query)
            task = request.task
            # (Task.cancel answers a bool that InFlight ignores.)
            cut = _uncut if task is None else task.cancel
            with self.streams.track(route.name, cut):
                if (isinstance(reply, _StreamReply) and request.method == "GET"
                        and (request.headers.get(hdrs.UPGRADE) or "").lower() == "websocket"):
                    # A WebSocket holds its connection as long as it lives: it takes one of
                    # the long-lived stream slots (orchd.streams) before it costs a breaker
                    # trial.
                    with self.state.streams.acquire(request.remote or "", "websocket"):
                        reply.response = await self._websocket(
                            reply.request, route, segments, query, rid, forwarding, answer)
                    return None
                return await self._forward(request, reply, route, segments, query, rid,
                                           started, max_body, forwarding, answer)
        except ProblemError as exc:
            if answer:  # every answer of a guarded endpoint carries the gateway's fields
                exc.headers = {**exc.headers, **answer, "X-Endpoint-ID": route.name}
            raise

    def _admit(self, request: ProxiedRequest, route: Route, presence: bool) -> int:
        """The checks every request of a matched endpoint passes: not disabled, an accepted
        method, a credential present if ``require_auth`` (when ``presence``: the gateway
        does not check it itself), a body within ``max_body_size`` (the limit answered)."""
        if route.admin_disabled:
            raise ProblemError(503, "Endpoint disabled",
                               f"endpoint {route.name!r} is disabled by an operator",
                               headers={"X-Endpoint-ID": route.name, "Retry-After": "30"})
        method = request.method
        if method not in route.methods and not (method == "HEAD" and "GET" in route.methods):
            raise ProblemError(405, "Method not allowed",
                               f"endpoint {route.name!r} accepts {', '.join(route.methods)}",
                               headers={"X-Endpoint-ID": route.name,
                                        "Allow": _allow(route.methods)})
        spec = route.spec
        if presence and spec.require_auth and not has_credential(request, spec.auth_type):
            scheme = {"basic": "Basic", "api_key": "ApiKey"}.get(spec.auth_type, "Bearer")
            raise ProblemError(401, "Credential required",
                               f"endpoint {route.name!r} requires {spec.auth_type} "
                               "credentials and the request has none",
                               headers={"X-Endpoint-ID": route.name,
                                        "WWW-Authenticate": scheme})
        max_body = self.state.config.server.max_body_size
        if request.content_length is not None and request.content_length > max_body:
            raise _too_large(f"the body is {request.content_length} bytes; "
                             f"the limit is {max_body}", {"X-Endpoint-ID": route.name})
        return max_body

    async def _guarded(self, request: ProxiedRequest, route: Route, guard: Guard,
                       passage: Passage) -> int:
        """The checks of an endpoint with ``auth``, ``rate_limit`` or ``cors`` (design
        section 12; its CORS preflight was answered before), in this order: the rate limit
        by a key that needs no identity; the endpoint's own checks (``_admit``); the
        credential; the rate limit by consumer or claim. ``passage`` collects the fields
        every answer then carries and what forwarding changes. Answers ``_admit``'s."""
        headers = request.headers
        client = request.remote or ""
        if guard.limiter is not None and not guard.limit_after_auth:
            guard.limit(passage, client, headers, None)
        max_body = self._admit(request, route, guard.authenticator is None)
        if guard.authenticator is not None:
            query = request.query if guard.reads_query else None
            if not guard.known(passage, headers, query):  # a cached token, a known key
                await guard.authenticate(passage, client, headers, query)
        if guard.limit_after_auth:
            guard.limit(passage, client, headers, passage.identity)
        return max_body

    def _pick(self, route: Route, tried: set[Target], rid: str) -> Target:
        target = choose(route, tried)
        if target is not None:
            return target
        headers = {"X-Endpoint-ID": route.name}
        open_breakers = [t for t in route.targets
                         if t.breaker.state in ("open", "forced_open", "half_open")]
        if open_breakers and len(open_breakers) == len(route.targets):
            fallback = route.breaker_settings.fallback_response
            retry = max(1, int(min(t.breaker.retry_after() for t in open_breakers) + 0.999))
            if fallback is not None:
                raise _Fallback(fallback.status, dict(fallback.headers), fallback.body, retry)
            # (The breakers' reasons were logged when they opened; GET
            # /health/circuit-breakers shows them. The client learns none of them.)
            raise ProblemError(503, "Circuit breaker open",
                               f"endpoint {route.name!r}: no target accepts requests while its "
                               f"circuit breaker is open; request id {rid}",
                               headers={**headers, "Retry-After": str(retry)},
                               extra={"reason": "circuit_breaker_open"})
        raise ProblemError(503, "No available target",
                           f"endpoint {route.name!r} has no target that may take the request "
                           f"(drained, unhealthy or its breaker is open); request id {rid}",
                           headers={**headers, "Retry-After": "5"},
                           extra={"reason": "no_available_target"})

    def _upstream_headers(self, request: ProxiedRequest, rid: str,
                          drop: frozenset[str],
                          forwarding: Forwarding | None = None) -> list[tuple[str, str]]:
        src = request.headers
        if forwarding is not None:  # client-sent copies of what the gateway sets go
            drop = forwarding.dropping(drop)
        conn = src.get(hdrs.CONNECTION)
        dropset = drop if not conn else _drop_set(src, drop)
        out = [(k, v) for k, v in src.items() if k.lower() not in dropset]
        if forwarding is not None:
            out += forwarding.add.items()
        if self.state.config.server.trusted_proxies:
            by = request.get(FORWARDED_BY)
            if isinstance(by, str):  # from a trusted proxy: its X-Forwarded-* are believed
                chain = forwarded_for(src.items())
                out += (("X-Forwarded-For", f"{chain}, {by}" if chain else by),
                        ("X-Forwarded-Proto", src.get("X-Forwarded-Proto")
                         or ("https" if request.secure else "http")),
                        ("X-Forwarded-Host", src.get("X-Forwarded-Host")
                         or src.get(hdrs.HOST) or ""),
                        ("X-Request-ID", rid),
                        ("Via", via_after(_received_via(src))))
                return out
        peer = request.remote or ""
        prior = src.get("X-Forwarded-For")
        # Proto and Host describe this hop as the gateway saw it: a client's own values for
        # them are not trusted (they would let it spoof the scheme or host a backend sees).
        out += (("X-Forwarded-For", f"{prior}, {peer}" if prior else peer),
                ("X-Forwarded-Proto", "https" if request.secure else "http"),
                ("X-Forwarded-Host", src.get(hdrs.HOST) or ""),
                ("X-Request-ID", rid),
                ("Via", via_after(_received_via(src))))
        return out

    async def _forward(self, request: ProxiedRequest, reply: Reply, route: Route,
                       segments: list[str], query: str, rid: str, started: float,
                       max_body: int, forwarding: Forwarding | None = None,
                       answer: dict[str, str] | None = None) -> web.Response | None:
        spec = route.spec
        method = request.method
        ex = _Exchange(request, reply, route, method,
                       self._upstream_headers(request, rid, _REQUEST_DROP, forwarding),
                       request.body_exists, min(5.0, spec.timeout), rid, started, max_body)
        if answer:
            ex.answer = [(k.encode(), v.encode()) for k, v in answer.items()]
        tried: set[Target] = set()
        attempts = 1 + (spec.retries if method in IDEMPOTENT_METHODS else 0)
        self.budget.record_request()
        last: _UpstreamFailed | None = None
        for attempt in range(attempts):
            try:
                target = self._pick(route, tried, rid)
            except _Fallback as fb:
                fallback = fb.response(rid, route.name)
                if answer:
                    fallback.headers.update(answer)
                return fallback
            except ProblemError:
                if last is None:
                    raise
                raise last.problem from None
            tried.add(target)
            try:
                path = map_path(target.base_path, segments)
            except PathError as exc:
                target.breaker.release()
                raise ProblemError(400, "Invalid path", str(exc)) from None
            ex.begin(target, f"{path}?{query}" if query else path)
            try:
                await self._try(ex)
                return None
            except _UpstreamFailed as failed:
                if not (failed.retriable and attempt + 1 < attempts
                        and len(route.targets) > len(tried) and self.budget.try_retry()):
                    raise failed.problem from None
                last = failed
                proxy_logger.info("retrying %s %s on another target after: %s",
                                  method, route.name, failed.reason)
        raise AssertionError("unreachable")

    async def _try(self, ex: _Exchange) -> None:
        """One try of ``ex`` on its current target: send the request, pass the answer on.
        Its breaker hears how it went exactly once (``_Exchange.settle``): a failure of the
        upstream (connect error, timeout, 5xx, a broken answer), a success, or, when the try
        taught nothing about the upstream (the client's body, or the client went away), a
        release of the call it was allowed."""
        request, reply, route, target = ex.request, ex.reply, ex.route, ex.target
        method, max_body, timeout = ex.method, ex.max_body, route.spec.timeout
        target.in_flight += 1
        target.requests += 1
        request["target"] = target.url
        payload: bytes | _LimitedBody | None = ex.body
        if payload is None and ex.has_body:
            payload = _request_body(request.content, max_body)
            if isinstance(payload, bytes):
                ex.body = payload
        try:
            try:
                upstream = await self.upstream.request(
                    self.upstream.origin_for(target.url, route.spec.tls), method, ex.url,
                    ex.headers, payload, request.content_length if ex.has_body else None,
                    ex.connect_timeout, timeout=timeout,
                )
            except BodyTooLarge:
                ex.settle(_RELEASE)
                raise _too_large(f"the body is larger than the limit of {max_body} bytes",
                                 ex.endpoint_headers()) from None
            except ClientBodyBroke as broke:  # (each clause its own name: mypyc types them)
                ex.settle(_RELEASE)
                raise ProblemError(400, "Request body incomplete",
                                   f"the client's request body broke off: {broke}",
                                   headers=ex.endpoint_headers()) from None
            except TimeoutError:
                ex.settle(_FAILURE, f"timeout after {timeout:g}s")
                request["upstream_error"] = "timeout"
                raise _UpstreamFailed(ex.upstream_problem(
                    504, "Upstream timeout", f"the upstream did not answer within {timeout:g}s",
                    "upstream_timeout", "timeout"), "timeout", retriable=False) from None
            except UpstreamConnectError as refused:
                why = f"connect error: {refused.strerror or str(refused)}"
                ex.settle(_FAILURE, why)
                request["upstream_error"] = "refused"
                raise _UpstreamFailed(ex.upstream_problem(
                    502, "Upstream refused the connection", "the upstream refused the connection",
                    "upstream_refused", why), why, retriable=True) from None
            except (aiohttp.ClientError, OSError) as exc:
                if _caused_by(exc, BodyTooLarge):
                    # aiohttp wraps what the body iterator raised in a connection error.
                    ex.settle(_RELEASE)
                    raise _too_large(f"the body is larger than the limit of {max_body} bytes",
                                     ex.endpoint_headers()) from None
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                ex.settle(_FAILURE, reason)
                request["upstream_error"] = "reset"
                raise _UpstreamFailed(ex.upstream_problem(
                    502, "Upstream connection broke", "the upstream broke the exchange",
                    "upstream_broke", reason), reason, retriable=False) from None

            # (The response is released in a finally of its own: it exists only once
            # the request got one; mypyc would not let a None pass for it.)
            try:
                status = upstream.status
                if status >= 500:
                    ex.settle(_FAILURE, f"HTTP {status}")
                    request["upstream_error"] = "5xx"
                early = upstream.error()
                if early is not None:
                    # Malformed or cut before anything reached the client: a clean 502.
                    reason = f"{type(early).__name__}: {early}"
                    ex.settle(_FAILURE, reason)
                    request["upstream_error"] = "reset"
                    raise _UpstreamFailed(ex.upstream_problem(
                        502, "Upstream connection broke", "the upstream broke the exchange",
                        "upstream_broke", reason), reason, retriable=False)
                out, length = _response_headers(upstream.raw_headers)
                if ex.answer is not None:
                    out = _with_gateway_fields(out, ex.answer)
                hundredths = int((time.perf_counter() - ex.started) * 100_000 + 0.5)  # of a ms
                out += ((b"X-Request-ID", ex.rid.encode()),
                        (b"X-Endpoint-ID", route.name.encode()),
                        (b"X-Response-Time",
                         f"{hundredths // 100}.{_TWO_DIGITS[hundredths % 100]}ms".encode()))
                try:
                    if upstream.complete or method == "HEAD" or status in (204, 304):
                        # A whole answer already read (most small ones) leaves in one write.
                        await reply.whole(status, upstream.reason, out, upstream.take_buffered()
                                          if method != "HEAD" else b"", close=self.state.stopping)
                    elif length is not None and length <= GATHER_LIMIT:
                        # Small enough to gather first: one write instead of one per read.
                        try:
                            body = await upstream.body(timeout)
                        except (UpstreamBroke, TimeoutError):
                            # As if it had streamed: the head and what arrived, then the cut.
                            await reply.start(status, upstream.reason, out, close=True)
                            await reply.write(upstream.take_buffered())
                            raise
                        await reply.whole(status, upstream.reason, out, body,
                                          close=self.state.stopping)
                    else:
                        await reply.start(status, upstream.reason, out, close=self.state.stopping)
                        async for chunk in upstream.chunks(timeout):
                            await reply.write(chunk)
                        await reply.finish()
                except ConnectionResetError:
                    # The client went away mid-answer: nothing to send, nothing learnt about the
                    # upstream (the breaker is released below), and not an error of the gateway.
                    return
                except (UpstreamBroke, TimeoutError) as cut:
                    kind = "timeout" if isinstance(cut, TimeoutError) else "reset"
                    request["upstream_error"] = kind
                    ex.settle(_FAILURE, f"body broke: {type(cut).__name__}")
                    proxy_logger.warning("request %s: endpoint %s: upstream %s broke "
                                         "mid-body: %r", ex.rid, route.name, target.url, cut)
                    reply.abort()
                    return
                ex.settle(_SUCCESS)
            finally:
                upstream.release()
        finally:
            target.in_flight -= 1
            ex.settle(_RELEASE)  # when nothing above settled it (cancelled, or a fault)

    async def _websocket(self, request: web.Request, route: Route, segments: list[str],
                         query: str, rid: str, forwarding: Forwarding | None,
                         answer: dict[str, str] | None) -> web.StreamResponse:
        target = self._pick(route, set(), rid)
        try:
            path = map_path(target.base_path, segments)
        except PathError as bad:
            target.breaker.release()
            raise ProblemError(400, "Invalid path", str(bad)) from None
        url = URL(f"{target.origin}{path}" + (f"?{query}" if query else ""), encoded=True)
        headers = self._upstream_headers(request, rid, _WS_DROP, forwarding)
        protocols = [p.strip() for p in
                     request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        target.in_flight += 1
        request["target"] = target.url
        try:
            try:
                async with asyncio.timeout(route.spec.timeout):
                    up = await self.session.ws_connect(
                        url, headers=headers, protocols=protocols, autoping=False,
                        max_msg_size=0, ssl=client_ssl(route.spec.tls),
                        server_hostname=client_server_name(route.spec.tls))
            except aiohttp.WSServerHandshakeError as refused:
                # The upstream answered, but not with 101: the client asked a backend that
                # does not speak WebSocket there. Only its own 5xx is the upstream's failure.
                reason = f"websocket upgrade refused: HTTP {refused.status}"
                if refused.status >= 500:
                    target.breaker.failure(reason)
                else:
                    target.breaker.release()
                request["upstream_error"] = "refused"
                raise _upstream_problem(502, "Upstream refused the WebSocket", route.name, rid,
                                        "the upstream did not accept the WebSocket upgrade",
                                        "websocket_refused", target.url, reason,
                                        {"X-Endpoint-ID": route.name}) from None
            except (aiohttp.ClientError, OSError, TimeoutError) as failed:
                reason = f"websocket connect failed: {type(failed).__name__}: {failed}"
                target.breaker.failure(reason)
                timed_out = isinstance(failed, TimeoutError)
                request["upstream_error"] = "timeout" if timed_out else "refused"
                raise _upstream_problem(502, "Upstream refused the WebSocket", route.name, rid,
                                        "the WebSocket connection to the upstream failed",
                                        "upstream_timeout" if timed_out else "upstream_refused",
                                        target.url, reason,
                                        {"X-Endpoint-ID": route.name}) from None
            target.breaker.success()
            ws = web.WebSocketResponse(protocols=[up.protocol] if up.protocol else (),
                                       autoping=False, max_msg_size=0)
            if answer:
                ws.headers.update(answer)
            ws.headers["X-Request-ID"] = rid
            ws.headers["X-Endpoint-ID"] = route.name
            await ws.prepare(request)
            await _pump_websockets(ws, up)
            return ws
        finally:
            target.in_flight -= 1


_WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _relay(src: _WebSocket, dst: _WebSocket) -> None:
    """One direction of a WebSocket: each message as it comes, then the close."""
    async for msg in src:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type == aiohttp.WSMsgType.PING:
            await dst.ping(msg.data)
        elif msg.type == aiohttp.WSMsgType.PONG:
            await dst.pong(msg.data)
        else:
            break
    code = src.close_code or aiohttp.WSCloseCode.OK
    await dst.close(code=code)


async def _pump_websockets(client: web.WebSocketResponse,
                           upstream: aiohttp.ClientWebSocketResponse) -> None:
    tasks = [asyncio.create_task(_relay(client, upstream)),
             asyncio.create_task(_relay(upstream, client))]
    try:
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
    finally:
        for task in tasks:
            task.cancel()
        await upstream.close()


def _preflight(guard: Guard, headers: RequestHeaders, endpoint: str,
               rid: str) -> web.Response | None:
    """The gateway's answer to a CORS preflight (an ``OPTIONS`` with ``Origin`` and
    ``Access-Control-Request-Method``): 204 with the allow fields, or 403. None for
    another ``OPTIONS``: it goes on as any request."""
    origin = headers.get("Origin")
    wanted = headers.get("Access-Control-Request-Method")
    if not origin or not wanted:
        return None
    status, fields = guard.preflight(origin, wanted)
    if status != 204:
        raise ProblemError(403, "Origin not allowed",
                           f"endpoint {endpoint!r} does not accept calls from pages of that "
                           "origin (cors.allow_origins)", headers=fields,
                           extra={"reason": "cors_origin"})
    return web.Response(status=204, headers={**fields, "X-Request-ID": rid,
                                             "X-Endpoint-ID": endpoint})


def _without_param(query: str, name: str) -> str:
    """``query`` (raw) without the parameter ``name`` (a credential the upstream must not
    see)."""
    return "&".join([p for p in query.split("&")
                     if p and unquote_plus(p.partition("=")[0]) != name])


def _with_gateway_fields(out: Headers, fields: Headers) -> Headers:
    """The upstream's answer headers with the gateway's ``fields`` instead of the
    upstream's own of those names (``Vary`` is kept: its field lines add up)."""
    names = {k.lower() for k, _ in fields} - {b"vary"}
    kept = [(k, v) for k, v in out if k.lower() not in names]
    kept += fields
    return kept


def _allow(methods: frozenset[str]) -> str:
    """The ``Allow`` header: HEAD is served wherever GET is."""
    return ", ".join(sorted(methods | {"HEAD"} if "GET" in methods else methods))


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _response_headers(headers: Headers) -> tuple[Headers, int | None]:
    """The upstream's answer headers to pass on, as received: hop-by-hop ones (and those its
    ``Connection`` names) dropped, ``Content-Length`` last; and that length. One pass."""
    out = []
    length: bytes | None = None
    named: bytes | None = None
    for k, v in headers:
        low = k.lower()
        if low in _RESPONSE_DROP:
            if low == b"content-length":
                length = v
            elif low == b"connection":
                named = v if named is None else named + b"," + v
            continue
        out.append((k, v))
    if named is not None:
        tokens = {t.strip().lower() for t in named.split(b",")} - _RESPONSE_DROP \
            - _NAMES_NO_HEADER
        if tokens:
            out = [(k, v) for k, v in out if k.lower() not in tokens]
    if length is None:
        return out, None
    out.append((b"Content-Length", length))
    return out, int(length)  # llhttp checked it is digits


class RequestHeaders(Protocol):
    """A request's header fields as the proxy reads them (``CIMultiDictProxy`` or
    ``orchd.front.FrontHeaders``): ``get`` gives the first value of a name in any case,
    ``items`` every field in the order received."""

    def get(self, name: str, /) -> str | None: ...

    def items(self) -> Iterable[tuple[str, str]]: ...

    def __contains__(self, name: object, /) -> bool: ...


class ProxiedRequest(Protocol):
    """What the proxy reads of a request, and all it reads: aiohttp's ``web.Request`` and the
    public listener's ``orchd.front.FrontRequest`` both are one. The item store takes what
    the access log and the metrics read after the answer (``request_id``, ``started``,
    ``endpoint``, ``target``, ``upstream_error``)."""

    @property
    def method(self) -> str: ...

    @property
    def raw_path(self) -> str:
        """The target as received: path and query, still percent-encoded."""

    @property
    def headers(self) -> RequestHeaders: ...

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def secure(self) -> bool: ...

    @property
    def content(self) -> StreamReader: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def body_exists(self) -> bool: ...

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task serving the request: cancelled if its endpoint is removed meanwhile."""

    def __setitem__(self, key: str, value: object, /) -> None: ...

    def get(self, key: str, /) -> object: ...


def _uncut() -> None:
    """The cut of a request no task serves (``ProxiedRequest.task`` is None): nothing."""


class Reply(Protocol):
    """Where a proxied answer goes: aiohttp's response (``_StreamReply``) or the public
    listener's own writer (``orchd.front``). Writes raise ``ConnectionResetError`` once the
    client is gone. ``close`` asks for the connection to end after this answer."""

    async def whole(self, status: int, reason: str, headers: Headers, body: Body, *,
                    close: bool = False) -> None:
        """The complete answer, head and body in one write."""

    async def start(self, status: int, reason: str, headers: Headers, *,
                    close: bool = False) -> None:
        """The head of an answer whose body follows by ``write`` and ends by ``finish``."""

    async def write(self, chunk: Body) -> None: ...

    async def finish(self) -> None: ...

    def abort(self) -> None:
        """Cut the connection: the answer cannot be completed."""


class _StreamReply:
    """A ``Reply`` through aiohttp's ``web.StreamResponse``."""

    __slots__ = ("request", "response")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse = web.StreamResponse()

    def _prepared(self, resp: web.StreamResponse, headers: Headers,
                  close: bool) -> web.StreamResponse:
        out = resp.headers
        for k, v in headers:
            out.add(k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
        if close:  # draining: the client should not reuse this connection
            resp.force_close()
        self.response = resp
        return resp

    async def whole(self, status: int, reason: str, headers: Headers, body: Body, *,
                    close: bool = False) -> None:
        resp = self._prepared(_OneWriteResponse(status=status, reason=reason), headers, close)
        await resp.prepare(self.request)
        if body:
            await resp.write(body)
        await resp.write_eof()

    async def start(self, status: int, reason: str, headers: Headers, *,
                    close: bool = False) -> None:
        resp = self._prepared(web.StreamResponse(status=status, reason=reason), headers, close)
        await resp.prepare(self.request)

    async def write(self, chunk: Body) -> None:
        await self.response.write(chunk)

    async def finish(self) -> None:
        await self.response.write_eof()

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class _OneWriteResponse(web.StreamResponse):
    """Holds the head back until the first body bytes, so both go in one write."""

    _send_headers_immediately = False


class _Fallback(Exception):
    def __init__(self, status: int, headers: dict[str, str], body: object, retry: int) -> None:
        super().__init__("fallback")
        self.status, self.headers, self.body, self.retry = status, headers, body, retry

    def response(self, rid: str, endpoint: str) -> web.Response:
        body = self.body
        headers = {"Retry-After": str(self.retry), **self.headers, "X-Request-ID": rid,
                   "X-Endpoint-ID": endpoint, "X-Fallback-Response": "circuit_breaker_open"}
        if isinstance(body, str):
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
            return web.Response(status=self.status, text=body, headers=headers)
        if body is None:
            return web.Response(status=self.status, headers=headers)
        headers.setdefault("Content-Type", "application/json")
        return web.Response(status=self.status, body=json.dumps(body).encode(), headers=headers)
