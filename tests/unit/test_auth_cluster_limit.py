"""``rate_limit.scope: cluster``: each instance takes rate / live instances (the count the
etcd store keeps), rescaled as instances come and go; with the file store the scope is an
error naming its key path."""

from __future__ import annotations

import textwrap

import pytest

from orchd.auth.jwks import JwksAnswer, JwksRegistry
from orchd.auth.pool import GuardPool
from orchd.auth.ratelimit import RateLimiter
from orchd.errors import ConfigError
from orchd.loader import parse_config
from orchd.model import BreakerSettings, EndpointSpec, RateLimitSettings
from orchd.router import Route, RoutingTable
from orchd.store.etcd import Instances


class Count:
    def __init__(self, count: int) -> None:
        self.count = count


def allowed(lim: RateLimiter, key: str, now: float, tries: int = 50) -> int:
    return sum(lim.take(key, now).allowed for _ in range(tries))


def test_each_instance_takes_its_share_of_rate_and_burst():
    peers = Count(2)
    lim = RateLimiter(RateLimitSettings(rate=10, per=1, burst=10, scope="cluster"),
                      instances=peers)
    assert allowed(lim, "a", 100.0) == 5
    assert lim.take("a", 100.0).headers["RateLimit-Limit"] == "5"
    assert allowed(lim, "a", 101.0) == 5  # 5 tokens a second
    peers.count = 1  # the other instance left
    assert allowed(lim, "b", 101.0) == 10
    assert allowed(lim, "a", 102.0) == 10
    peers.count = 4  # two more joined: a full bucket is capped at the new share
    assert allowed(lim, "c", 102.0) == 2  # burst 2.5
    assert allowed(lim, "b", 200.0) == 2
    assert lim.take("b", 300.0).headers["RateLimit-Limit"] == "2"


def test_a_share_is_at_least_one_token_deep():
    lim = RateLimiter(RateLimitSettings(rate=2, per=60, burst=2, scope="cluster"),
                      instances=Count(5))
    assert allowed(lim, "k", 0.0) == 1
    denied = lim.take("k", 1.0)
    assert not denied.allowed and denied.retry_after == 149  # 2 per 60 s / 5: one per 150 s


def test_instance_scope_ignores_the_count():
    lim = RateLimiter(RateLimitSettings(rate=10, per=1, burst=10))
    assert allowed(lim, "a", 0.0) == 10


def test_instances_count_this_one_and_the_others():
    seen = Instances("me")
    assert seen.count == 1
    seen.replace({"me", "a", "b"})
    assert seen.count == 3
    seen.joined("c")
    seen.joined("me")
    assert seen.count == 4
    seen.left("a")
    seen.left("me")  # its own lease ran out: it writes its key again, still counts itself
    assert seen.count == 3
    seen.replace(set())
    assert seen.count == 1


async def _no_fetch(url: str) -> JwksAnswer:
    raise AssertionError(url)


def test_the_pool_shares_only_cluster_limits():
    peers = Count(3)
    pool = GuardPool(JwksRegistry(_no_fetch), None, peers)
    specs = [EndpointSpec.from_dict({"name": name, "url": "http://127.0.0.1:9",
                                     "rate_limit": {"rate": 30, "scope": scope}})
             for name, scope in (("shared", "cluster"), ("own", "instance"))]
    table = RoutingTable.build([Route(s, "config", (), BreakerSettings(), 0.0, False,
                                      frozenset(s.methods)) for s in specs], 1)
    pool.sync(table)
    shared, own = table.routes["shared"].guard, table.routes["own"].guard
    assert shared is not None and shared.limiter is not None
    assert own is not None and own.limiter is not None
    assert shared.limiter.take("k", 0.0).limit == 10
    assert own.limiter.take("k", 0.0).limit == 30
    assert pool.status()["instances"] == 3
    assert "instances" not in GuardPool(JwksRegistry(_no_fetch), None).status()


def _config(store: str) -> str:
    registry = ("registry: {store: etcd, etcd: {endpoints: ['http://127.0.0.1:2379']}}\n"
                if store == "etcd" else "")
    return registry + textwrap.dedent("""\
        endpoints:
          - name: a
            url: http://127.0.0.1:9
            rate_limit:
              rate: 10
              scope: cluster
        """)


def test_cluster_scope_needs_the_etcd_store():
    with pytest.raises(ConfigError) as info:
        parse_config(_config("file"), "o.yaml")
    got = [str(e) for e in info.value.errors]
    assert len(got) == 1
    assert got[0].startswith("endpoints[0].rate_limit.scope (line 6)"), got
    assert "registry.store: etcd" in got[0]
    spec = parse_config(_config("etcd"), "o.yaml").endpoints[0]
    assert spec.rate_limit == RateLimitSettings(rate=10.0, burst=10, scope="cluster")
