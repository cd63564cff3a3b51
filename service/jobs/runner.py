"""Background jobs: generations kept in the database, run by any process that claims them.

A job is a row of `image_jobs`. Work on it (running the generation, then delivering the
webhook) belongs to the process whose claim (`owner`, `lease_until`) holds; the owner
renews the claim every third of AIGNE_HUB_JOB_LEASE_SECONDS while it works. So:

- a new job runs at once in the process that accepted it, if it has a free slot
  (AIGNE_HUB_JOB_CONCURRENCY); otherwise any process's poll takes it up, fairly across
  keys (round-robin: `JobQueue.runnable`), as soon as a slot comes free;
- its webhook is posted by a pool of its own (AIGNE_HUB_WEBHOOK_CONCURRENCY), the claim
  handed over with it: no job slot held, one key in half the pool at most (`WebhookShares`);
- a stopping process lets its running jobs finish for AIGNE_HUB_JOB_STOP_GRACE_SECONDS,
  then cancels them and hands them back (`queued`, unclaimed): the next start, or another
  process, runs them again from the start;
- a process that died leaves claims that lapse; the poll of any process (every
  AIGNE_HUB_JOB_POLL_SECONDS) takes those jobs over;
- a job started more than AIGNE_HUB_JOB_MAX_ATTEMPTS times fails (`job_interrupted`).

Usage: the quota is reserved when the job is accepted and kept in its row; the usage
record is written, and the reservation settled, in the same transaction that ends the
job: one record per job, charged for the images it returned, however often it ran.

A job's answer is kept like an idempotent request's (generation/answers.py), told afresh
at each read (jobs/messages.py); a failed webhook is tried again with backoff
(jobs/delivery.py) by whichever process polls when it is due. SQL: jobs/queue.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import secrets
import socket
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from opentelemetry import trace

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import job_service_pb2 as job_pb
from service.accounting.charge import Charge
from service.accounting.keys import ApiKey, KeyStore
from service.accounting.quotas import Reservation
from service.accounting.usage import UsageRecorder
from service.contract.images import image_request
from service.db import Database, JobRow, utcnow
from service.errors import HubError, Internal, NotFound
from service.generation.answers import KeptAnswer
from service.generation.context import RequestContext
from service.generation.events import NO_EVENTS, GenerationEvents
from service.generation.request import Answer, ImageRequest
from service.generation.validation import GenerationPlan
from service.jobs.claims import Claims
from service.jobs.delivery import Delivery, WebhookShares
from service.jobs.messages import JobMessages
from service.jobs.queue import (
    FAILED,
    PENDING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobQueue,
    reservation_json,
    reservation_of,
)
from service.jobs.webhooks import Webhooks
from service.providers.base import GeneratedImage
from service.store.base import ImageStore
from service.store.signing import UrlSigner

log = structlog.get_logger("aigne.hub")
_tracer = trace.get_tracer("aigne.hub")  # the no-op API's until ops/tracing sets it up



class Executor(Protocol):
    """What runs a job's generation: the pipeline's plan and make (quota reserved before)."""

    async def plan(self, context: RequestContext, request: ImageRequest,
                   refuse_streams: str | None = None) -> tuple[GenerationPlan, str | None]: ...

    async def make(self, context: RequestContext, plan: GenerationPlan, pin: str | None,
                   events: GenerationEvents, *, keep: bool
                   ) -> tuple[Answer, list[str], list[GeneratedImage]]: ...


class Jobs:
    def __init__(self, database: Database, *, keys: KeyStore,
                 usage: UsageRecorder, webhooks: Webhooks, store: ImageStore,
                 signer: UrlSigner, concurrency: int,
                 lease_seconds: float, poll_seconds: float, max_attempts: int,
                 run_seconds: float, stop_grace_seconds: float, webhook_retries: int,
                 webhook_retry_base_seconds: float, webhook_concurrency: int) -> None:
        self._queue = JobQueue(
            database, lease_seconds=lease_seconds,
            instance=f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}")
        self._claims = Claims(self._queue)
        self._keys = keys
        self._usage = usage
        self._messages = JobMessages(store, signer)
        self._delivery = Delivery(webhooks, retries=webhook_retries,
                                  base_seconds=webhook_retry_base_seconds)
        self._concurrency = concurrency
        self._poll = poll_seconds
        self._max_attempts = max_attempts
        self._run_seconds = run_seconds
        self._grace = stop_grace_seconds
        self._executor: Executor | None = None
        self._working: dict[str, asyncio.Task[None]] = {}  # the job slots: generations
        self._delivering: dict[str, asyncio.Task[None]] = {}  # the webhook pool
        self._shares = WebhookShares(webhook_concurrency, self._delivering)
        self._wake = asyncio.Event()  # a slot came free: poll now
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
                     reservation=reservation_json(reservation), attempts=0,
                     created_at=datetime.fromtimestamp(int(call.accepted_at), UTC),
                     webhook_url=webhook_url or None,
                     webhook_status=PENDING if webhook_url else None, webhook_attempts=0)
        await self._queue.add(row)
        call.log.update(job_id=row.id)
        if len(self._working) < self._concurrency:
            self._start(row.id, self._working, self._work(row.id))
        return row

    async def get(self, job_id: str, caller: ApiKey) -> JobRow:
        """The job, if `caller` made it or is an admin; else NOT_FOUND."""
        row = await self._queue.get(job_id)
        if row is None or not (row.key_id == caller.id or caller.admin):
            raise NotFound(f"No job '{job_id[:64]}' is visible to this API key.", param="id",
                           reason="JOB_NOT_FOUND")
        return row

    async def message(self, row: JobRow, *, with_images: bool = True) -> job_pb.Job:
        """The job as GetJob answers it; `with_images` False leaves b64_json answers out."""
        return await self._messages.job(row, with_images=with_images)

    # Running them.

    async def start(self, executor: Executor) -> None:
        """Take up the jobs waiting in the database, then keep polling for more."""
        self._executor = executor
        self._loop = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        """Let running jobs and deliveries finish within the grace period, then hand them
        back."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace
        # Again while any is left: a job that ends meanwhile hands its webhook over.
        while working := [*self._working.values(), *self._delivering.values()]:
            _, late = await asyncio.wait(working, timeout=max(0.0, deadline - loop.time()))
            for task in late:
                task.cancel()
            await asyncio.gather(*working, return_exceptions=True)

    async def _poll_forever(self) -> None:
        while True:
            try:
                free = self._concurrency - len(self._working)
                self._take_up(await self._queue.runnable(free) if free > 0 else [])
                free = self._shares.size - len(self._delivering)
                for job_id, key_id in await self._queue.deliverable(free) if free > 0 else []:
                    if self._shares.admit(job_id, key_id):
                        self._start(job_id, self._delivering, self._deliver_job(job_id))
            except Exception:  # the database may be away for a moment: poll again
                log.exception("job poll failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
            self._wake.clear()

    def _take_up(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            if len(self._working) < self._concurrency:
                self._start(job_id, self._working, self._work(job_id))

    def _start(self, job_id: str, tasks: dict[str, asyncio.Task[None]],
               work: Coroutine[Any, Any, None]) -> None:
        """Run `work` for the job in `tasks` (the job slots or the webhook pool), unless
        something of this process already works on it."""
        if job_id in self._working or job_id in self._delivering:
            work.close()
            return
        # Not in the context of the request that made the job: it has its own call.
        task = asyncio.create_task(work, context=contextvars.Context())
        tasks[job_id] = task
        task.add_done_callback(functools.partial(self._forget, tasks, job_id))

    def _forget(self, tasks: dict[str, asyncio.Task[None]], job_id: str,
                task: asyncio.Task[None]) -> None:
        if tasks.get(job_id) is task:
            del tasks[job_id]
            self._wake.set()

    async def _work(self, job_id: str) -> None:
        """Claim the job and run it, if it has not ended; a webhook that is then due goes to
        the webhook pool with the claim, so the job's slot is free at once."""
        row = await self._claims.claim(job_id)
        if row is not None:
            await self._claims.holding(job_id, self._run_and_hand_over(row))

    async def _deliver_job(self, job_id: str, row: JobRow | None = None) -> None:
        """Deliver the job's webhook, under the claim handed over (`row`) or a new one."""
        row = row or await self._claims.claim(job_id)
        if row is not None:
            with _tracer.start_as_current_span("job webhook",
                                               attributes={"aigne.hub.job_id": job_id}):
                await self._claims.holding(job_id, self._deliver(row))

    async def _run_and_hand_over(self, row: JobRow) -> bool:
        if row.status in (QUEUED, RUNNING):
            # one trace per job run: its steps' spans
            with _tracer.start_as_current_span("job", attributes={"aigne.hub.job_id": row.id}):
                row = await self._run(row)
        if row.webhook_status != PENDING or not self._shares.admit(row.id, row.key_id):
            return False  # nothing to deliver, or no room for its key: a poll takes it up
        self._working.pop(row.id, None)  # the slot is free now; the claim goes with the webhook
        self._wake.set()
        self._start(row.id, self._delivering, self._deliver_job(row.id, row))
        return True

    async def _run(self, row: JobRow) -> JobRow:
        assert self._executor is not None
        if row.attempts >= self._max_attempts:
            error = Internal(f"The job was interrupted {row.attempts} times (the server "
                             "stopped while it ran); it is not run again.",
                             reason="JOB_INTERRUPTED")
            return await self._end(row, self._context(row, None), error=error)
        await self._queue.started(row)
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
                        accepted_at=row.created_at.timestamp(), key=key, key_id=row.key_id,
                        ledger=self._usage,
                        model=row.model, n=row.n, reservation=reservation_of(row))
        return RequestContext(charge=charge, deadline=loop.time() + self._run_seconds)

    async def _end(self, row: JobRow, call: RequestContext, *, result: dict[str, Any] | None = None,
                   error: HubError | None = None) -> JobRow:
        """The job's outcome and its usage record, in one transaction."""
        status = FAILED if error is not None else SUCCEEDED
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "result": result,
                                  "error": _job_error(error) if error is not None else None}
        if row.webhook_url:
            values.update(webhook_status=PENDING, webhook_next_at=utcnow())
        row = await self._queue.end(row, values, lambda session: call.charge.settle_in(
            session, error.reason if error else "OK", error.http_status if error else 200))
        log.info("job ended", job_id=row.id, status=status, key_id=row.key_id,
                 images=call.charge.images, reason=error.reason if error else None)
        return row

    async def _deliver(self, row: JobRow) -> bool:
        if row.webhook_status == PENDING:
            job = await self._messages.job(row, with_images=False)
            values = await self._delivery.deliver(row, job)
            await self._queue.delivered(row.id, values)
        return False

def _job_error(error: HubError) -> dict[str, Any]:
    body = error.openai_body()["error"]
    assert isinstance(body, dict)
    return {"message": body["message"], "type": body["type"], "param": body["param"] or "",
            "code": body["code"], "http_status": error.http_status}
