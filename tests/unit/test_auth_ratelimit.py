"""Token buckets: rate, burst, the RateLimit header values, fallback keys, bounded memory."""

from __future__ import annotations

from multidict import CIMultiDict

from orchd.auth.ratelimit import RateLimiter, limit_key
from orchd.model import RateLimitSettings


def test_burst_then_refill_and_header_values():
    lim = RateLimiter(RateLimitSettings(rate=2, per=1, burst=3))
    got = [lim.take("a", 100.0) for _ in range(4)]
    assert [d.allowed for d in got] == [True, True, True, False]
    assert got[0].headers == {"RateLimit-Limit": "3", "RateLimit-Remaining": "2",
                              "RateLimit-Reset": "1"}
    assert got[3].retry_after == 1 and got[3].remaining == 0 and got[3].reset == 2
    assert lim.take("a", 100.5).allowed  # one token back after half a second
    assert not lim.take("a", 100.5).allowed
    assert lim.take("b", 100.5).allowed  # another key, another bucket


def test_slow_rate_retry_after_in_whole_seconds():
    lim = RateLimiter(RateLimitSettings(rate=1, per=60, burst=1))
    assert lim.take("k", 0.0).allowed
    denied = lim.take("k", 1.0)
    assert not denied.allowed and denied.retry_after == 59


def test_memory_is_bounded_and_idle_buckets_go():
    lim = RateLimiter(RateLimitSettings(rate=10, per=1, burst=10), max_keys=100)
    for i in range(10_000):  # a flood of distinct keys
        lim.take(f"k{i}", 0.0)
    assert len(lim) == 100
    for i in range(10):  # later, idle (full) buckets are dropped as requests pass
        lim.take("fresh", 10.0 + i)
    assert len(lim) < 100


def test_keys_and_their_fallback():
    headers = CIMultiDict({"x-tenant": "acme"})
    s = RateLimitSettings(rate=1, key="header:X-Tenant")
    assert limit_key(s, client_ip="1.2.3.4", endpoint="e", headers=headers) == "header:acme"
    assert limit_key(s, client_ip="1.2.3.4", endpoint="e", headers=CIMultiDict()) == \
        "ip:1.2.3.4"
    s = RateLimitSettings(rate=1, key="claim:tenant")
    assert limit_key(s, client_ip="::1", endpoint="e", claims={"tenant": "t1"}) == "claim:t1"
    assert limit_key(RateLimitSettings(rate=1, key="consumer"), client_ip="::1",
                     endpoint="e") == "ip:::1"
    assert limit_key(RateLimitSettings(rate=1, key="endpoint"), client_ip="::1",
                     endpoint="e") == "e:e"
