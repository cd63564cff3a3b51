"""Usage: one record per image request that passed authentication, success or failure.

A request's `Charge` (service/accounting/charge.py) learns what was asked and used as the
request goes; when the call ends, `UsageRecorder.finish` settles its reservation (gives
back images not returned) and writes its record, in one transaction, to the end even when
the client went away.

`UsageReports` reads the records back: totals per UTC day and model, and pages of records.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, cast

import structlog
from sqlalchemy import Connection, Table, case, func, insert, select

from service.accounting.charge import Charge
from service.catalog import pricing
from service.db import Database, UsageAttemptRow, UsageRecordRow
from service.db.batch import BatchWriter
from service.db.hot import hot
from service.errors import InvalidArgument

log = structlog.get_logger("aigne.hub")

MAX_PAGE_SIZE = 1000
# Written on every request: Core statements built once (through the ORM's unit of work a
# record cost ~1 ms more CPU), and hot (db/hot.py; docs/performance.md).
ADD_RECORD = hot(insert(cast(Table, UsageRecordRow.__table__)).returning(UsageRecordRow.id))
ADD_ATTEMPT = hot(insert(cast(Table, UsageAttemptRow.__table__)))
DEFAULT_PAGE_SIZE = 100


class UsageRecorder:
    """Writes each settled charge: its reservation settled and its record added, in one
    transaction, through the process's batch writer (many requests to a commit)."""

    def __init__(self, database: Database, credits_per_usd: Decimal,
                 writer: BatchWriter | None = None) -> None:
        self._writer = writer or BatchWriter(database)
        self._credits_per_usd = credits_per_usd

    async def finish(self, charge: Charge, status: str, http_status: int) -> None:
        """Settle the reservation and write the record. A cancelled call (the client went
        away) still gives its quota back and leaves its record: the write is queued before
        the first await, and the writer applies it (and flushes it at shutdown) whatever
        becomes of its caller."""
        ended_at = time.time()
        try:
            await self._writer.write(
                lambda connection: self.record(connection, charge, status, http_status,
                                               ended_at))
            if charge.reservation is not None:
                charge.reservation.settled = True
        except Exception:
            log.exception("usage record not written", request_id=charge.request_id,
                          key_id=charge.key_id)

    def record(self, connection: Connection, charge: Charge, status: str,
               http_status: int, ended_at: float | None = None) -> None:
        """Settle the reservation and add the record, in the caller's transaction. A request
        is charged for the images it handed out (`charge.images`): all of them when it
        succeeded, those a stream sent before it failed, none otherwise."""
        images = charge.images
        if charge.reservation is not None and not charge.reservation.settled:
            charge.reservation.settle(connection, images)
        values = self._values(charge, status, http_status, ended_at or time.time())
        record_id = connection.execute(ADD_RECORD, values).scalar_one()
        if charge.attempts:
            connection.execute(ADD_ATTEMPT, [{
                "record_id": record_id, "created_at": a.at, "deployment_id": a.deployment_id,
                "credential_id": a.credential_id, "outcome": _clip(a.outcome, 64) or "",
                "upstream_ms": round(a.seconds * 1000, 1)} for a in charge.attempts])

    def _values(self, charge: Charge, status: str, http_status: int,
                ended_at: float) -> dict[str, Any]:
        images, generation, billed = charge.images, charge.generation, charge.billed
        tokens = generation.usage if generation is not None else None
        cost = pricing.Cost()
        if billed is not None and images:  # in the serving model's terms
            cost = pricing.cost(billed.served.price, quality=billed.quality, size=billed.size,
                                images=images, tokens=tokens,
                                credits_per_usd=self._credits_per_usd)
        created = datetime.fromtimestamp(charge.accepted_at, UTC)
        served = billed.served if billed is not None else None
        return dict(
            request_id=_clip(charge.request_id, 128), key_id=charge.key_id,
            created_at=created, day=created.date(), door=charge.door,
            model=_clip(charge.model, 200),
            served_model=_clip(served.name, 200) if served else None,
            provider=_clip(served.provider, 40) if served else None,
            n=charge.n, size=_clip(charge.size, 32), quality=_clip(charge.quality, 32),
            response_format=_clip(charge.response_format, 16), user=_clip(charge.user, 256),
            status=_clip(status, 64), http_status=http_status, images=images,
            bytes=charge.bytes if images else 0,
            upstream_ms=round(generation.upstream_seconds * 1000, 1) if generation else 0.0,
            total_ms=round((ended_at - charge.accepted_at) * 1000, 1),
            input_text_tokens=tokens.input_text if tokens else None,
            input_image_tokens=tokens.input_image if tokens else None,
            output_text_tokens=tokens.output_text if tokens else None,
            output_image_tokens=tokens.output_image if tokens else None,
            cost_usd_nanos=cost.usd_nanos, cost_credits_nanos=cost.credits_nanos)


