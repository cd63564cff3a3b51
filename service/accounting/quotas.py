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
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from service.accounting.keys import ApiKey
from service.db import Database, QuotaCounterRow, QuotaReservationRow, utcnow
from service.db.batch import BatchWriter
from service.db.hot import hot
from service.errors import ResourceExhausted

MINUTE, DAY, MONTH = "minute", "day", "month"
# INSERT ... ON CONFLICT, by database
INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}

# The statements of every request, built once with bound parameters (building them per call,
# and through the ORM, cost ~2.5 ms of CPU a reservation), and hot: on SQLite they run on the
# batch's cursor (db/hot.py; docs/performance.md).
COUNTERS = cast(Table, QuotaCounterRow.__table__)
PAST_MINUTES = hot(delete(COUNTERS).where(
    COUNTERS.c.key_id == bindparam("owner"), COUNTERS.c.period == MINUTE,
    COUNTERS.c.period_start < bindparam("window_start")))
RESERVATIONS = cast(Table, QuotaReservationRow.__table__)
REMEMBER = hot(insert(RESERVATIONS).values(
    id=bindparam("reservation"), key_id=bindparam("owner"), images=bindparam("images"),
    windows=bindparam("windows"), expires_at=bindparam("expires_at")))
FORGET = hot(delete(RESERVATIONS).where(RESERVATIONS.c.id == bindparam("reservation"))
             .returning(RESERVATIONS.c.id))
LAPSED = delete(RESERVATIONS).where(RESERVATIONS.c.expires_at < bindparam("now")).returning(
    RESERVATIONS.c.key_id, RESERVATIONS.c.images, RESERVATIONS.c.windows)
GIVE_BACK = hot(update(COUNTERS).where(
    COUNTERS.c.key_id == bindparam("owner"), COUNTERS.c.period == bindparam("window"),
    COUNTERS.c.period_start == bindparam("window_start"),
).values(used=COUNTERS.c.used - bindparam("unused")))


def _claim_statements(insert_of: Any) -> dict[bool, Any]:
    """Add `amount` to a window's counter, creating it when missing; by whether a `limit`
    bounds it (then nothing is added, and no row returned, when it would pass the limit)."""
    insert = insert_of(COUNTERS).values(
        key_id=bindparam("owner"), period=bindparam("window"),
        period_start=bindparam("window_start"), used=bindparam("amount"))
    statements = {}
    for limited in (False, True):
        statements[limited] = hot(insert.on_conflict_do_update(
            index_elements=[COUNTERS.c.key_id, COUNTERS.c.period, COUNTERS.c.period_start],
            set_={"used": COUNTERS.c.used + insert.excluded.used},
            where=(COUNTERS.c.used + insert.excluded.used <= bindparam("limit"))
            if limited else None,
        ).returning(COUNTERS.c.used))
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
    """What one request reserved: its images in the day and month windows it started in.
    `id` names its row in quota_reservations (None for a job's, which its job row keeps):
    a request that dies with its process leaves that row, and the sweep gives it back."""

    key_id: str
    images: int
    windows: tuple[tuple[str, datetime], ...]
    id: str | None = None
    settled: bool = field(default=False)

    def settle(self, connection: Connection, images_returned: int) -> None:
        """Give back the images that were not returned, in the caller's transaction, and
        nothing the sweep gave back already. The caller marks it `settled` once that
        transaction committed (a batch that failed runs its writes again)."""
        if self.id is not None and connection.execute(
                FORGET, {"reservation": self.id}).first() is None:
            return  # swept: its process was taken for dead, and the images given back
        unused = self.images - min(max(images_returned, 0), self.images)
        if unused:
            give_back(connection, self.key_id, self.windows, unused)


def give_back(connection: Connection, key_id: str, windows: Iterable[tuple[str, datetime]],
              unused: int) -> None:
    connection.execute(GIVE_BACK, [
        {"owner": key_id, "window": period, "window_start": start, "unused": unused}
        for period, start in windows])


