"""The job table: every statement on `image_jobs`, each write one transaction through
`Database.write`. A job's work belongs to the process whose claim (`owner`,
`lease_until`) holds; a lapsed claim lets any process take the job over."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.accounting.quotas import Reservation
from service.db import Database, JobRow, rows_changed, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
PENDING, DELIVERED = "pending", "delivered"


class ClaimLost(Exception):
    """Another process took the job over (this one's claim had lapsed)."""


class JobQueue:
    def __init__(self, database: Database, *, instance: str, lease_seconds: float) -> None:
        self._db = database
        self.instance = instance  # this process's name in `owner`
        self._lease = timedelta(seconds=lease_seconds)

    @property
    def lease_seconds(self) -> float:
        return self._lease.total_seconds()

    async def add(self, row: JobRow) -> None:
        async def add(session: AsyncSession) -> None:
            session.add(row)

        await self._db.write(add)

    async def get(self, job_id: str) -> JobRow | None:
        async with self._db.read() as session:
            return await session.get(JobRow, job_id)

    async def runnable(self, limit: int) -> list[str]:
        """Up to `limit` jobs to run whose claim is free or lapsed, fair across keys: each
        key's jobs are ranked oldest first, those running now included, and the lowest
        ranks go first (round-robin), so one key's many jobs never keep another's waiting."""
        now = utcnow()
        ranked = select(
            JobRow.id, JobRow.created_at, JobRow.owner, JobRow.lease_until,
            func.row_number().over(partition_by=JobRow.key_id,
                                   order_by=(JobRow.created_at, JobRow.id)).label("turn"),
        ).where(JobRow.status.in_((QUEUED, RUNNING))).subquery()
        async with self._db.read() as session:
            rows = await session.scalars(
                select(ranked.c.id)
                .where(or_(ranked.c.owner.is_(None), ranked.c.lease_until < now))
                .order_by(ranked.c.turn, ranked.c.created_at).limit(limit))
            return list(rows)

    async def deliverable(self, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` ended jobs whose webhook is due and whose claim is free or lapsed,
        with their key, fair across keys as `runnable` is: each key's due webhooks are
        ranked by when they fell due, those being delivered now included, and the lowest
        ranks go first, so one key's backlog never keeps another's webhook waiting."""
        now = utcnow()
        ranked = select(
            JobRow.id, JobRow.key_id, JobRow.webhook_next_at, JobRow.owner, JobRow.lease_until,
            func.row_number().over(partition_by=JobRow.key_id,
                                   order_by=(JobRow.webhook_next_at, JobRow.id)).label("turn"),
        ).where(JobRow.status.in_((SUCCEEDED, FAILED)), JobRow.webhook_status == PENDING,
                JobRow.webhook_next_at <= now).subquery()
        async with self._db.read() as session:
            rows = await session.execute(
                select(ranked.c.id, ranked.c.key_id)
                .where(or_(ranked.c.owner.is_(None), ranked.c.lease_until < now))
                .order_by(ranked.c.turn, ranked.c.webhook_next_at).limit(limit))
            return [(job_id, key_id) for job_id, key_id in rows]

    async def claim(self, job_id: str) -> JobRow | None:
        """The job, now claimed by this process; None if another holds it or it is done."""
        now = utcnow()

        async def take(session: AsyncSession) -> JobRow | None:
            taken = await session.execute(
                update(JobRow).where(JobRow.id == job_id, _claimable(now))
                .values(owner=self.instance, lease_until=now + self._lease))
            if rows_changed(taken) != 1:
                return None
            return await session.get(JobRow, job_id)

        return await self._db.write(take)

    async def renew(self, job_id: str) -> bool:
        """Extend this process's claim; False if another process took the job over."""
        async def renew(session: AsyncSession) -> int:
            renewed = await session.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.owner == self.instance)
                .values(lease_until=utcnow() + self._lease))
            return rows_changed(renewed)

        return await self._db.write(renew) == 1

    async def unclaim(self, job_id: str) -> None:
        """Give the claim up; a job cut off while running waits, queued, for a new run."""
        async def give_up(session: AsyncSession) -> None:
            await session.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.owner == self.instance)
                .values(owner=None, lease_until=None, status=_requeued()))

        await self._db.write(give_up)

    async def started(self, row: JobRow) -> None:
        async def mark_running(session: AsyncSession) -> None:
            await session.execute(update(JobRow).where(JobRow.id == row.id).values(
                status=RUNNING, attempts=row.attempts + 1))

        await self._db.write(mark_running)

    async def end(self, row: JobRow, values: dict[str, Any],
                  settle: Callable[[AsyncSession], Awaitable[None]]) -> JobRow:
        """Write the job's outcome and, in the same transaction, `settle` its usage."""
        async def end_it(session: AsyncSession) -> JobRow:
            ended = await session.execute(update(JobRow).where(
                JobRow.id == row.id, JobRow.owner == self.instance).values(**values))
            if rows_changed(ended) != 1:
                raise ClaimLost(row.id)
            await settle(session)
            return (await session.scalars(select(JobRow).where(JobRow.id == row.id))).one()

        return await self._db.write(end_it)

    async def delivered(self, job_id: str, values: dict[str, Any]) -> None:
        """How a webhook delivery went (and when to try again)."""
        async def note_delivery(session: AsyncSession) -> None:
            await session.execute(update(JobRow).where(JobRow.id == job_id).values(**values))

        await self._db.write(note_delivery)


def _claimable(now: datetime) -> Any:
    """Jobs with work left whose claim is free or lapsed."""
    return (or_(JobRow.owner.is_(None), JobRow.lease_until < now)
            & (JobRow.status.in_((QUEUED, RUNNING))
               | ((JobRow.webhook_status == PENDING) & (JobRow.webhook_next_at <= now))))


def _requeued() -> Any:
    return case((JobRow.status == RUNNING, QUEUED), else_=JobRow.status)


def reservation_json(reservation: Reservation) -> dict[str, Any]:
    return {"images": reservation.images,
            "windows": [[period, start.isoformat()] for period, start in reservation.windows]}


def reservation_of(row: JobRow) -> Reservation | None:
    if row.reservation is None:
        return None
    return Reservation(row.key_id, int(row.reservation["images"]), tuple(
        (period, datetime.fromisoformat(start)) for period, start in row.reservation["windows"]))
