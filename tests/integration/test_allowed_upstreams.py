"""server.allowed_upstreams: the registry cannot be pointed at what it must not reach."""

from __future__ import annotations

import pytest

from orchd.errors import ConfigError
from orchd.loader import parse_config
from tests.integration.rawhttp import endpoint
from tests.support import base_config, wait_until

METADATA_FORMS = [
    "http://169.254.169.254/latest/meta-data",
    "http://2852039166/",  # the same address as one decimal number
    "http://0xa9fea9fe/",  # ... in hex
    "http://0251.0376.0251.0376/",  # ... in octal
    "http://[::ffff:169.254.169.254]/",  # ... IPv4-mapped IPv6
    "http://[fe80::1]:8080/",
]

# The other clouds' metadata services, and the IPv6 spellings that reach an IPv4 one.
CLOUD_METADATA_FORMS = [
    ("http://[fd00:ec2::254]/latest/meta-data", "'!fd00:ec2::/32'"),  # AWS over IPv6
    ("http://100.100.100.200/latest/meta-data", "'!100.100.100.200/32'"),  # Alibaba
    ("http://[::ffff:100.100.100.200]/", "'!100.100.100.200/32'"),
    ("http://[64:ff9b::a9fe:a9fe]/", "'!169.254.0.0/16'"),  # NAT64
    ("http://[::a9fe:a9fe]/", "'!169.254.0.0/16'"),  # IPv4-compatible
    ("http://[2002:a9fe:a9fe::1]/", "'!169.254.0.0/16'"),  # 6to4
    ("http://[fd20:ce::254]/", "'!fd20:ce::254/128'"),  # GCP over IPv6
    ("http://192.0.0.192/latest/", "'!192.0.0.192/32'"),  # Oracle Cloud (classic)
    ("http://metadata.google.internal/computeMetadata/v1/", "'!metadata.google.internal'"),
]


async def _register(http, gw, name: str, url: str | None = None, **config):
    body = {"config": {"name": name, **({"url": url} if url else {}), **config}}
    async with http.post(f"{gw.url}/registry/endpoints", json=body) as r:
        return r.status, await r.json(content_type=None)


async def test_link_local_registration_is_refused_by_default(orchd_factory, http):
    gw = orchd_factory(base_config())
    for url in METADATA_FORMS:
        status, body = await _register(http, gw, "meta", url)
        assert status == 422, (url, body)
        assert body["title"] == "Upstream not allowed"
        assert "built-in rule" in body["detail"]
        assert body["errors"][0]["path"] == "config.url"
        async with http.get(f"{gw.url}/registry/endpoints/meta") as r:
            assert r.status == 404


async def test_every_cloud_metadata_address_is_refused_in_every_form(orchd_factory, http):
    gw = orchd_factory(base_config())
    for url, rule in CLOUD_METADATA_FORMS:
        status, body = await _register(http, gw, "meta", url)
        assert status == 422, (url, body)
        assert body["title"] == "Upstream not allowed"
        assert f"built-in rule {rule}" in body["detail"], (url, body)
        assert body["errors"][0]["path"] == "config.url"
    async with http.get(f"{gw.url}/registry/endpoints") as r:
        assert r.status == 200
        assert "meta" not in await r.text()


async def test_an_endpoint_cannot_point_at_this_orchd(orchd_factory, http):
    # Proxied, a POST would reach the loopback-trusted admin API from outside. No allow rule
    # lifts it.
    gw = orchd_factory(base_config(server={"allowed_upstreams": ["127.0.0.0/8", "localhost"]}))
    for url in (f"http://127.0.0.1:{gw.port}/registry/endpoints",
                f"http://localhost:{gw.port}/", f"http://[::ffff:127.0.0.1]:{gw.port}/"):
        status, body = await _register(http, gw, "self", url)
        assert status == 422, (url, body)
        assert f"port {gw.port} is this orchd's own listening address (built-in rule" \
            in body["detail"], body
    status, body = await _register(http, gw, "other", f"http://127.0.0.1:{gw.port + 1}/")
    assert status == 201, body


