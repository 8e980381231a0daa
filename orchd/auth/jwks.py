"""Signing keys from JWK Sets: one cache per URL, shared by every endpoint that names it.

A ``JwksCache`` holds the last good keys of one URL and refreshes them:

* at start (``JwksRegistry.refresh_all``) and when the answer's ``Cache-Control: max-age``
  has passed (clamped to [60 s, 24 h]; 300 s without one). A request that finds the keys
  old is served with them while one refresh runs in the background;
* when a token names a ``kid`` the set lacks, at most once per 10 s (``refetch_for``);
* a failed fetch (network, status, body) keeps the last good keys, records ``last_error``
  and is retried 10 s later.

Fetching is the caller's: an injected ``Fetch`` (the daemon passes one that uses its
``ClientSession``, whose resolver applies ``server.allowed_upstreams``; ``aiohttp_fetch``
builds it). ``JwksFile`` reads a file instead, again when its mtime changes. Keys are
public keys only: private members of a JWK are dropped, symmetric (``oct``) keys and keys
whose ``use`` is not ``sig`` are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from jwt import PyJWK, PyJWKError

from orchd.log import escape_controls

__all__ = (
    "Fetch",
    "JwksAnswer",
    "JwksCache",
    "JwksFile",
    "JwksRegistry",
    "KeySource",
    "SigningKey",
    "aiohttp_fetch",
    "parse_jwks",
)

MIN_MAX_AGE = 60.0
MAX_MAX_AGE = 86400.0
DEFAULT_MAX_AGE = 300.0
UNKNOWN_KID_INTERVAL = 10.0  # seconds between two refetches for an unknown kid
RETRY_AFTER_FAILURE = 10.0
MAX_KEYS = 64  # keys kept from one set
MAX_BODY = 1024 * 1024  # bytes of a JWK Set answer or file

_PRIVATE = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_MAX_AGE_RE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
# Which key types and curves an algorithm may use.
_FAMILIES: Mapping[str, tuple[str, frozenset[str | None]]] = {
    **{f"{p}{n}": ("RSA", frozenset({None})) for p in ("RS", "PS") for n in (256, 384, 512)},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


@dataclass(frozen=True, slots=True)
class JwksAnswer:
    status: int
    body: bytes
    cache_control: str | None = None


Fetch = Callable[[str], Awaitable[JwksAnswer]]


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One public key of a set: ``key`` is a ``cryptography`` public key object."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own ``alg``: the only algorithm it may verify, if set
    key: Any

    def fits(self, alg: str) -> bool:
        family = _FAMILIES.get(alg)
        if family is None or (self.alg is not None and self.alg != alg):
            return False
        kty, curves = family
        return self.kty == kty and (self.crv in curves if kty != "RSA" else True)


class KeySource(Protocol):
    """What ``orchd.auth.jwt`` asks of a key set."""

    generation: int  # moves on whenever the keys change

    def keys_for(self, kid: str | None, alg: str) -> list[SigningKey]: ...

    async def ready(self) -> None:
        """Wait for a first load if none was done (a refresh of old keys is started)."""

    async def refetch_for(self, kid: str) -> bool:
        """The set lacks ``kid``: fetch it again if allowed now; True if it changed."""


def parse_jwks(body: bytes) -> tuple[dict[str | None, list[SigningKey]], list[str]]:
    """The usable keys of a JWK Set by ``kid`` (None: keys without one), and why the others
    were skipped. ValueError when the document is not a JWK Set at all."""
    if len(body) > MAX_BODY:
        raise ValueError(f"the JWK Set is larger than {MAX_BODY} bytes")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWK Set (an object with a 'keys' list)")
    out: dict[str | None, list[SigningKey]] = {}
    skipped: list[str] = []
    count = 0
    for i, raw in enumerate(doc["keys"]):
        if not isinstance(raw, dict):
            skipped.append(f"keys[{i}]: not an object")
            continue
        kty, use = raw.get("kty"), raw.get("use")
        if kty not in ("RSA", "EC", "OKP") or (use is not None and use != "sig"):
            skipped.append(f"keys[{i}]: not a public signing key (kty {kty!r}, use {use!r})")
            continue
        if count >= MAX_KEYS:
            skipped.append(f"keys[{i}]: beyond the first {MAX_KEYS} keys")
            continue
        public = {k: v for k, v in raw.items() if k not in _PRIVATE}
        alg = raw.get("alg") if isinstance(raw.get("alg"), str) else None
        kid = raw.get("kid") if isinstance(raw.get("kid"), str) else None
        try:
            jwk = PyJWK(public, alg if alg in _FAMILIES else None)
        except (PyJWKError, ValueError, TypeError, KeyError) as exc:
            skipped.append(f"keys[{i}]: {type(exc).__name__}")
            continue
        crv = raw.get("crv") if isinstance(raw.get("crv"), str) else None
        out.setdefault(kid, []).append(SigningKey(kid, str(kty), crv, alg, jwk.key))
        count += 1
    return out, skipped


def max_age(cache_control: str | None) -> float:
    """Seconds to keep a set: its max-age clamped to [60 s, 24 h], 300 s without one."""
    if not cache_control:
        return DEFAULT_MAX_AGE
    if "no-store" in cache_control.lower() or "no-cache" in cache_control.lower():
        return MIN_MAX_AGE
    match = _MAX_AGE_RE.search(cache_control)
    if match is None:
        return DEFAULT_MAX_AGE
    return min(MAX_MAX_AGE, max(MIN_MAX_AGE, float(match.group(1))))


class _Keys:
    """Keys by kid, their generation and the state ``/health/status`` shows."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.generation = 0
        self._by_kid: dict[str | None, list[SigningKey]] = {}
        self._all: list[SigningKey] = []
        self.fetched_at: float | None = None  # epoch seconds of the last good load
        self.last_error: str | None = None

    def keys_for(self, kid: str | None, alg: str) -> list[SigningKey]:
        found = self._all if kid is None else self._by_kid.get(kid, ())
        return [k for k in found if k.fits(alg)]

    def has_kid(self, kid: str) -> bool:
        return kid in self._by_kid

    def _install(self, body: bytes, wall: float) -> None:
        by_kid, _skipped = parse_jwks(body)
        flat = [k for keys in by_kid.values() for k in keys]
        if not flat:
            raise ValueError("the JWK Set has no usable signing key")
        self._by_kid, self._all = by_kid, flat
        self.generation += 1
        self.fetched_at = wall
        self.last_error = None

    def status(self) -> dict[str, Any]:
        return {"url": self.source, "keys": len(self._all), "fetched_at": self.fetched_at,
                "last_error": self.last_error}


