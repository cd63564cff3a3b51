"""Sweeps that keep the books true, each on its own period, in every process (each sweep is
safe to run from several at once): lapsed quota reservations of requests that died with
their process, and idempotency keys past their TTL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("aigne.hub")


@dataclass(frozen=True)
class Sweep:
    name: str
    every_seconds: float
    run: Callable[[], Awaitable[int]]  # how many things it swept


class Housekeeping:
    def __init__(self, sweeps: list[Sweep]) -> None:
        self._sweeps = sweeps
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._every(sweep)) for sweep in self._sweeps]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _every(self, sweep: Sweep) -> None:
        while True:
            try:
                swept = await sweep.run()
                if swept:
                    log.info("swept", sweep=sweep.name, count=swept)
            except Exception:  # the database may be away for a moment: sweep next time
                log.warning("sweep failed", sweep=sweep.name, exc_info=True)
            await asyncio.sleep(sweep.every_seconds)
