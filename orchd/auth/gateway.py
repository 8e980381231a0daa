"""One endpoint's ``auth`` block as one call, and what it changes in the forwarded request.

``Authenticator.authenticate(headers, query)`` answers an ``Identity`` or raises
``AuthFailure`` (401 with its ``WWW-Authenticate``, or 403 for a missing scope). With
``jwt`` and ``api_key`` both set, either credential passes; with ``anonymous``, a request
that carries neither passes as consumer ``anonymous`` (one that carries a bad credential
is still refused). ``forwarding(identity)`` names the header fields to remove from the
request (client-sent copies of what the gateway sets, and the credential with
``hide_credentials``), the ones to add, and the query parameter to remove.

``known(headers, query)`` is the same decision for a credential already accepted (a token
in the validator's cache, unexpired under the current keys; an API key of a consumer), made
without waiting and without building anything: the identity and forwarding are kept per
token and per consumer (``MEMO_SIZE`` of each at most). It answers None for everything
else, and ``authenticate`` decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from orchd.auth import HeaderLookup
from orchd.auth.jwks import JwksRegistry, KeySource
from orchd.auth.jwt import CACHE_SIZE, JwtValidator, TokenError, Verified, claim_headers
from orchd.errors import ProblemError
from orchd.model import AuthSettings
from orchd.store.consumers import ConsumerDirectory

__all__ = ("ANONYMOUS", "CONSUMER_HEADER", "MEMO_SIZE", "AuthFailure", "Authenticator",
           "Forwarding", "Identity", "build_authenticator")

ANONYMOUS = "anonymous"
CONSUMER_HEADER = "X-Consumer-Name"
_API_KEY_CHALLENGE = 'ApiKey realm="orchd"'
MEMO_SIZE = CACHE_SIZE  # identities kept per authenticator, for tokens and for consumers


@dataclass(frozen=True, slots=True)
class Identity:
    method: str  # jwt | api_key | anonymous
    consumer: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Forwarding:
    drop: frozenset[str]  # header names, lower case
    add: dict[str, str]
    drop_query: str | None = None
    # ``drop`` joined with the proxy's own sets of names to drop, as it asks for them
    _joined: dict[frozenset[str], frozenset[str]] = field(
        default_factory=dict, compare=False, repr=False)

    def dropping(self, base: frozenset[str]) -> frozenset[str]:
        """``base`` and ``drop``: the names a forwarded request goes without."""
        joined = self._joined.get(base)
        if joined is None:
            joined = self._joined[base] = base | self.drop
        return joined


class AuthFailure(Exception):
    """A refused credential: 401 with its challenges, or 403 (a missing scope)."""

    def __init__(self, status: int, reason: str, description: str,
                 challenges: tuple[str, ...]) -> None:
        super().__init__(description)
        self.status = status
        self.reason = reason  # for orchd_auth_failures_total{reason}
        self.description = description
        self.challenges = challenges

    def problem(self) -> ProblemError:
        title = "Forbidden" if self.status == 403 else "Unauthorized"
        return ProblemError(self.status, title, self.description,
                            headers={"WWW-Authenticate": ", ".join(self.challenges)},
                            extra={"reason": self.reason})


class Authenticator:
    def __init__(self, settings: AuthSettings, jwt: JwtValidator | None,
                 consumers: ConsumerDirectory | None) -> None:
        self.settings = settings
        self.jwt = jwt
        self.consumers = consumers
        key = settings.api_key
        self._key_header = key.header if key is not None else None
        self._key_query = key.query if key is not None else None
        challenges = []
        if jwt is not None:
            challenges.append('Bearer realm="orchd"')
        if key is not None:
            challenges.append(_API_KEY_CHALLENGE)
        self._challenges = tuple(challenges)
        # token -> (what the validator verified, its identity, its forwarding)
        self._by_token: dict[str, tuple[Verified, Identity, Forwarding]] = {}
        self._by_consumer: dict[str, tuple[Identity, Forwarding]] = {}

    def _failure(self, reason: str, description: str, status: int = 401,
                 bearer: str | None = None) -> AuthFailure:
        challenges = tuple(bearer if bearer and c.startswith("Bearer") else c
                           for c in self._challenges)
        return AuthFailure(status, reason, description, challenges)

    async def authenticate(self, headers: HeaderLookup,
                           query: Mapping[str, str] | None = None) -> Identity:
        """``headers`` must look names up without regard to case (a CIMultiDict)."""
        token = self._bearer(headers) if self.jwt is not None else None
        key = self._api_key(headers, query)
        if token is None and key is None:
            if self.settings.anonymous:
                return Identity(ANONYMOUS, ANONYMOUS)
            self._missing()
        refused: TokenError | None = None
        if token is not None:
            assert self.jwt is not None
            try:
                verified = await self.jwt.verify(token)
                return Identity("jwt", None, verified.claims)
            except TokenError as exc:
                refused = exc
        if key is not None:
            consumer = self.consumers.lookup(key) if self.consumers is not None else None
            if consumer is not None:
                return Identity("api_key", consumer)
            if refused is None:
                raise self._failure("unknown_api_key", "the API key is not valid")
        assert refused is not None
        raise self._failure(refused.reason, refused.description, refused.status,
                            refused.www_authenticate)

    def known(self, headers: HeaderLookup,
              query: Mapping[str, str] | None = None) -> tuple[Identity, Forwarding] | None:
        """What ``authenticate`` and ``forwarding`` would answer, for a credential already
        accepted (see the module); None when ``authenticate`` has to decide."""
        jwt = self.jwt
        if jwt is not None:
            token = self._bearer(headers)
            if token is not None:  # a bearer token decides first, as in authenticate
                verified = jwt.cached(token)
                if verified is None:
                    return None
                memo = self._by_token.get(token)
                if memo is None or memo[0] is not verified:
                    identity = Identity("jwt", None, verified.claims)
                    memo = (verified, identity, self.forwarding(identity))
                    _keep(self._by_token, token, memo)
                return memo[1], memo[2]
        if self.consumers is None:
            return None
        key = self._api_key(headers, query)
        consumer = self.consumers.lookup(key) if key is not None else None
        if consumer is None:
            return None
        known = self._by_consumer.get(consumer)
        if known is None:
            identity = Identity("api_key", consumer)
            known = (identity, self.forwarding(identity))
            _keep(self._by_consumer, consumer, known)
        return known

    def _missing(self) -> NoReturn:
        wanted = []
        if self.jwt is not None:
            wanted.append("a bearer token")
        if self._key_header is not None:
            wanted.append(f"an API key in {self._key_header}")
        raise self._failure("missing_credential",
                            "this endpoint needs " + (" or ".join(wanted) or "a credential"))

    @staticmethod
    def _bearer(headers: HeaderLookup) -> str | None:
        scheme, _, token = (headers.get("Authorization") or "").strip().partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None

    def _api_key(self, headers: HeaderLookup, query: Mapping[str, str] | None) -> str | None:
        if self._key_header is None:
            return None
        value = (headers.get(self._key_header) or "").strip()
        if not value and self._key_query is not None and query is not None:
            value = query.get(self._key_query, "").strip()
        return value or None

    def forwarding(self, identity: Identity) -> Forwarding:
        """What to change in the request before it is forwarded (see the module)."""
        drop = {CONSUMER_HEADER.lower()}
        add: dict[str, str] = {}
        if self.jwt is not None:
            drop.update(h.lower() for _, h in self.jwt.settings.claims_to_headers)
        if identity.consumer is not None:
            add[CONSUMER_HEADER] = identity.consumer
        if identity.method == "jwt" and self.jwt is not None:
            add.update(claim_headers(self.jwt.settings, identity.claims))
        drop_query = None
        if self.settings.hide_credentials:
            if identity.method == "jwt":
                drop.add("authorization")
            elif identity.method == "api_key" and self._key_header is not None:
                drop.add(self._key_header.lower())
                drop_query = self._key_query
        return Forwarding(frozenset(drop), add, drop_query)


def _keep(memo: dict[str, Any], key: str, value: Any) -> None:
    """``memo[key] = value``, the memo emptied first when it holds ``MEMO_SIZE``."""
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value


def build_authenticator(settings: AuthSettings, jwks: JwksRegistry,
                        consumers: ConsumerDirectory | None) -> Authenticator:
    """An endpoint's authenticator; its JWK Set comes from ``jwks`` (shared by URL)."""
    validator = None
    if settings.jwt is not None:
        s = settings.jwt
        keys: KeySource | None = None
        if s.jwks_url is not None:
            keys = jwks.for_url(s.jwks_url)
        elif s.jwks_file is not None:
            keys = jwks.for_file(s.jwks_file)
        validator = JwtValidator(s, keys)
    return Authenticator(settings, validator, consumers)
