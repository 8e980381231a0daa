"""InFlight: requests to an endpoint the routing table lost are cut after the grace period,
unless the endpoint comes back; others are never touched."""

from __future__ import annotations

import asyncio

from orchd.inflight import InFlight
from orchd.router import RoutingTable


def table(*names: str) -> RoutingTable:
    return RoutingTable({n: object() for n in names}, {}, 1)  # type: ignore[arg-type]


async def test_removed_endpoint_is_cut_after_grace_kept_one_is_not() -> None:
    inflight = InFlight()
    cut: list[str] = []
    with inflight.track("gone", lambda: cut.append("gone")), \
            inflight.track("kept", lambda: cut.append("kept")):
        inflight.on_swap(table("kept"), grace=0.05)
        assert cut == []
        for _ in range(100):
            if cut:
                break
            await asyncio.sleep(0.01)
        assert cut == ["gone"]
        assert inflight.count() == 2 and inflight.count("kept") == 1
    assert inflight.count() == 0


async def test_an_endpoint_back_before_the_deadline_is_not_cut() -> None:
    inflight = InFlight()
    cut: list[str] = []
    with inflight.track("flap", lambda: cut.append("flap")):
        inflight.on_swap(table(), grace=0.05)
        inflight.on_swap(table("flap"), grace=0.05)
        await asyncio.sleep(0.1)
    assert cut == []
    inflight.close()


async def test_a_cut_cancels_the_requests_task() -> None:
    inflight = InFlight()
    started = asyncio.Event()

    async def request() -> None:
        current = asyncio.current_task()
        assert current is not None
        with inflight.track("gone", current.cancel):
            started.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(request())
    await started.wait()
    inflight.on_swap(table(), grace=0)
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
