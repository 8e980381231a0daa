from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import Orchd, Upstream, echo_app

_ROOT = Path(__file__).resolve().parent.parent


def _stale_extensions() -> list[str]:
    """Modules whose compiled extension (setup.py) is older than their source: Python would
    import the extension, so the tests would run yesterday's code."""
    stale = []
    for ext in (_ROOT / "orchd").rglob("*.so"):
        py = ext.with_name(ext.name.split(".")[0] + ".py")
        if py.exists() and ext.stat().st_mtime < py.stat().st_mtime:
            stale.append(str(py.relative_to(_ROOT)))
    return stale


_STALE = _stale_extensions()
if _STALE:
    pytest.exit(f"{', '.join(_STALE)} changed after it was compiled: run `make` "
                "(or `.venv/bin/pip install -e .`) to rebuild, or `make clean`", returncode=2)


@pytest.fixture
def orchd_factory() -> Iterator[Callable[..., Orchd]]:
    """Start real orchd processes; every one is stopped and its directory removed after."""
    started: list[Orchd] = []

    def make(config: dict[str, Any] | str, start: bool = True, **kw: Any) -> Orchd:
        daemon = Orchd(config, **kw)
        started.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in started:
        daemon.cleanup()


@pytest.fixture
async def upstream_factory() -> AsyncIterator[Callable[..., Any]]:
    """Start real aiohttp upstream servers on loopback; all are stopped after the test."""
    started: list[Upstream] = []

    async def make(app: Any = None, port: int = 0) -> Upstream:
        up = Upstream(app if app is not None else echo_app())
        await up.start(port)
        started.append(up)
        return up

    yield make
    for up in started:
        await up.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
def etcd_factory() -> Iterator[Callable[[int], Any]]:
    """Start real etcd clusters (members on loopback ports); all are removed after."""
    from tests.etcd_support import EtcdCluster

    clusters: list[EtcdCluster] = []

    def make(size: int = 1) -> EtcdCluster:
        cluster = EtcdCluster(size)
        clusters.append(cluster)
        return cluster.start()

    yield make
    for cluster in clusters:
        cluster.cleanup()
