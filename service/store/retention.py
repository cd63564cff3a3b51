"""Stored images are kept for the retention setting, then deleted by a periodic sweep.

Every replica sweeps (deleting is idempotent, and the first sweep of each starts at a random
moment of the interval, so they spread out); an image lives between the retention and the
retention plus one interval. On S3 the bucket's lifecycle rule deletes them too, in whole days.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime, timedelta

import structlog

from service.store.base import ImageStore

log = structlog.get_logger("aigne.hub")


class RetentionSweeper:
    def __init__(self, store: ImageStore, *, retention_seconds: int,
                 interval_seconds: float) -> None:
        self._store = store
        self._retention = timedelta(seconds=retention_seconds)
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="image retention sweep")

    async def _run(self) -> None:
        await asyncio.sleep(random.uniform(0, self._interval))
        while True:
            await self.sweep()
            await asyncio.sleep(self._interval)

    async def sweep(self) -> int:
        """Delete what is older than the retention now; answer how many images went."""
        older_than = datetime.now(UTC) - self._retention
        try:
            deleted = await self._store.sweep(older_than)
        except Exception:  # the next sweep tries again; serving goes on
            log.warning("image sweep failed", exc_info=True)
            return 0
        if deleted:
            log.info("image sweep", deleted=deleted, older_than=older_than.isoformat())
        return deleted

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
