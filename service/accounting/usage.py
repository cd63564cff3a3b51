"""Usage: one record per image request that passed authentication, success or failure.

The servicer fills the call's `Meter` as the request goes (what was asked, the checked
plan, the quota reservation, what the provider answered, what was returned); the
interceptor hands it to `UsageRecorder.finish` when the call ends, whatever the outcome.
That one place settles the reservation (gives back images not returned) and writes the
record, in one transaction, and runs to the end even when the client went away.

`UsageReports` reads the records back: totals per UTC day and model, and pages of records.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import structlog
from sqlalchemy import Table, case, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.accounting.quotas import Reservation
from service.catalog import pricing
from service.db import Database, UsageAttemptRow, UsageRecordRow
from service.errors import InvalidArgument

if TYPE_CHECKING:
    from aigne.hub.v1 import image_service_pb2 as pb
    from service.catalog.models import Route
    from service.generation.validation import GenerationPlan
    from service.providers.base import GeneratedImage, Generation
    from service.routing.router import Attempt

log = structlog.get_logger("aigne.hub")

MAX_PAGE_SIZE = 1000
# Written on every request: Core statements built once (through the ORM's unit of work a
# record cost ~1 ms more CPU; README "Performance").
ADD_RECORD = insert(cast(Table, UsageRecordRow.__table__)).returning(UsageRecordRow.id)
ADD_ATTEMPT = insert(cast(Table, UsageAttemptRow.__table__))
DEFAULT_PAGE_SIZE = 100


@dataclass
class Meter:
    """What one image request asked for and used, filled in as it goes."""

    model: str = ""
    n: int = 1
    size: str | None = None
    quality: str | None = None
    response_format: str | None = None
    user: str | None = None
    prompt: str | None = None  # for the log line, when the operator asks for prompts
    route: Route | None = None  # the registry's models, once the name is known
    plan: GenerationPlan | None = None
    reservation: Reservation | None = None
    generation: Generation | None = None
    attempts: list[Attempt] = field(default_factory=list)  # upstream calls, by the router
    images: int = 0  # handed to the client: what the request is charged for
    bytes: int = 0
    # False: nothing to record for this call (a replay of an answer already recorded, or
    # a job, which records its usage when it ends).
    record: bool = True

    def requested(self, request: pb.GenerateRequest, model: str) -> None:
        """The request as it came (it may still fail validation)."""
        self.model = model
        self.n = request.n if request.HasField("n") else 1
        self.size = request.size or None
        self.quality = request.quality or None
        self.response_format = request.response_format or None
        self.user = request.user or None
        self.prompt = request.prompt

    def planned(self, plan: GenerationPlan) -> None:
        """The checked request, with the defaults of the model it named."""
        self.plan = plan
        self.n = plan.job.n
        self.size = str(plan.size) if plan.size else "auto"
        self.quality = self.quality or plan.route.requested.default_quality
        self.response_format = plan.response_format

    def returned(self, images: Iterable[GeneratedImage]) -> None:
        images = list(images)
        self.images = len(images)
        self.bytes = sum(len(image.data) for image in images)


@dataclass(frozen=True)
class CallFacts:
    """What the interceptor knows about the call a Meter belongs to."""

    key_id: str
    request_id: str
    door: str
    accepted_at: float  # UNIX time
    status: str  # OK, or the error reason
    http_status: int


class UsageRecorder:
    def __init__(self, database: Database, credits_per_usd: Decimal) -> None:
        self._db = database
        self._credits_per_usd = credits_per_usd
        self._pending: set[asyncio.Task[None]] = set()

    async def finish(self, meter: Meter, facts: CallFacts) -> None:
        """Settle the reservation and write the record. Shielded: a cancelled call (the
        client went away) still gives its quota back and leaves its record."""
        task = asyncio.create_task(self._write(meter, facts, time.time()))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for records still being written (at shutdown)."""
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def _write(self, meter: Meter, facts: CallFacts, ended_at: float) -> None:
        try:
            await self._db.write(lambda session: self.record(session, meter, facts, ended_at))
        except Exception:
            log.exception("usage record not written", request_id=facts.request_id,
                          key_id=facts.key_id)

    async def record(self, session: AsyncSession, meter: Meter, facts: CallFacts,
                     ended_at: float | None = None) -> None:
        """Settle the reservation and add the record, in the caller's transaction. A request
        is charged for the images it handed out (`meter.images`): all of them when it
        succeeded, those a stream sent before it failed, none otherwise."""
        images = meter.images
        if meter.reservation is not None:
            await meter.reservation.settle(session, images)
        values = self._values(meter, facts, images, ended_at or time.time())
        record_id = (await session.execute(ADD_RECORD, values)).scalar_one()
        if meter.attempts:
            await session.execute(ADD_ATTEMPT, [{
                "record_id": record_id, "created_at": a.at, "deployment_id": a.deployment_id,
                "credential_id": a.credential_id, "outcome": _clip(a.outcome, 64) or "",
                "upstream_ms": round(a.seconds * 1000, 1)} for a in meter.attempts])

    def _values(self, meter: Meter, facts: CallFacts, images: int,
                ended_at: float) -> dict[str, Any]:
        plan, generation = meter.plan, meter.generation
        tokens = generation.usage if generation is not None else None
        cost = pricing.Cost()
        if plan is not None and images:
            job = plan.job  # in the serving model's terms: its price, size and quality
            cost = pricing.cost(plan.route.served.price, quality=job.quality,
                                size=str(job.size) if job.size else None, images=images,
                                tokens=tokens, credits_per_usd=self._credits_per_usd)
        created = datetime.fromtimestamp(facts.accepted_at, UTC)
        served = plan.route.served if plan is not None else None
        return dict(
            request_id=_clip(facts.request_id, 128), key_id=facts.key_id, created_at=created,
            day=created.date(), door=facts.door, model=_clip(meter.model, 200),
            served_model=_clip(served.name, 200) if served else None,
            provider=_clip(served.provider, 40) if served else None,
            n=meter.n, size=_clip(meter.size, 32), quality=_clip(meter.quality, 32),
            response_format=_clip(meter.response_format, 16), user=_clip(meter.user, 256),
            status=_clip(facts.status, 64), http_status=facts.http_status, images=images,
            bytes=meter.bytes if images else 0,
            upstream_ms=round(generation.upstream_seconds * 1000, 1) if generation else 0.0,
            total_ms=round((ended_at - facts.accepted_at) * 1000, 1),
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
