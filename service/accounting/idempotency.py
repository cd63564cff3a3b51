"""Idempotent retries: an `Idempotency-Key` (gRPC metadata `idempotency-key`) makes a retry
within the TTL (24 h) get the first attempt's answer, and be charged once.

The state is a row per (API key, idempotency key) in the database, so every server process
on it agrees:

    claim    INSERT the row as `running`, owned by this request until its lease ends
             (its deadline plus a margin); the insert that wins runs the request
    retry    finds the row: another request body (fingerprint) → 409 IDEMPOTENCY_KEY_REUSED;
             `done` → the kept answer is replayed; `running` → it waits (polling the row,
             woken at once by an attempt in the same process) until the first attempt is
             done, or gave the key up, or its lease lapsed (its process died): then it
             claims the key itself
    done     the owner keeps its answer in the row (images by store name, see answers.py)
    failure  the owner deletes the row: a failure is not replayed, a retry runs afresh

A request without a key gets `NO_KEY`, a claim that holds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import structlog
from sqlalchemy import Connection, Table, delete, select, update

from service.accounting.quotas import INSERTS
from service.db import Database, IdempotencyKeyRow, utcnow
from service.db.batch import BatchWriter
from service.errors import Conflict, InvalidArgument

log = structlog.get_logger("aigne.hub")

KEYS = cast(Table, IdempotencyKeyRow.__table__)

MAX_KEY_LENGTH = 255
LEASE_MARGIN_SECONDS = 5.0
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 1.0
REPLAYED_HEADER = ("idempotent-replayed", "true")


@dataclass
class Claim:
    """What a request holds for its idempotency key: the kept answer to replay, or the
    right to run (and then `complete`)."""

    key_id: str = ""
    idempotency_key: str = ""
    request_id: str = ""
    answer: dict[str, Any] | None = None  # set: replay this
    owner: Idempotency | None = None

    @property
    def held(self) -> bool:
        """Whether this request runs under a key (its answer must be kept)."""
        return self.owner is not None and self.answer is None

    async def complete(self, answer: dict[str, Any]) -> None:
        """Keep `answer` for the retries."""
        if self.held:
            assert self.owner is not None
            await self.owner._complete(self, answer)

    async def release(self) -> None:
        """Give the key up (the request failed): a retry runs afresh."""
        if self.held:
            assert self.owner is not None
            await asyncio.shield(self.owner._release(self))


NO_KEY = Claim()


class Idempotency:
    """Claims, answers and releases of idempotency keys, written by the process's batch
    writer (each a few statements in a transaction shared with other requests' writes)."""

    def __init__(self, database: Database, *, ttl_seconds: float,
                 writer: BatchWriter | None = None) -> None:
        self._writer = writer or BatchWriter(database)
        self._insert = INSERTS[database.dialect]
        self._ttl = timedelta(seconds=ttl_seconds)
        self._waiters: dict[tuple[str, str], asyncio.Event] = {}

    async def claim(self, key_id: str, idempotency_key: str | None, operation: str,
                    print_: str, request_id: str, seconds_left: float) -> Claim:
        """The claim of a request with `idempotency_key` (None: NO_KEY), waiting up to
        `seconds_left` for an attempt in progress. A held claim ends with `complete` or
        `release`."""
        if idempotency_key is None:
            return NO_KEY
        _check(idempotency_key)
        return await self._claim(key_id, idempotency_key, operation, print_, request_id,
                                 seconds_left)

    async def _claim(self, key_id: str, idempotency_key: str, operation: str, print_: str,
                     request_id: str, seconds_left: float) -> Claim:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds_left
        poll = FIRST_POLL_SECONDS
        lease = timedelta(seconds=seconds_left + LEASE_MARGIN_SECONDS)
        while True:
            answer = await self._writer.write(lambda connection: self._look(
                connection, key_id, idempotency_key, operation, print_, request_id, lease))
            if answer is not _RUNNING:
                return Claim(key_id, idempotency_key, request_id,
                             answer if isinstance(answer, dict) else None, self)
            if loop.time() + poll >= deadline:
                raise Conflict("A request with this Idempotency-Key is still in progress; "
                               "retry later to get its answer.",
                               reason="IDEMPOTENCY_KEY_IN_PROGRESS", retry_after=1)
            event = self._waiters.setdefault((key_id, idempotency_key), asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), poll)
            poll = min(poll * 2, MAX_POLL_SECONDS)

    # Long: one transaction's decision table (new, replayed, running, expired, taken over).
    def _look(self, connection: Connection, key_id: str, idempotency_key: str,
              operation: str, print_: str, request_id: str,
              lease: timedelta) -> dict[str, Any] | object | None:
        """One look at the key: None (this request now owns it), the kept answer, or
        _RUNNING (another attempt owns it)."""
        now = utcnow()
        row_key = (KEYS.c.key_id == key_id, KEYS.c.idempotency_key == idempotency_key)
        inserted = connection.execute(
            self._insert(KEYS).values(
                key_id=key_id, idempotency_key=idempotency_key, operation=operation,
                fingerprint=print_, state="running", request_id=request_id,
                lease_until=now + lease, created_at=now, expires_at=now + self._ttl)
            .on_conflict_do_nothing().returning(KEYS.c.key_id))
        if inserted.first() is not None:
            return None
        row = connection.execute(select(KEYS).where(*row_key)).first()
        if row is None:  # given up between the two statements: look again
            return _RUNNING
        if row.expires_at <= now:  # an old one: forget it, and look again
            connection.execute(delete(KEYS).where(*row_key, KEYS.c.expires_at <= now))
            return _RUNNING
        if row.operation != operation or row.fingerprint != print_:
            raise Conflict("This Idempotency-Key was used with another request body; "
                           "use a new key for a new request.",
                           reason="IDEMPOTENCY_KEY_REUSED", param="idempotency_key")
        if row.state == "done":
            return row.answer or {}
        if row.lease_until > now:
            return _RUNNING
        taken = connection.execute(  # its owner died: take the key over
            update(KEYS).where(*row_key, KEYS.c.state == "running",
                               KEYS.c.request_id == row.request_id)
            .values(request_id=request_id, lease_until=now + lease))
        if taken.rowcount != 1:
            return _RUNNING
        log.warning("idempotency key taken over", key_id=key_id, request_id=request_id,
                    previous_request_id=row.request_id)
        return None

    async def _complete(self, claim: Claim, answer: dict[str, Any]) -> None:
        await self._writer.write(lambda connection: connection.execute(
            update(KEYS).where(*_owned(claim)).values(state="done", answer=answer)))
        self._wake(claim)

    async def _release(self, claim: Claim) -> None:
        try:
            await self._writer.write(lambda connection: connection.execute(
                delete(KEYS).where(*_owned(claim), KEYS.c.state == "running")))
        except Exception:  # its lease lapses instead
            log.exception("idempotency key not given up", request_id=claim.request_id)
        self._wake(claim)

    def _wake(self, claim: Claim) -> None:
        event = self._waiters.pop((claim.key_id, claim.idempotency_key), None)
        if event is not None:
            event.set()

    async def sweep(self) -> int:
        """Forget keys older than the TTL; how many were forgotten."""
        return int(await self._writer.write(lambda connection: connection.execute(
            delete(KEYS).where(KEYS.c.expires_at <= utcnow())).rowcount or 0))


def _owned(claim: Claim) -> tuple[Any, ...]:
    return (KEYS.c.key_id == claim.key_id, KEYS.c.idempotency_key == claim.idempotency_key,
            KEYS.c.request_id == claim.request_id)


_RUNNING = object()


def _check(idempotency_key: str) -> None:
    if not 1 <= len(idempotency_key) <= MAX_KEY_LENGTH or not idempotency_key.isprintable() \
            or not idempotency_key.isascii():
        raise InvalidArgument(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII "
                              "characters", param="idempotency_key",
                              reason="INVALID_IDEMPOTENCY_KEY")
