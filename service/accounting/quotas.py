"""Quotas and rate limits, exact under concurrency and across processes sharing a database.

Before a request reaches the provider it reserves what it may use: one request in the
key's current UTC minute (when the key has a requests-per-minute limit), and its n images
in the current UTC day and calendar month. Each window is one statement,

    INSERT INTO quota_counters (key_id, period, period_start, used) VALUES (..., :n)
    ON CONFLICT (key_id, period, period_start)
    DO UPDATE SET used = quota_counters.used + excluded.used
    WHERE quota_counters.used + excluded.used <= :limit
    RETURNING used

which adds n only while the sum stays within the limit: PostgreSQL runs it under the row's
lock (a concurrent statement waits, then re-checks the condition on the new value), SQLite
runs one writer at a time. A request's windows are reserved in one transaction, always in
the same order (so two requests never deadlock); when one is full the transaction rolls
back and the request gets 429 naming that limit, with Retry-After until the window resets.

Afterwards `Reservation.settle(images_returned)` gives back what was not returned (a
failure gives back all n), so a request is charged for the images it actually returned.
The minute window counts requests, whatever their outcome. Day and month windows are kept
for every key, limited or not, so a quota set in the middle of a day counts that day's
images already made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.accounting.keys import ApiKey
from service.db import Database, QuotaCounterRow, utcnow
from service.errors import ResourceExhausted

MINUTE, DAY, MONTH = "minute", "day", "month"
# INSERT ... ON CONFLICT, by database
INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}

# The statements of every request, built once with bound parameters: building them per call
# (and through the ORM) cost ~2.5 ms of CPU a reservation (docs/performance.md).
COUNTERS = cast(Table, QuotaCounterRow.__table__)
PAST_MINUTES = delete(COUNTERS).where(
    COUNTERS.c.key_id == bindparam("owner"), COUNTERS.c.period == MINUTE,
    COUNTERS.c.period_start < bindparam("window_start"))
GIVE_BACK = update(COUNTERS).where(
    COUNTERS.c.key_id == bindparam("owner"), COUNTERS.c.period == bindparam("window"),
    COUNTERS.c.period_start == bindparam("window_start"),
).values(used=COUNTERS.c.used - bindparam("unused"))


def _claim_statements(insert_of: Any) -> dict[bool, Any]:
    """Add `amount` to a window's counter, creating it when missing; by whether a `limit`
    bounds it (then nothing is added, and no row returned, when it would pass the limit)."""
    insert = insert_of(COUNTERS).values(
        key_id=bindparam("owner"), period=bindparam("window"),
        period_start=bindparam("window_start"), used=bindparam("amount"))
    statements = {}
    for limited in (False, True):
        statements[limited] = insert.on_conflict_do_update(
            index_elements=[COUNTERS.c.key_id, COUNTERS.c.period, COUNTERS.c.period_start],
            set_={"used": COUNTERS.c.used + insert.excluded.used},
            where=(COUNTERS.c.used + insert.excluded.used <= bindparam("limit"))
            if limited else None,
        ).returning(COUNTERS.c.used)
    return statements


def window_start(period: str, now: datetime) -> datetime:
    """The start of the UTC window of `period` that holds `now`."""
    if period == MINUTE:
        return now.replace(second=0, microsecond=0)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == DAY else day.replace(day=1)


def window_end(period: str, start: datetime) -> datetime:
    if period == MINUTE:
        return start + timedelta(minutes=1)
    if period == DAY:
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class _Claim:
    period: str
    amount: int
    limit: int | None
    reason: str
    what: str


@dataclass
class Reservation:
    """What one request reserved: its images in the day and month windows it started in."""

    key_id: str
    images: int
    windows: tuple[tuple[str, datetime], ...]
    settled: bool = field(default=False)

    async def settle(self, session: AsyncSession, images_returned: int) -> None:
        """Give back the images that were not returned, in the caller's transaction. Only
        the first call counts."""
        if self.settled:
            return
        self.settled = True
        unused = self.images - min(max(images_returned, 0), self.images)
        if unused == 0:
            return
        await session.execute(GIVE_BACK, [
            {"owner": self.key_id, "window": period, "window_start": start, "unused": unused}
            for period, start in self.windows])


class Quotas:
    def __init__(self, database: Database) -> None:
        if database.dialect not in INSERTS:
            raise ValueError(f"quotas need SQLite or PostgreSQL, not {database.dialect}")
        self._db = database
        self._claims = _claim_statements(INSERTS[database.dialect])

    async def reserve(self, key: ApiKey, images: int) -> Reservation:
        """Reserve a request of `images` images for `key`, or raise 429 naming the full
        window. A caller cancelled meanwhile still gets its reservation (to give back)."""
        limits = key.limits
        claims = [_Claim(DAY, images, limits.daily_image_quota, "DAILY_QUOTA_EXCEEDED",
                         "daily image quota"),
                  _Claim(MONTH, images, limits.monthly_image_quota, "MONTHLY_QUOTA_EXCEEDED",
                         "monthly image quota")]
        if limits.requests_per_minute is not None:
            claims.insert(0, _Claim(MINUTE, 1, limits.requests_per_minute,
                                    "RATE_LIMIT_EXCEEDED", "requests-per-minute limit"))
        now = utcnow()

        async def claim_all(session: AsyncSession) -> None:
            for claim in claims:
                start = window_start(claim.period, now)
                if claim.period == MINUTE:  # past minutes are of no use: keep the table small
                    await session.execute(PAST_MINUTES, {"owner": key.id, "window_start": start})
                if not await self._claim(session, key.id, claim, start):
                    raise _exhausted(claim, now, start)

        await self._db.write(claim_all)
        return Reservation(key.id, images, tuple((p, window_start(p, now)) for p in (DAY, MONTH)))

    async def _claim(self, session: AsyncSession, key_id: str, claim: _Claim,
                     start: datetime) -> bool:
        if claim.limit is not None and claim.amount > claim.limit:
            return False
        limited = claim.limit is not None
        result = await session.execute(self._claims[limited], {
            "owner": key_id, "window": claim.period, "window_start": start,
            "amount": claim.amount,
            **({"limit": claim.limit} if limited else {})})
        return result.first() is not None

    async def used(self, key_ids: list[str]) -> dict[str, tuple[int, int]]:
        """Images each key used in the current UTC day and month (reserved ones included)."""
        now = utcnow()
        starts = {DAY: window_start(DAY, now), MONTH: window_start(MONTH, now)}
        async with self._db.read() as session:
            rows = await session.execute(select(
                QuotaCounterRow.key_id, QuotaCounterRow.period, QuotaCounterRow.used).where(
                QuotaCounterRow.key_id.in_(key_ids),
                ((QuotaCounterRow.period == DAY) & (QuotaCounterRow.period_start == starts[DAY]))
                | ((QuotaCounterRow.period == MONTH)
                   & (QuotaCounterRow.period_start == starts[MONTH]))))
            used = {key_id: [0, 0] for key_id in key_ids}
            for key_id, period, count in rows:
                used[key_id][0 if period == DAY else 1] = count
        return {key_id: (day, month) for key_id, (day, month) in used.items()}


def _exhausted(claim: _Claim, now: datetime, start: datetime) -> ResourceExhausted:
    retry_after = max(1, math.ceil((window_end(claim.period, start) - now).total_seconds()))
    unit = "requests" if claim.period == MINUTE else "images"
    if claim.limit is not None and claim.amount > claim.limit:
        message = (f"This request asks for {claim.amount} {unit}, more than the key's "
                   f"{claim.what} of {claim.limit}.")
    else:
        message = (f"This API key has reached its {claim.what} ({claim.limit} {unit}); "
                   f"it resets in {retry_after} s.")
    return ResourceExhausted(message, reason=claim.reason, retry_after=retry_after,
                             metadata={"limit": str(claim.limit), "window": claim.period})
