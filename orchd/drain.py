"""Closing a listener's connections gracefully: the linger after the listeners close, and
the drain of in-flight requests within the shutdown timeout (one process or a worker)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aiohttp import web

from orchd.aiohttp_edge import set_shutdown_timeout

__all__ = ("drain", "linger")


async def linger(runners: Sequence[web.BaseRunner], limit: float, force: asyncio.Event) -> float:
    """Keep idle keep-alive connections open for up to ``limit`` seconds after the
    listeners closed, answering with ``Connection: close``: a client that picks a pooled
    connection just then is answered instead of finding it closed under its request.
    Returns the seconds spent."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    # A connection accepted in the loop's last turn is counted by its connection_made,
    # which the loop has scheduled but not run yet: let it run, or the count says none,
    # the drain closes the server at once and that connection's request is never read.
    await asyncio.sleep(0)
    while loop.time() - started < limit and not force.is_set():
        if not any(r.server is not None and r.server.connections for r in runners):
            break
        await asyncio.sleep(0.05)
    return loop.time() - started


async def drain(runner: web.BaseRunner, timeout: float, force: asyncio.Event) -> None:
    """Close the runner's listeners, let in-flight requests finish within ``timeout``
    (``force`` set, by a second stop signal, cuts them at once), then clean the runner up."""
    # The timeout in force now (it is hot-reloadable); aiohttp reads 0 as "no limit".
    set_shutdown_timeout(runner, timeout)
    cleanup = asyncio.create_task(runner.cleanup())
    forced = asyncio.create_task(force.wait())
    await asyncio.wait({cleanup, forced}, return_when=asyncio.FIRST_COMPLETED)
    forced.cancel()
    if cleanup.done():
        await cleanup
        return
    server = runner.server
    cleanup.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cleanup
    if server is not None:
        await server.shutdown(0.001)  # cancels the handlers, closes the connections
    await runner.cleanup()
