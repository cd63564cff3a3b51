"""A job's claim while this process works on it: taken, renewed every third of the lease,
given up at the end (or left to lapse when the work failed, so the job is tried again).
A claim lost to another process (this one's had lapsed) cancels the work."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

from service.db import JobRow
from service.jobs.queue import ClaimLost, JobQueue

log = structlog.get_logger("aigne.hub")


class Claims:
    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue

    async def claim(self, job_id: str) -> JobRow | None:
        try:
            return await self._queue.claim(job_id)
        except Exception:  # the database may be away for a moment: a later poll claims it
            log.exception("job not claimed", job_id=job_id)
            return None

    async def holding(self, job_id: str, work: Coroutine[Any, Any, bool]) -> None:
        """Run `work` under the job's claim, renewed meanwhile; then give the claim up,
        unless `work` handed it over (returned True) or failed (then it lapses, and the
        job is tried again after it)."""
        renewal = asyncio.create_task(self.renew(job_id, asyncio.current_task()))
        keep = False
        try:
            keep = await work
        except ClaimLost:
            log.warning("job claim lost", job_id=job_id)
        except Exception:
            log.exception("job work failed", job_id=job_id)
            keep = True
        finally:
            renewal.cancel()
            if not keep:
                await asyncio.shield(self.unclaim(job_id))

    async def renew(self, job_id: str, work: asyncio.Task[Any] | None) -> None:
        while True:
            await asyncio.sleep(self._queue.lease_seconds / 3)
            try:
                held = await self._queue.renew(job_id)
            except Exception:  # try again at the next third of the lease
                log.warning("job claim not renewed", job_id=job_id, exc_info=True)
                continue
            if not held and work is not None:
                log.warning("job claim lost: another process took the job over", job_id=job_id)
                work.cancel()
                return

    async def unclaim(self, job_id: str) -> None:
        """Give the claim up; a job cut off while running waits, queued, for a new run.
        If the database cannot be told, the claim lapses instead."""
        try:
            await self._queue.unclaim(job_id)
        except Exception:
            log.warning("job claim not given up; it lapses", job_id=job_id, exc_info=True)
