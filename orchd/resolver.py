"""Name resolution for the aiohttp client orchd keeps beside its own upstream pools (WebSocket
upgrades; health probes have a pool of their own, see orchd/health.py), with
``server.allowed_upstreams``' connect-time check.

A host name passes the registration check as written; where it leads is checked when orchd
connects (``UpstreamPolicy.check_address``). The upstream pool does that itself; for
aiohttp's connectors this resolver drops the addresses the policy refuses, and fails the
connection, naming the rule, when none is left. The port goes with the address, so that a
name leading to orchd's own listening port is refused too.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

__all__ = ("CheckedResolver",)

AddressCheck = Callable[[str, int], str | None]


class CheckedResolver(ThreadedResolver):
    def __init__(self, check_address: AddressCheck) -> None:
        """``check_address(ip, port)``: None when orchd may connect there, else why not."""
        super().__init__()
        self._check = check_address

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results: list[ResolveResult] = await super().resolve(host, port, family)
        refusals = [self._check(r["host"], r["port"]) for r in results]
        allowed = [r for r, refused in zip(results, refusals, strict=True) if refused is None]
        if not allowed and results:
            # errno 0: aiohttp and the health checker show the strerror, this reason
            raise OSError(0, f"{host}: {refusals[0]}")
        return allowed
