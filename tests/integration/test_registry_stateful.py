"""A Hypothesis state machine against a real orchd: register, update, delete and restart in
random order; every answer, and the registry after every step, matches a plain dict model."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.support import Orchd, base_config

NAMES = st.sampled_from(["a", "b", "c", "d-1", "E_2"])
URLS = st.sampled_from([f"http://127.0.0.1:{p}/base" for p in (9, 10, 11)]
                       + ["http://localhost:12", "http://169.254.169.254"])


def call(gw: Orchd, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{gw.url}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def allowed(url: str) -> bool:
    return "169.254." not in url


class Registry(RuleBasedStateMachine):
    gw: Orchd

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, str] = {}

    @initialize()
    def clean(self) -> None:
        status, body = call(self.gw, "GET", "/registry/endpoints?limit=10000")
        assert status == 200
        for ep in body["endpoints"]:
            if ep["source"] == "api":
                assert call(self.gw, "DELETE", f"/registry/endpoints/{ep['name']}")[0] == 200

    @rule(name=NAMES, url=URLS)
    def register(self, name: str, url: str) -> None:
        status, body = call(self.gw, "POST", "/registry/endpoints",
                            {"config": {"name": name, "url": url}})
        if not allowed(url):
            assert status == 422, body
        elif name in self.model:
            assert status == 409, body
        else:
            assert status == 201, body
            assert body["endpoint_id"] == name
            self.model[name] = url

    @rule(name=NAMES, url=URLS)
    def update(self, name: str, url: str) -> None:
        status, body = call(self.gw, "PUT", f"/registry/endpoints/{name}",
                            {"config": {"name": name, "url": url}})
        if not allowed(url):
            assert status == 422, body
        elif name not in self.model:
            assert status == 404, body
        else:
            assert status == 200, body
            self.model[name] = url

    @rule(name=NAMES)
    def delete(self, name: str) -> None:
        status, body = call(self.gw, "DELETE", f"/registry/endpoints/{name}")
        assert status == (200 if name in self.model else 404), body
        self.model.pop(name, None)

    @rule()
    def restart(self) -> None:
        assert self.gw.stop() == 0
        self.gw.start()

    @invariant()
    def registry_matches_the_model(self) -> None:
        status, body = call(self.gw, "GET", "/registry/endpoints?limit=10000")
        assert status == 200
        seen = {ep["name"]: ep["url"] for ep in body["endpoints"] if ep["source"] == "api"}
        assert seen == self.model
        for name, url in self.model.items():
            status, one = call(self.gw, "GET", f"/registry/endpoints/{name}")
            assert status == 200 and one["url"] == url


@pytest.fixture
def gateway(orchd_factory):
    return orchd_factory(base_config())


def test_registry_api_matches_a_model(gateway: Orchd) -> None:
    Registry.gw = gateway
    Registry.TestCase.settings = settings(max_examples=4, stateful_step_count=10,
                                          deadline=None,
                                          suppress_health_check=list(HealthCheck))
    Registry.TestCase().runTest()