class JwksCache(_Keys):
    """The keys of one JWKS URL (see the module docstring)."""

    def __init__(self, url: str, fetch: Fetch, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        super().__init__(url)
        self.url = url
        self._fetch = fetch
        self._clock = clock
        self._wall = wall
        self._fresh_until = -1.0  # monotonic: keys older than this are refreshed
        self._next_attempt = -1.0  # monotonic: no fetch before (after a failure)
        self._last_kid_fetch = -UNKNOWN_KID_INTERVAL * 2
        self._running: asyncio.Task[bool] | None = None

    async def ready(self) -> None:
        if self.fetched_at is None:
            if self._clock() >= self._next_attempt:
                await self.refresh()
            return
        if self._clock() >= self._fresh_until:
            self.refresh_soon()

    def refresh_soon(self) -> None:
        """Start a background refresh unless one runs or the last failure is too recent."""
        if self._running is None and self._clock() >= self._next_attempt:
            self._running = asyncio.create_task(self._refresh(), name="orchd-jwks-refresh")

    async def refresh(self) -> bool:
        """Fetch now (joining a fetch under way); True if the keys changed."""
        if self._running is None:
            self._running = asyncio.create_task(self._refresh(), name="orchd-jwks-refresh")
        return await asyncio.shield(self._running)

    async def refetch_for(self, kid: str) -> bool:
        now = self._clock()
        if self.has_kid(kid) or now - self._last_kid_fetch < UNKNOWN_KID_INTERVAL:
            return False
        self._last_kid_fetch = now
        return await self.refresh()

    async def _refresh(self) -> bool:
        before = self.generation
        try:
            answer = await self._fetch(self.url)
            if answer.status != 200:
                raise ValueError(f"HTTP {answer.status}")
            self._install(answer.body, self._wall())
            self._fresh_until = self._clock() + max_age(answer.cache_control)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure keeps the last good keys
            self.last_error = escape_controls(_describe(exc))[:300]
            self._next_attempt = self._clock() + RETRY_AFTER_FAILURE
        finally:
            self._running = None
        return self.generation != before

    async def close(self) -> None:
        task, self._running = self._running, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class JwksFile(_Keys):
    """The keys of a JWK Set file, read again when its mtime changes."""

    def __init__(self, path: str, *, wall: Callable[[], float] = time.time) -> None:
        super().__init__(path)
        self.path = path
        self._wall = wall
        self._mtime: int | None = None

    def load(self) -> bool:
        """Read the file if it changed; True if the keys changed. Errors keep the keys."""
        try:
            stat = os.stat(self.path)
            if stat.st_mtime_ns == self._mtime:
                return False
            with open(self.path, "rb") as f:
                body = f.read(MAX_BODY + 1)
            self._install(body, self._wall())
            self._mtime = stat.st_mtime_ns
            return True
        except (OSError, ValueError) as exc:
            self.last_error = escape_controls(_describe(exc))[:300]
            return False

    async def ready(self) -> None:
        if self.fetched_at is None:
            self.load()

    async def refetch_for(self, kid: str) -> bool:
        return self.load()


class JwksRegistry:
    """Every key set in use, one per URL or file, shared by the endpoints naming it."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._urls: dict[str, JwksCache] = {}
        self._files: dict[str, JwksFile] = {}

    def for_url(self, url: str) -> JwksCache:
        cache = self._urls.get(url)
        if cache is None:
            cache = self._urls[url] = JwksCache(url, self._fetch)
        return cache

    def for_file(self, path: str) -> JwksFile:
        source = self._files.get(path)
        if source is None:
            source = self._files[path] = JwksFile(path)
        source.load()
        return source

    async def retain(self, urls: Iterable[str], files: Iterable[str] = ()) -> None:
        """Forget the sets no endpoint names any more (after a reload)."""
        keep_urls, keep_files = set(urls), set(files)
        for url in [u for u in self._urls if u not in keep_urls]:
            await self._urls.pop(url).close()
        for path in [p for p in self._files if p not in keep_files]:
            del self._files[path]

    async def refresh_all(self) -> None:
        """Fetch every URL's set now (at start), concurrently; failures are recorded."""
        await asyncio.gather(*(c.refresh() for c in self._urls.values()))
        for source in self._files.values():
            source.load()

    def status(self) -> list[dict[str, Any]]:
        """``auth.jwks`` of ``/health/status``."""
        sources: list[_Keys] = [*self._urls.values(), *self._files.values()]
        return [s.status() for s in sorted(sources, key=lambda s: s.source)]

    async def close(self) -> None:
        await self.retain(())


def aiohttp_fetch(session: aiohttp.ClientSession, timeout: float = 5.0) -> Fetch:
    """A ``Fetch`` through ``session`` (its connector's resolver decides what may be
    reached): a GET without redirects, at most ``MAX_BODY`` bytes."""

    async def fetch(url: str) -> JwksAnswer:
        # (identity: the daemon's session does not decompress, as the proxy passes bodies on)
        async with session.get(url, allow_redirects=False,
                               headers={"Accept": "application/json",
                                        "Accept-Encoding": "identity"},
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            body = await resp.content.read(MAX_BODY + 1)
            return JwksAnswer(resp.status, body, resp.headers.get("Cache-Control"))

    return fetch


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
