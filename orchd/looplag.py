"""Event loop lag: how late the loop runs a callback it was asked to run on time.

A sampler task sleeps ``interval`` seconds at a time and records how much later than asked
it woke up. Work that holds the loop (many health probes, a slow handler, a blocking call)
shows up as lag; ``GET /health`` reports it under ``health_monitoring.event_loop_lag``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

__all__ = ("LoopLag",)


class LoopLag:
    """Lag samples of the last ``window`` seconds, in seconds."""

    def __init__(self, interval: float = 0.1, window: float = 60.0) -> None:
        self.interval = interval
        self._samples: deque[float] = deque(maxlen=max(1, int(window / interval)))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="orchd-loop-lag")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
        while True:
            asked = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            self._samples.append(max(0.0, time.perf_counter() - asked))

    def as_dict(self) -> dict[str, Any]:
        """Percentiles in milliseconds over the samples kept (``None`` before the first)."""
        data = sorted(self._samples)
        n = len(data)

        def pct(p: float) -> float | None:
            if not n:
                return None
            return round(data[min(n - 1, int(p * n))] * 1000, 3)

        return {"p50_ms": pct(0.50), "p99_ms": pct(0.99),
                "max_ms": round(data[-1] * 1000, 3) if n else None,
                "samples": n, "interval_ms": round(self.interval * 1000, 3)}