class Quotas:
    """Reservations and their sweep, written by the process's batch writer."""

    def __init__(self, database: Database, writer: BatchWriter | None = None, *,
                 lease_seconds: float = 3600.0) -> None:
        if database.dialect not in INSERTS:
            raise ValueError(f"quotas need SQLite or PostgreSQL, not {database.dialect}")
        self._db = database
        self._writer = writer or BatchWriter(database)
        self._claims = _claim_statements(INSERTS[database.dialect])
        self._lease = timedelta(seconds=lease_seconds)

    async def reserve(self, key: ApiKey, images: int, *, tracked: bool = True) -> Reservation:
        """Reserve a request of `images` images for `key`, or raise 429 naming the full
        window. A caller cancelled meanwhile still gets its reservation (to give back).
        `tracked`: swept back if not settled within the lease (False: a job's, kept in
        its row and settled by whichever process runs it)."""
        limits = key.limits
        claims = [_Claim(DAY, images, limits.daily_image_quota, "DAILY_QUOTA_EXCEEDED",
                         "daily image quota"),
                  _Claim(MONTH, images, limits.monthly_image_quota, "MONTHLY_QUOTA_EXCEEDED",
                         "monthly image quota")]
        if limits.requests_per_minute is not None:
            claims.insert(0, _Claim(MINUTE, 1, limits.requests_per_minute,
                                    "RATE_LIMIT_EXCEEDED", "requests-per-minute limit"))
        now = utcnow()
        reservation = Reservation(key.id, images,
                                  tuple((p, window_start(p, now)) for p in (DAY, MONTH)),
                                  id="res_" + secrets.token_hex(10) if tracked else None)
        return await self._writer.write(
            lambda connection: self._reserve(connection, reservation, claims, now))

    def _reserve(self, connection: Connection, reservation: Reservation, claims: list[_Claim],
                 now: datetime) -> Reservation:
        """Claim every window, in order; a full one undoes the claims made before it (the
        transaction holds other requests' writes too) and refuses."""
        claimed: list[tuple[_Claim, datetime]] = []
        for claim in claims:
            start = window_start(claim.period, now)
            if claim.period == MINUTE:  # past minutes are of no use: keep the table small
                connection.execute(PAST_MINUTES, {"owner": reservation.key_id,
                                                  "window_start": start})
            if not self._claim(connection, reservation.key_id, claim, start):
                for done, done_start in claimed:
                    give_back(connection, reservation.key_id, [(done.period, done_start)],
                              done.amount)
                raise _exhausted(claim, now, start)
            claimed.append((claim, start))
        if reservation.id is not None:
            connection.execute(REMEMBER, {
                "reservation": reservation.id, "owner": reservation.key_id,
                "images": reservation.images, "expires_at": now + self._lease,
                "windows": [[period, start.isoformat()] for period, start in reservation.windows]})
        return reservation

    def _claim(self, connection: Connection, key_id: str, claim: _Claim,
               start: datetime) -> bool:
        if claim.limit is not None and claim.amount > claim.limit:
            return False
        limited = claim.limit is not None
        result = connection.execute(self._claims[limited], {
            "owner": key_id, "window": claim.period, "window_start": start,
            "amount": claim.amount,
            **({"limit": claim.limit} if limited else {})})
        return result.first() is not None

    async def settle(self, reservation: Reservation, images_returned: int) -> None:
        """Settle `reservation` alone (a request settles with its usage record); only the
        first settlement counts."""
        if reservation.settled:
            return
        await self._writer.write(lambda connection: reservation.settle(connection,
                                                                      images_returned))
        reservation.settled = True

    async def sweep(self) -> int:
        """Give back the reservations whose lease ran out unsettled (their request died
        with its process); how many."""
        return await self._writer.write(_sweep)

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


def _sweep(connection: Connection) -> int:
    """Lapsed reservations, deleted (by one process only: DELETE ... RETURNING) and given
    back in full."""
    lapsed = connection.execute(LAPSED, {"now": utcnow()}).all()
    for key_id, images, windows in lapsed:
        give_back(connection, key_id,
                  [(period, datetime.fromisoformat(start)) for period, start in windows], images)
    return len(lapsed)
