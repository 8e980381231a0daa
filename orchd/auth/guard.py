"""One endpoint's gateway checks, as the proxy asks them: CORS, rate limit, credential.

A ``Guard`` exists only for an endpoint with an ``auth``, ``rate_limit`` or ``cors`` block
(``orchd.auth.pool`` builds them and hangs each on its ``Route``); the proxy asks it, in
this order (design section 12):

1. ``preflight``: an ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method`` on
   an endpoint with ``cors`` is answered here (204, or 403), before anything else;
2. ``limit`` with no identity, when the bucket key needs none (``client_ip``, ``endpoint``,
   ``header:NAME``): before the credential is checked;
3. ``authenticate``: the endpoint's ``Authenticator`` (with ``auth``);
4. ``limit`` with the identity, when the key is ``consumer`` or ``claim:NAME``. A request
   whose credential is refused has no identity: it counts against its address's bucket, so
   guessing keys or tokens is limited as well.

Every refusal is a ``ProblemError`` carrying the ``RateLimit-*`` fields known so far; the
proxy adds them, and the CORS fields, to every answer (``AnswerFields``). ``Counters``
keeps what ``/metrics`` and the dashboard show: refusals by endpoint and reason, and
rate-limited requests by endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from orchd.auth import HeaderLookup
from orchd.auth.cors import answer_headers, preflight
from orchd.auth.gateway import ANONYMOUS, Authenticator, AuthFailure, Forwarding, Identity
from orchd.auth.ratelimit import RateLimiter, limit_key
from orchd.errors import ProblemError
from orchd.model import CorsSettings

__all__ = ("Counters", "Guard", "Passage")

_AFTER_AUTH = ("consumer", "claim")  # bucket keys that need the request's identity


class Counters:
    """Auth refusals by (endpoint, reason) and rate-limited requests by endpoint."""

    __slots__ = ("failures", "limited")

    def __init__(self) -> None:
        self.failures: dict[tuple[str, str], int] = {}
        self.limited: dict[str, int] = {}

    def failed(self, endpoint: str, reason: str) -> None:
        key = (endpoint, reason)
        self.failures[key] = self.failures.get(key, 0) + 1

    def rate_limited(self, endpoint: str) -> None:
        self.limited[endpoint] = self.limited.get(endpoint, 0) + 1

    def failures_of(self, endpoint: str) -> int:
        return sum(n for (name, _), n in self.failures.items() if name == endpoint)

    def forget(self, endpoint: str) -> None:
        for key in [k for k in self.failures if k[0] == endpoint]:
            del self.failures[key]
        self.limited.pop(endpoint, None)


class Passage:
    """One request through a guard: the header fields its answer carries (CORS, and
    ``RateLimit-*`` once a bucket was asked) and, after ``authenticate``, what to change
    in the forwarded request."""

    __slots__ = ("answer", "forwarding", "identity")

    def __init__(self, answer: dict[str, str]) -> None:
        self.answer = answer
        self.identity: Identity | None = None
        self.forwarding: Forwarding | None = None


class Guard:
    """One endpoint's ``auth``, ``rate_limit`` and ``cors``, built once per settings and
    kept across reloads that leave them equal (``orchd.auth.pool``)."""

    __slots__ = ("authenticator", "cors", "counters", "limit_after_auth", "limiter",
                 "methods", "name", "reads_query")

    def __init__(self, name: str, methods: tuple[str, ...], authenticator: Authenticator | None,
                 limiter: RateLimiter | None, cors: CorsSettings | None,
                 counters: Counters) -> None:
        self.name = name
        self.methods = methods  # the endpoint's: a preflight's default allow list
        self.authenticator = authenticator
        self.limiter = limiter
        self.cors = cors
        self.counters = counters
        kind = limiter.settings.key.partition(":")[0] if limiter is not None else ""
        self.limit_after_auth = kind in _AFTER_AUTH
        self.reads_query = (authenticator is not None
                            and authenticator.settings.api_key is not None
                            and authenticator.settings.api_key.query is not None)

    # -- CORS

    def preflight(self, origin: str, request_method: str) -> tuple[int, dict[str, str]]:
        """The answer to a preflight (only with ``cors``): 204 and its fields, or 403."""
        assert self.cors is not None
        answer = preflight(self.cors, self.methods, origin, request_method)
        if answer.status == 403:
            self.counters.failed(self.name, "cors_origin")
        return answer.status, answer.headers

    def passage(self, origin: str | None) -> Passage:
        """A request's way through: its answer's CORS fields to begin with."""
        if self.cors is None:
            return Passage({})
        return Passage(answer_headers(self.cors, origin))

    # -- rate limit

    def limit(self, passage: Passage, client_ip: str, headers: HeaderLookup,
              identity: Identity | None) -> None:
        """Spend a token of the request's bucket; 429 when there is none. The
        ``RateLimit-*`` fields go into ``passage.answer`` either way."""
        limiter = self.limiter
        assert limiter is not None
        consumer = claims = None
        if identity is not None:
            consumer = identity.consumer if identity.consumer != ANONYMOUS else None
            claims = identity.claims
        key = limit_key(limiter.settings, client_ip=client_ip, endpoint=self.name,
                        consumer=consumer, headers=headers, claims=claims)
        decision = limiter.take(key, time.monotonic())
        passage.answer.update(decision.headers)
        if decision.allowed:
            return
        self.counters.rate_limited(self.name)
        retry = str(decision.retry_after)
        raise ProblemError(429, "Too many requests",
                           f"endpoint {self.name!r}: the rate limit is spent; retry in "
                           f"{retry} s", headers={"Retry-After": retry},
                           extra={"reason": "rate_limited"})

    # -- credential

    def known(self, passage: Passage, headers: HeaderLookup,
              query: Mapping[str, str] | None) -> bool:
        """True, with ``passage`` told the identity and the forwarding, for a credential
        already accepted (``Authenticator.known``): no wait, nothing counted. False when
        ``authenticate`` has to decide."""
        authenticator = self.authenticator
        assert authenticator is not None
        found = authenticator.known(headers, query)
        if found is None:
            return False
        passage.identity, passage.forwarding = found
        return True

    async def authenticate(self, passage: Passage, client_ip: str, headers: HeaderLookup,
                           query: Mapping[str, str] | None) -> None:
        """Check the credential (only with ``auth``): ``passage`` learns the identity and
        the forwarding; a refusal is a 401 or 403 problem document (after a token of the
        address's bucket when the limit is by consumer or claim)."""
        authenticator = self.authenticator
        assert authenticator is not None
        try:
            identity = await authenticator.authenticate(headers, query)
        except AuthFailure as failure:
            self.counters.failed(self.name, failure.reason)
            if self.limit_after_auth:
                self.limit(passage, client_ip, headers, None)
            raise failure.problem() from None
        passage.identity = identity
        passage.forwarding = authenticator.forwarding(identity)
