"""Admission: how many generations one process runs at once, and whether it takes new ones.

Each generation holds its request, the provider's answer and our answer in memory (with
n=10 large images, tens of megabytes), so the number in flight is bounded: beyond the
limit a caller is refused at once with 503 `overloaded` and `Retry-After`, before any
work (no key lookup, no body decoding), instead of the process growing until it dies.
When the server drains for shutdown, new generations are refused with 503
`shutting_down`; the ones already admitted run to the end, and `wait_idle` says when. Those
still running when the grace period is over are cut off (`cut_off`): the interceptor
answers them 503 `shutting_down` too, rather than a bare cancellation.
"""

from __future__ import annotations

import asyncio

from service.errors import Overloaded, ShuttingDown

RETRY_AFTER_SECONDS = 1.0


class Admission:
    """Counts the calls to `methods` in flight; refuses them past `limit` or once closed."""

    def __init__(self, limit: int, methods: frozenset[str]) -> None:
        self.limit = limit
        self.methods = methods
        self.in_flight = 0
        self.closed = False
        self.cutting_off = False
        self._running: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self, method: str) -> bool:
        """Admit a call: True if it was counted (call `leave` after), False if it is not a
        generation. Raises Overloaded or ShuttingDown instead of admitting."""
        if method not in self.methods:
            return False
        if self.closed:
            raise ShuttingDown("This server is shutting down; send the request again "
                               "(another replica will take it).",
                               retry_after=RETRY_AFTER_SECONDS)
        if self.in_flight >= self.limit:
            raise Overloaded(f"This server is generating as many images as it can at once "
                             f"({self.limit} requests); try again shortly.",
                             retry_after=RETRY_AFTER_SECONDS)
        self.in_flight += 1
        self._idle.clear()
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        task = asyncio.current_task()
        if task is not None:
            self._running.discard(task)
        if self.in_flight == 0:
            self._idle.set()

    def close(self) -> None:
        """Take no new generations from now on."""
        self.closed = True

    def cut_off(self) -> None:
        """Cancel the generations still running (the grace period is over)."""
        self.cutting_off = True
        for task in self._running:
            task.cancel()

    async def wait_idle(self) -> None:
        """Return when no generation is in flight."""
        await self._idle.wait()
