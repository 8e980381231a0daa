"""Authentication at the gateway and its neighbours (design section 12), as building blocks.

* ``jwks``: signing keys of a JWK Set (a URL, fetched and cached; or a file), one cache per
  URL shared by every endpoint (``JwksRegistry``).
* ``jwt``: bearer token validation against an endpoint's ``auth.jwt`` (``JwtValidator``),
  with a bounded cache of verified tokens.
* ``keys``: consumers' API keys: generation, hashing, the in-memory index by hash.
* ``gateway``: one endpoint's ``auth`` block as one call (``Authenticator``) and the header
  fields to drop and add before forwarding.
* ``ratelimit``: token buckets with bounded memory; ``cors``: preflight and answer headers.

Nothing here reads a request object or writes an answer: the proxy calls these with the
values it has and turns a refusal into its problem document.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ("HeaderLookup",)


class HeaderLookup(Protocol):
    """A request's header fields as these modules read them: the first value of a name,
    in any case (aiohttp's ``CIMultiDictProxy``, ``orchd.front.FrontHeaders``)."""

    def get(self, name: str, /) -> str | None: ...
