"""orchd.state and the parts around it: the gateway state is built whole, and the change
consumer that writes it hands each reload's health settings to the checker it holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchd.changes import ChangeConsumer, Reload
from orchd.events import EventBus
from orchd.health import HealthChecker
from orchd.model import Config, ServerSettings
from orchd.registry import Registry
from orchd.state import GatewayState
from orchd.store.file import FileStore
from orchd.target import TargetPool

PARTS = ("boot", "boot_file", "config", "bus", "pool", "registry", "store", "health")


def make_state(tmp_path: Path, config_path: str | None = None) -> GatewayState:
    bus = EventBus()
    pool = TargetPool(bus)
    config = Config()
    return GatewayState(boot=ServerSettings(), boot_file=ServerSettings(), config=config,
                        config_path=config_path, bus=bus, pool=pool,
                        registry=Registry(pool, bus), store=FileStore(tmp_path / "state"),
                        health=HealthChecker(config.health_check, bus))


def test_every_part_is_given_at_construction() -> None:
    fields = {f.name: f for f in dataclasses.fields(GatewayState)}
    for name in PARTS:
        field = fields[name]
        assert field.default is dataclasses.MISSING, name
        assert field.default_factory is dataclasses.MISSING, name
        assert "None" not in str(field.type), name
    # What may be absent is a value, never a part: no file given, a healthy store, plain
    # HTTP (no certificates to serve); the guards until the upstream session they fetch
    # JWK Sets through exists (orchd.daemon, before the listeners open); and the worker
    # processes, which exist only with server.workers above 1 (orchd.workers).
    assert {n for n, f in fields.items() if "None" in str(f.type)} == {
        "config_path", "store_degraded", "tls", "guards", "workers"}


async def test_reload_hands_the_health_settings_to_the_checker(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.yaml"
    path.write_text("endpoints: []\nhealth_check:\n  interval: 7\n  healthy_threshold: 4\n")
    state = make_state(tmp_path, str(path))
    before = state.health.settings
    result = await ChangeConsumer(state).apply(Reload("test"))
    assert result["ok"], result
    assert state.health.settings is state.config.health_check
    assert (state.health.settings.interval, state.health.settings.healthy_threshold) == (7, 4)
    assert before.interval != 7
