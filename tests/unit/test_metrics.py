"""orchd.metrics and orchd.traffic on real objects: a real bus, registry and aiohttp request,
no daemon."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from orchd.accesslog import access_logger_class
from orchd.cli import JsonFormatter, RedactingFilter
from orchd.events import EventBus
from orchd.health import HealthChecker
from orchd.metrics import Metrics
from orchd.model import Config, EndpointSpec, ServerSettings
from orchd.registry import Registry
from orchd.state import GatewayState
from orchd.store.file import FileStore
from orchd.target import TargetPool
from orchd.traffic import LATENCY_BUCKETS, RequestHook, Window
from tests.support import ROOT


def make_metrics(tmp_path: Path) -> Metrics:
    bus = EventBus()
    pool = TargetPool(bus)
    registry = Registry(pool, bus)
    spec = EndpointSpec.from_dict({"name": "svc", "url": "http://127.0.0.1:9/api"})
    registry.set_config_endpoints((spec,), registry.breaker_defaults)
    config = Config()
    state = GatewayState(boot=ServerSettings(), boot_file=ServerSettings(), config=config,
                         config_path=None, bus=bus, pool=pool, registry=registry,
                         store=FileStore(tmp_path),
                         health=HealthChecker(config.health_check, bus))
    return Metrics(state)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


# The proxy keys request storage by plain strings, as these tests do.
pytestmark = pytest.mark.filterwarnings("ignore:It is recommended to use web.RequestKey")


def request(path: str = "/orchestrator/svc/x", method: str = "GET", **state: object):
    req = make_mocked_request(method, path)
    for key, value in state.items():
        req[key] = value
    return req


def test_window_rates_quantiles_and_bounds() -> None:
    w = Window()
    now = time.time()
    for i in range(100):  # 100 requests over the last 5 s, 1 to 100 ms, every tenth fails
        w.add(now - 5 + i * 0.05, (i + 1) / 1000, i % 10 == 0)
    w.add(now - 120, 9.9, True)  # too old for any figure
    s = w.summary(now)
    assert s["window_requests"] == 100
    assert s["requests_per_second"] == 10.0  # 100 in the 10 s rate window
    assert s["p50_ms"] == 51.0 and s["p99_ms"] == 100.0
    assert s["error_rate"] == 0.1
    assert s["total_requests"] == 101
    assert Window().summary(now)["error_rate"] is None


def test_window_ring_wraps_without_growing() -> None:
    w = Window()
    now = time.time()
    for i in range(10_000):  # 10,000 requests in the last second: the ring keeps 4096
        w.add(now - 1 + i / 10_000, 0.001, False)
    s = w.summary(now)
    assert s["window_requests"] == 4096
    assert len(w.times) == 4096
    assert 9_000 < s["requests_per_second"] < 11_000  # measured over what the ring spans


def finished(metrics: Metrics, req: web.Request, status: int, duration: float) -> None:
    """A finished request, as aiohttp hands it to the access-log hook."""
    hook = access_logger_class(RequestHook(metrics.traffic, None))(logging.getLogger("x"), "")
    hook.log(req, web.Response(status=status), duration)


def test_requests_are_counted_and_forgotten(tmp_path: Path) -> None:
    m = make_metrics(tmp_path)
    finished(m, request(endpoint="svc", target="http://127.0.0.1:9/api"), 200, 0.004)
    finished(m, request(endpoint="svc", target="http://127.0.0.1:9/api",
                        upstream_error="timeout"), 504, 2.0)
    finished(m, request(method="BREW", endpoint="svc", target="http://127.0.0.1:9/api"), 200,
             0.1)
    finished(m, request("/orchestrator/nope/x"), 404, 0.001)
    finished(m, request("/health/status"), 200, 0.001)  # not proxy traffic
    got = samples(m)
    assert got[("orchd_requests_total", (("code", "2xx"), ("endpoint", "svc"),
                                         ("method", "GET")))] == 1
    assert got[("orchd_requests_total", (("code", "5xx"), ("endpoint", "svc"),
                                         ("method", "GET")))] == 1
    assert got[("orchd_requests_total", (("code", "2xx"), ("endpoint", "svc"),
                                         ("method", "OTHER")))] == 1
    assert got[("orchd_requests_total", (("code", "4xx"), ("endpoint", "_unmatched"),
                                         ("method", "GET")))] == 1
    assert sum(v for k, v in got.items() if k[0] == "orchd_requests_total") == 4
    assert got[("orchd_upstream_errors_total", (("endpoint", "svc"), ("kind", "timeout")))] == 1
    buckets = {dict(k[1])["le"]: v for k, v in got.items()
               if k[0] == "orchd_upstream_latency_seconds_bucket"}
    assert buckets["0.005"] == 1 and buckets["2.5"] == 3 and buckets["+Inf"] == 3
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    assert abs(got[("orchd_upstream_latency_seconds_sum", (("endpoint", "svc"),))] - 2.104) < 1e-9
    last = m.stats()["endpoints"]["svc"]["last_errors"]
    assert [e["kind"] for e in last] == ["timeout"]

    m.state.bus.publish("registry", action="removed", endpoint_id="svc", source="api")
    assert not any(dict(k[1]).get("endpoint") == "svc" and k[0].startswith(
        ("orchd_requests", "orchd_upstream")) for k in samples(m))


def test_access_hook_feeds_metrics_even_with_log_lines_off(tmp_path: Path) -> None:
    m = make_metrics(tmp_path)
    hook = access_logger_class(RequestHook(m.traffic, None))(logging.getLogger("orchd.x"), "")
    assert hook.enabled
    started = time.perf_counter() - 0.25
    hook.log(request(endpoint="svc", target="http://127.0.0.1:9/api", started=started),
             web.Response(status=201), 0.001)
    got = samples(m)
    assert got[("orchd_requests_total", (("code", "2xx"), ("endpoint", "svc"),
                                         ("method", "GET")))] == 1
    # The duration comes from the proxy's clock, not the loop's (0.001 s here).
    assert got[("orchd_upstream_latency_seconds_sum", (("endpoint", "svc"),))] >= 0.25
    assert not access_logger_class(RequestHook(None, None))(logging.getLogger("x"), "").enabled


def test_redacting_filter_and_json_formatter() -> None:
    f = RedactingFilter(["adm1n-T0ken-xyz"])
    cases = {
        "token adm1n-T0ken-xyz seen": "adm1n-T0ken-xyz",
        "Authorization: Bearer abc.def-123": "abc.def-123",
        "cookie=sessionvalue; path=/": "sessionvalue",
        "X-API-Key: k3y-v4lue": "k3y-v4lue",
        "GET http://user:hunter2@host/x": "hunter2",
        "url?api_key=qq77&x=1": "qq77",
    }
    for message, secret in cases.items():
        record = logging.LogRecord("orchd.x", logging.INFO, __file__, 1, "%s", (message,), None)
        assert f.filter(record)
        assert secret not in record.getMessage(), message
        assert "[REDACTED]" in record.getMessage()
    plain = logging.LogRecord("orchd.x", logging.INFO, __file__, 1, "the admin token is wrong",
                              None, None)
    f.filter(plain)
    assert plain.getMessage() == "the admin token is wrong"

    record = logging.LogRecord("orchd.access", logging.INFO, __file__, 1, "line", None, None)
    record.access = {"status": 200, "endpoint": "svc"}
    out = json.loads(JsonFormatter().format(record))
    assert out["status"] == 200 and out["endpoint"] == "svc" and out["message"] == "line"
    assert out["time"].endswith("Z") and out["logger"] == "orchd.access"


def test_access_lines_still_batched_at_exit_are_written(tmp_path: Path) -> None:
    # A line waits up to 50 ms in the batch; a process that ends before that writes it.
    log = tmp_path / "orchd.log"
    code = f"""
import asyncio
from orchd.cli import configure_logging
from orchd.log import access_logger
from orchd.traffic import RequestHook

configure_logging("INFO", "text", {str(log)!r})

async def main():
    RequestHook(None, access_logger).finished("127.0.0.1", "GET", "/orchestrator/svc/x", 200,
                                              5, 0.001, "svc", None, "rid-at-exit", None)

asyncio.run(main())
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
    assert "rid=rid-at-exit" in log.read_text()