async def test_loopback_stays_allowed_by_default(orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    gw = orchd_factory(base_config())
    status, body = await _register(http, gw, "local", up.url)
    assert status == 201, body
    async with http.get(f"{gw.url}/orchestrator/local/x") as r:
        assert r.status == 200


async def test_an_allow_list_names_the_rule_that_refused(orchd_factory, upstream_factory, http):
    up = await upstream_factory()
    gw = orchd_factory(base_config(server={
        "allowed_upstreams": ["127.0.0.0/8", "*.svc.cluster.local", "!127.0.0.2"]}))
    assert (await _register(http, gw, "ok", up.url))[0] == 201
    status, body = await _register(http, gw, "svc", "http://api.svc.cluster.local:8080")
    assert status == 201, body
    status, body = await _register(http, gw, "denied", "http://127.0.0.2:9")
    assert status == 422 and "'!127.0.0.2'" in body["detail"], body
    status, body = await _register(http, gw, "other", "http://10.1.2.3")
    assert status == 422 and "matches no rule" in body["detail"], body
    # Several targets: the error names the one refused.
    status, body = await _register(http, gw, "multi",
                                   urls=[up.url, "http://169.254.169.254"])
    assert status == 422, body
    assert body["errors"][0]["path"] == "config.urls[1]"
    # An update is held to the same rules.
    async with http.put(f"{gw.url}/registry/endpoints/ok",
                        json={"config": {"name": "ok", "url": "http://10.9.9.9"}}) as r:
        assert r.status == 422
    async with http.get(f"{gw.url}/registry/endpoints/ok") as r:
        assert (await r.json())["url"] == up.url


async def test_an_explicit_rule_can_allow_a_link_local_address(orchd_factory, http):
    gw = orchd_factory(base_config(server={"allowed_upstreams": ["169.254.169.254/32"]}))
    status, body = await _register(http, gw, "meta", "http://169.254.169.254")
    assert status == 201, body
    status, body = await _register(http, gw, "other", "http://169.254.1.1")
    assert status == 422, body


def test_the_file_is_refused_with_the_line_and_the_rule():
    text = ("server:\n  allowed_upstreams: ['10.0.0.0/8']\nendpoints:\n"
            "  - name: a\n    url: http://10.0.0.5:80\n"
            "  - name: b\n    url: http://169.254.169.254/\n"
            "  - name: c\n    urls: [http://10.0.0.6, http://192.168.1.1]\n")
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    paths = {e.path: e for e in err.value.errors}
    assert set(paths) == {"endpoints[1].url", "endpoints[2].urls[1]"}
    assert paths["endpoints[1].url"].line == 7
    assert "!169.254.0.0/16" in paths["endpoints[1].url"].message
    assert "matches no rule" in paths["endpoints[2].urls[1]"].message


def test_the_file_cannot_point_an_endpoint_at_this_orchd():
    text = ("server:\n  port: 8123\n  allowed_upstreams: ['127.0.0.0/8', localhost]\nendpoints:\n"
            "  - name: self\n    url: http://localhost:8123/registry/endpoints\n")
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert err.value.errors[0].path == "endpoints[0].url"
    assert "own listening address" in err.value.errors[0].message


def test_an_invalid_rule_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        parse_config("server:\n  allowed_upstreams: ['10.0.0.0/99']\n")
    assert err.value.errors[0].path == "server.allowed_upstreams"


async def test_orchd_refuses_to_start_with_a_file_pointing_at_metadata(orchd_factory):
    gw = orchd_factory(base_config(endpoint("meta", "http://169.254.169.254")), start=False)
    gw.start(wait=False)
    assert gw.proc is not None
    assert gw.proc.wait(20) == 1
    assert "endpoints[0].url" in gw.log() and "169.254.0.0/16" in gw.log()


async def test_a_name_that_resolves_to_a_denied_address_is_refused_at_connect(
        orchd_factory, upstream_factory, http):
    # A host name passes the registration check as written; where it leads is checked when
    # orchd connects (here "localhost" leads to a denied loopback address).
    up = await upstream_factory()
    gw = orchd_factory(base_config(server={"allowed_upstreams": ["!127.0.0.1", "!::1"]}))
    status, body = await _register(http, gw, "byname", f"http://localhost:{up.port}")
    assert status == 201, body
    async with http.get(f"{gw.url}/orchestrator/byname/x") as r:
        assert r.status == 502
        assert (await r.json())["reason"] == "upstream_refused"  # the rule is in the log only
    wait_until(lambda: "denied by the rule '!127.0.0.1'" in gw.log(), 5)
    # WebSocket upgrades (aiohttp's client, through orchd.resolver) and health probes (their
    # own upstream pool): the same check.
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    log_before = len(gw.log())
    async with http.get(f"{gw.url}/orchestrator/byname/ws", headers=upgrade) as r:
        assert r.status == 502
        assert "request id" in (await r.json())["detail"]
    wait_until(lambda: "denied by the rule '!127.0.0.1'" in gw.log()[log_before:], 5)
    async with http.post(f"{gw.url}/health/check/byname") as r:
        assert r.status == 200, await r.text()
    async with http.get(f"{gw.url}/health/endpoints/byname") as r:
        health = await r.json()
    assert health["consecutive_failures"] == 1, health
    assert "localhost: " in health["error_message"], health
    assert "denied by the rule '!127.0.0.1'" in health["error_message"], health
    assert up.requests == []
