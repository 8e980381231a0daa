"""Token buckets per key, with memory that a flood of distinct keys cannot grow.

``RateLimiter.take(key, now)`` spends one token of ``key``'s bucket: ``burst`` tokens at
most, ``rate`` added every ``per`` seconds. It answers a ``Decision``, whose ``headers``
are the ``RateLimit-Limit``/``-Remaining``/``-Reset`` fields every answer of a limited
endpoint carries (``Reset``: whole seconds until the bucket is full again) and whose
``retry_after`` (whole seconds, at least 1) goes with a 429.

Memory: at most ``max_keys`` buckets (``MAX_KEYS`` by default), kept in least-recently-used
order. A bucket that has been idle long enough to be full again is the same as no bucket,
so idle ones are dropped as requests pass (two per call). At the bound, the least recently
used bucket is dropped even if it is not full: a key that comes back after that starts
with a full bucket. A flood of new keys can thus loosen the limit of keys it pushes out,
never grow memory or refuse requests it has not made.

``scope: cluster``: the limiter is given the live instances sharing the etcd store
(``Instances``, kept by ``orchd.store.etcd``) and each instance takes its share: ``rate``
and ``burst`` divided by their count (a bucket at least one token deep), so N instances
behind one address let ``rate`` through together. The count is read on each call (one
attribute read, compared with the last one); a change rescales every bucket at once, since
tokens are stored as they were and capped by the new ``burst`` when next refilled. The
``RateLimit-*`` fields describe this instance's share.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from orchd.auth import HeaderLookup
from orchd.model import RateLimitSettings

__all__ = ("MAX_KEYS", "Decision", "Instances", "RateLimiter", "limit_key")

MAX_KEYS = 65536


class Instances(Protocol):
    """How many orchd instances share a ``scope: cluster`` limit (this one included)."""

    @property
    def count(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # seconds until the bucket is full again
    retry_after: int  # seconds until a token is there (0 when allowed)

    @property
    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.limit),
                "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset)}


class RateLimiter:
    """One endpoint's ``rate_limit`` on this instance: all of it, or with ``instances``
    (``scope: cluster``) its share."""

    def __init__(self, settings: RateLimitSettings, *, max_keys: int = MAX_KEYS,
                 instances: Instances | None = None) -> None:
        self.settings = settings
        self.instances = instances
        self.max_keys = max_keys
        self.burst = float(settings.burst)
        self.per_second = settings.rate / settings.per
        self.shares = 1
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, at]
        if instances is not None:
            self._share(instances.count)

    def _share(self, count: int) -> None:
        """Take one of ``count`` equal shares of the rate and the burst."""
        self.shares = max(1, count)
        self.burst = max(1.0, self.settings.burst / self.shares)
        self.per_second = self.settings.rate / self.settings.per / self.shares

    def take(self, key: str, now: float) -> Decision:
        if self.instances is not None and self.instances.count != self.shares:
            self._share(self.instances.count)
        self._expire(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [self.burst, now]
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket[1])
            bucket[0] = min(self.burst, bucket[0] + elapsed * self.per_second)
            bucket[1] = now
        allowed = bucket[0] >= 1.0
        if allowed:
            bucket[0] -= 1.0
        tokens = bucket[0]
        reset = math.ceil((self.burst - tokens) / self.per_second) if tokens < self.burst else 0
        retry = 0 if allowed else max(1, math.ceil((1.0 - tokens) / self.per_second))
        return Decision(allowed, int(self.burst), int(tokens), reset, retry)

    def _expire(self, now: float) -> None:
        """Drop up to two least recently used buckets that are full again."""
        for _ in range(2):
            if not self._buckets:
                return
            key, (tokens, at) = next(iter(self._buckets.items()))
            if tokens + (now - at) * self.per_second < self.burst:
                return
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def limit_key(settings: RateLimitSettings, *, client_ip: str, endpoint: str,
              consumer: str | None = None, headers: HeaderLookup | None = None,
              claims: Mapping[str, object] | None = None) -> str:
    """The bucket a request counts against. ``consumer``, ``header:NAME`` and
    ``claim:NAME`` fall back to the client address when the request has no such value, so
    that leaving it out never escapes the limit. ``headers`` must look names up without
    regard to case (aiohttp's ``CIMultiDictProxy``)."""
    kind, _, name = settings.key.partition(":")
    value: object = None
    if kind == "endpoint":
        return f"e:{endpoint}"
    if kind == "consumer":
        value = consumer
    elif kind == "header" and headers is not None:
        value = headers.get(name)
    elif kind == "claim" and claims is not None:
        value = claims.get(name)
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return f"{kind}:{str(value)[:256]}"
    return f"ip:{client_ip}"

