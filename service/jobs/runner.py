"""Background jobs: generations kept in the database, run by whichever server process
claims them, and their webhooks.

A job is a row of `image_jobs`. Work on it (running the generation, then delivering the
webhook) belongs to the process whose claim (`owner`, `lease_until`) holds; the owner
renews the claim every third of AIGNE_HUB_JOB_LEASE_SECONDS while it works. So:

- a new job runs at once in the process that accepted it, if it has a free slot
  (AIGNE_HUB_JOB_CONCURRENCY); otherwise any process's poll takes it up;
- a stopping process lets its running jobs finish for AIGNE_HUB_JOB_STOP_GRACE_SECONDS,
  then cancels them and hands them back (`queued`, unclaimed): the next start, or another
  process, runs them again from the start;
- a process that died leaves claims that lapse; the poll of any process (every
  AIGNE_HUB_JOB_POLL_SECONDS) takes those jobs over;
- a job started more than AIGNE_HUB_JOB_MAX_ATTEMPTS times fails (`job_interrupted`).

Usage: the quota is reserved when the job is accepted and kept in its row; the usage
record is written, and the reservation settled, in the same transaction that ends the
job: one record per job, charged for the images it returned, however often it ran.

A job's answer is kept like an idempotent request's (service/generation/answers.py): images by store
name, told afresh at each read. A webhook that fails is tried again with backoff (the
base delay doubling, at most an hour) by whichever process polls when it is due.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import secrets
import socket
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
import structlog
from sqlalchemy import case, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import job_service_pb2 as job_pb
from service.accounting.charge import Charge
from service.accounting.idempotency import Idempotency
from service.accounting.keys import ApiKey, KeyStore
from service.accounting.quotas import Reservation
from service.accounting.usage import UsageRecorder
from service.contract import json_codec
from service.contract.images import generate_response, image_request
from service.db import Database, JobRow, utcnow
from service.errors import HubError, Internal, NotFound
from service.generation import answers
from service.generation.answers import KeptAnswer
from service.generation.context import RequestContext
from service.generation.events import NO_EVENTS, GenerationEvents
from service.generation.request import Answer, ImageRequest
from service.generation.validation import GenerationPlan
from service.jobs.webhooks import Webhooks
from service.providers.base import GeneratedImage
from service.store.base import ImageStore
from service.store.signing import UrlSigner

log = structlog.get_logger("aigne.hub")

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
PENDING, DELIVERED = "pending", "delivered"
MAX_WEBHOOK_DELAY_SECONDS = 3600.0
SWEEP_SECONDS = 600.0


class ClaimLost(Exception):
    """Another process took the job over (this one's claim had lapsed)."""


class Executor(Protocol):
    """What runs a job's generation: the pipeline's plan and make, without quota or key
    checks of their own (the job reserved its quota when it was accepted)."""

    async def plan(self, context: RequestContext, request: ImageRequest,
                   refuse_streams: str | None = None) -> tuple[GenerationPlan, str | None]: ...

    async def make(self, context: RequestContext, plan: GenerationPlan, pin: str | None,
                   events: GenerationEvents, *, keep: bool
                   ) -> tuple[Answer, list[str], list[GeneratedImage]]: ...


class Jobs:
    def __init__(self, database: Database, *, keys: KeyStore,
                 usage: UsageRecorder, webhooks: Webhooks, store: ImageStore,
                 signer: UrlSigner, idempotency: Idempotency, concurrency: int,
                 lease_seconds: float, poll_seconds: float, max_attempts: int,
                 run_seconds: float, stop_grace_seconds: float, webhook_retries: int,
                 webhook_retry_base_seconds: float) -> None:
        self._db = database
        self._keys = keys
        self._usage = usage
        self._webhooks = webhooks
        self._store = store
        self._signer = signer
        self._idempotency = idempotency
        self._concurrency = concurrency
        self._lease = timedelta(seconds=lease_seconds)
        self._poll = poll_seconds
        self._max_attempts = max_attempts
        self._run_seconds = run_seconds
        self._grace = stop_grace_seconds
        self._webhook_retries = webhook_retries
        self._webhook_base = webhook_retry_base_seconds
        self.instance = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._executor: Executor | None = None
        self._working: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None

    # Accepting and reading jobs.

    async def create(self, call: RequestContext, request: pb.GenerateRequest, webhook_url: str,
                     reservation: Reservation) -> JobRow:
        """Keep a checked, reserved job, and start it here if a slot is free."""
        charge = call.charge
        row = JobRow(id="job_" + secrets.token_urlsafe(18), key_id=call.caller.id,
                     request_id=call.request_id, door=call.door, status=QUEUED,
                     model=charge.model, n=charge.n,
                     request=request.SerializeToString(deterministic=True),
                     reservation=_reservation_json(reservation), attempts=0,
                     created_at=datetime.fromtimestamp(int(call.accepted_at), UTC),
                     webhook_url=webhook_url or None,
                     webhook_status=PENDING if webhook_url else None, webhook_attempts=0)

        async def add(session: AsyncSession) -> None:
            session.add(row)

        await self._db.write(add)
        call.log.update(job_id=row.id)
        self._take_up([row.id])
        return row

    async def get(self, job_id: str, caller: ApiKey) -> JobRow:
        """The job, if `caller` made it or is an admin; else NOT_FOUND."""
        async with self._db.read() as session:
            row = await session.get(JobRow, job_id)
        if row is None or not (row.key_id == caller.id or caller.admin):
            raise NotFound(f"No job '{job_id[:64]}' is visible to this API key.", param="id",
                           reason="JOB_NOT_FOUND")
        return row

    async def message(self, row: JobRow, *, with_images: bool = True) -> job_pb.Job:
        """The job as GetJob answers it; `with_images` False leaves b64_json answers out."""
        job = job_pb.Job(id=row.id, status=row.status, created=int(row.created_at.timestamp()),
                         model=row.model, n=row.n, webhook_url=row.webhook_url,
                         webhook_status=row.webhook_status)
        if row.finished_at is not None:
            job.finished = int(row.finished_at.timestamp())
        if row.status == SUCCEEDED and row.result is not None:
            kept = KeptAnswer.from_json(row.result)
            if with_images or kept.response_format == "url":
                job.result.CopyFrom(await self._told(row, kept))
        if row.error is not None:
            job.error.CopyFrom(job_pb.JobError(**row.error))
        return job

    async def _told(self, row: JobRow, kept: KeptAnswer) -> pb.GenerateResponse:
        try:
            return generate_response(await answers.told(kept, self._store, self._signer))
        except NotFound:
            raise NotFound(f"The images of job '{row.id}' are no longer kept: stored images "
                           "are deleted after the image retention period.", param="id",
                           reason="JOB_IMAGES_EXPIRED") from None

    # Running them.

    async def start(self, executor: Executor) -> None:
        """Take up the jobs waiting in the database, then keep polling for more."""
        self._executor = executor
        self._loop = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        """Let running jobs finish within the grace period, then hand them back."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        working = list(self._working.values())
        if working:
            _, late = await asyncio.wait(working, timeout=self._grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*working, return_exceptions=True)

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            try:
                self._take_up(await self._claimable())
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + SWEEP_SECONDS
                    await self._idempotency.sweep()
            except Exception:  # the database may be away for a moment: poll again
                log.exception("job poll failed")
            await asyncio.sleep(self._poll)

    async def _claimable(self) -> list[str]:
        free = self._concurrency - len(self._working)
        if free <= 0:
            return []
        now = utcnow()
        async with self._db.read() as session:
            rows = await session.scalars(
                select(JobRow.id).where(_claimable(now)).order_by(JobRow.created_at)
                .limit(free))
            return [job_id for job_id in rows if job_id not in self._working]

    def _take_up(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            if job_id not in self._working and len(self._working) < self._concurrency:
                # Not in the context of the request that made the job: it has its own call.
                task = asyncio.create_task(self._work(job_id), context=contextvars.Context())
                self._working[job_id] = task
                task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for job_id, working in list(self._working.items()):
            if working is task:
                del self._working[job_id]

    async def _work(self, job_id: str) -> None:
        """Claim the job, run it if it has not ended, deliver its webhook if one is due."""
        try:
            row = await self._claim(job_id)
        except Exception:  # the database may be away for a moment: a later poll claims it
            log.exception("job not claimed", job_id=job_id)
            return
        if row is None:
            return
        renewal = asyncio.create_task(self._renew(job_id, asyncio.current_task()))
        lapse = False
        try:
            if row.status in (QUEUED, RUNNING):
                row = await self._run(row)
            if row.webhook_status == PENDING:
                await self._deliver(row)
        except ClaimLost:
            log.warning("job claim lost", job_id=job_id)
        except Exception:  # the claim is left to lapse: the job is tried again after it
            log.exception("job work failed", job_id=job_id)
            lapse = True
        finally:
            renewal.cancel()
            if not lapse:
                await asyncio.shield(self._unclaim(job_id))

    async def _claim(self, job_id: str) -> JobRow | None:
        now = utcnow()

        async def take(session: AsyncSession) -> JobRow | None:
            taken = await session.execute(
                update(JobRow).where(JobRow.id == job_id, _claimable(now))
                .values(owner=self.instance, lease_until=now + self._lease))
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return await session.get(JobRow, job_id)

        return await self._db.write(take)

    async def _renew(self, job_id: str, work: asyncio.Task[Any] | None) -> None:
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                async def renew(session: AsyncSession) -> int:
                    renewed = await session.execute(
                        update(JobRow).where(JobRow.id == job_id, JobRow.owner == self.instance)
                        .values(lease_until=utcnow() + self._lease))
                    return int(renewed.rowcount or 0)  # type: ignore[attr-defined]

                renewed = await self._db.write(renew)
            except Exception:  # try again at the next third of the lease
                log.warning("job claim not renewed", job_id=job_id, exc_info=True)
                continue
            if renewed != 1 and work is not None:
                log.warning("job claim lost: another process took the job over", job_id=job_id)
                work.cancel()
                return

    async def _unclaim(self, job_id: str) -> None:
        """Give the claim up; a job cut off while running waits, queued, for a new run.
        If the database cannot be told, the claim lapses instead."""
        try:
            async def give_up(session: AsyncSession) -> None:
                await session.execute(
                    update(JobRow).where(JobRow.id == job_id, JobRow.owner == self.instance)
                    .values(owner=None, lease_until=None, status=_requeued()))

            await self._db.write(give_up)
        except Exception:
            log.warning("job claim not given up; it lapses", job_id=job_id, exc_info=True)

    async def _run(self, row: JobRow) -> JobRow:
        assert self._executor is not None
        if row.attempts >= self._max_attempts:
            error = Internal(f"The job was interrupted {row.attempts} times (the server "
                             "stopped while it ran); it is not run again.",
                             reason="JOB_INTERRUPTED")
            return await self._end(row, self._context(row, None), error=error)

        async def mark_running(session: AsyncSession) -> None:
            await session.execute(update(JobRow).where(JobRow.id == row.id).values(
                status=RUNNING, attempts=row.attempts + 1))

        await self._db.write(mark_running)
        call = self._context(row, await self._keys.get(row.key_id))
        log.info("job started", job_id=row.id, attempt=row.attempts + 1)
        try:
            request = image_request(pb.GenerateRequest.FromString(row.request))
            plan, pin = await self._executor.plan(call, request)
            response, names, images = await self._executor.make(call, plan, pin, NO_EVENTS,
                                                                keep=True)
        except HubError as error:
            return await self._end(row, call, error=error)
        except Exception:
            log.exception("job failed", job_id=row.id)
            return await self._end(row, call, error=Internal(
                f"Something went wrong on our side (job {row.id})."))
        call.charge.returned(images)
        kept = KeptAnswer.of(response, names, plan.response_format)
        return await self._end(row, call, result=kept.to_json())

    def _context(self, row: JobRow, key: ApiKey | None) -> RequestContext:
        """The job's run: its key, request id and door, its reservation, a fresh time
        budget; it records its usage when the job ends (`_end`)."""
        loop = asyncio.get_running_loop()
        charge = Charge(request_id=row.request_id, door=row.door,
                        accepted_at=row.created_at.timestamp(), key=key, ledger=self._usage,
                        model=row.model, n=row.n, reservation=_reservation_of(row))
        return RequestContext(charge=charge, deadline=loop.time() + self._run_seconds)

    async def _end(self, row: JobRow, call: RequestContext, *, result: dict[str, Any] | None = None,
                   error: HubError | None = None) -> JobRow:
        """The job's outcome and its usage record, in one transaction."""
        status = FAILED if error is not None else SUCCEEDED
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "result": result,
                                  "error": _job_error(error) if error is not None else None}
        if row.webhook_url:
            values.update(webhook_status=PENDING, webhook_next_at=utcnow())

        async def end_it(session: AsyncSession) -> JobRow:
            ended = await session.execute(update(JobRow).where(
                JobRow.id == row.id, JobRow.owner == self.instance).values(**values))
            if ended.rowcount != 1:  # type: ignore[attr-defined]
                raise ClaimLost(row.id)
            await call.charge.settle_in(session, error.reason if error else "OK",
                                        error.http_status if error else 200)
            return (await session.scalars(select(JobRow).where(JobRow.id == row.id))).one()

        row = await self._db.write(end_it)
        log.info("job ended", job_id=row.id, status=status, key_id=row.key_id,
                 images=call.charge.images, reason=error.reason if error else None)
        return row

    async def _deliver(self, row: JobRow) -> None:
        job = await self.message(row, with_images=False)
        body = orjson.dumps({"type": f"image.job.{row.status}",
                             "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
                             "data": {"job": json_codec.to_json_value(job)}})
        failure = await self._webhooks.deliver(row.webhook_url or "", row.key_id,
                                               f"msg_{row.id}", body)
        attempts = row.webhook_attempts + 1
        values: dict[str, Any] = {"webhook_attempts": attempts, "webhook_error": failure}
        if failure is None:
            values["webhook_status"] = DELIVERED
        elif attempts > self._webhook_retries:
            values["webhook_status"] = FAILED
        else:
            delay = min(self._webhook_base * 2 ** (attempts - 1), MAX_WEBHOOK_DELAY_SECONDS)
            values["webhook_next_at"] = utcnow() + timedelta(seconds=delay)

        async def note_delivery(session: AsyncSession) -> None:
            await session.execute(update(JobRow).where(JobRow.id == row.id).values(**values))

        await self._db.write(note_delivery)
        log.info("webhook", job_id=row.id, attempt=attempts, delivered=failure is None,
                 error=failure)


def _claimable(now: datetime) -> Any:
    """Jobs with work left whose claim is free or lapsed."""
    return (or_(JobRow.owner.is_(None), JobRow.lease_until < now)
            & (JobRow.status.in_((QUEUED, RUNNING))
               | ((JobRow.webhook_status == PENDING) & (JobRow.webhook_next_at <= now))))


def _requeued() -> Any:
    return case((JobRow.status == RUNNING, QUEUED), else_=JobRow.status)


def _job_error(error: HubError) -> dict[str, Any]:
    body = error.openai_body()["error"]
    assert isinstance(body, dict)
    return {"message": body["message"], "type": body["type"], "param": body["param"] or "",
            "code": body["code"], "http_status": error.http_status}


def _reservation_json(reservation: Reservation) -> dict[str, Any]:
    return {"images": reservation.images,
            "windows": [[period, start.isoformat()] for period, start in reservation.windows]}


def _reservation_of(row: JobRow) -> Reservation | None:
    if row.reservation is None:
        return None
    return Reservation(row.key_id, int(row.reservation["images"]), tuple(
        (period, datetime.fromisoformat(start)) for period, start in row.reservation["windows"]))