def _clip(value: str | None, length: int) -> str | None:
    """What the client sent may be longer than a column; the record keeps the start."""
    return value[:length] if value is not None else None


@dataclass
class UsageTotal:
    """The sums of a group of records."""

    day: date | None = None
    model: str = ""
    requests: int = 0
    failed_requests: int = 0
    images: int = 0
    bytes: int = 0
    cost: pricing.Cost = field(default_factory=pricing.Cost)

    def add(self, other: UsageTotal) -> None:
        self.requests += other.requests
        self.failed_requests += other.failed_requests
        self.images += other.images
        self.bytes += other.bytes
        self.cost = pricing.Cost(self.cost.usd_nanos + other.cost.usd_nanos,
                                 self.cost.credits_nanos + other.cost.credits_nanos)


@dataclass
class UsageSummary:
    """Totals over a range of days: per day and model, per model, and overall."""

    start: date
    end: date
    days: list[UsageTotal]
    models: list[UsageTotal]
    total: UsageTotal


class UsageReports:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def summary(self, key_id: str | None, start: date, end: date,
                      model: str | None = None) -> UsageSummary:
        """Totals of `key_id`'s records (every key's when None) from `start` to `end`."""
        r = UsageRecordRow
        query = (select(r.day, r.model, func.count(), func.sum(case((r.status != "OK", 1),
                                                                    else_=0)),
                        func.sum(r.images), func.sum(r.bytes), func.sum(r.cost_usd_nanos),
                        func.sum(r.cost_credits_nanos))
                 .where(r.day >= start, r.day <= end)
                 .group_by(r.day, r.model).order_by(r.day, r.model))
        if key_id is not None:
            query = query.where(r.key_id == key_id)
        if model:
            query = query.where(r.model == model)
        async with self._db.read() as session:
            rows = (await session.execute(query)).all()
        days = [UsageTotal(day, name, int(requests), int(failed or 0), int(images or 0),
                           int(size or 0), pricing.Cost(int(usd or 0), int(credits or 0)))
                for day, name, requests, failed, images, size, usd, credits in rows]
        models: dict[str, UsageTotal] = {}
        total = UsageTotal()
        for row in days:
            models.setdefault(row.model, UsageTotal(model=row.model)).add(row)
            total.add(row)
        return UsageSummary(start, end, days, [models[m] for m in sorted(models)], total)

    async def records(self, key_id: str | None, *, start: datetime | None = None,
                      end: datetime | None = None, model: str = "", status: str = "",
                      request_id: str = "", page_size: int = 0, page_token: str = ""
                      ) -> tuple[list[UsageRecordRow], str]:
        """A page of records, newest first, and the next page's token ("" at the end)."""
        page_size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        r = UsageRecordRow
        query = select(r).order_by(r.id.desc()).limit(page_size + 1)
        if key_id is not None:
            query = query.where(r.key_id == key_id)
        if start is not None:
            query = query.where(r.created_at >= start)
        if end is not None:
            query = query.where(r.created_at < end)
        if model:
            query = query.where(r.model == model)
        if status:
            query = query.where(r.status == status)
        if request_id:
            query = query.where(r.request_id == request_id)
        if page_token:
            query = query.where(r.id < _decode_token(page_token))
        async with self._db.read() as session:
            rows = list(await session.scalars(query))
        page = rows[:page_size]
        more = len(rows) > page_size
        return page, _encode_token(page[-1].id) if more else ""

    async def attempts(self, record_ids: list[int]) -> dict[int, list[UsageAttemptRow]]:
        """The upstream attempts of records, by record id, in the order they were made."""
        if not record_ids:
            return {}
        async with self._db.read() as session:
            rows = await session.scalars(select(UsageAttemptRow)
                                         .where(UsageAttemptRow.record_id.in_(record_ids))
                                         .order_by(UsageAttemptRow.id))
            found: dict[int, list[UsageAttemptRow]] = {}
            for row in rows:
                found.setdefault(row.record_id, []).append(row)
            return found


def _encode_token(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"u{last_id}".encode()).decode()


def _decode_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if text.startswith("u"):
            return int(text[1:])
    except ValueError:
        pass
    raise InvalidArgument("page_token is not a token this server gave out", param="page_token")
