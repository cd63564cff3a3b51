"""Group commit: the request path's writes of one process, many requests to a transaction.

Quota reservations, their settlement with the usage record, and reservation sweeps are
small writes that every request makes. Each used to be a transaction of its own, each
statement a hop to aiosqlite's thread and back (most of a small request's server CPU,
docs/performance.md). Here a request hands its write to the process's one writer as an
`op`, a plain function of a SQLAlchemy Connection, and awaits the commit that holds it:

- the writer takes every op waiting (up to MAX_BATCH) and applies them, in order, in one
  transaction: on SQLite in a thread of its own through the stdlib sqlite3 driver (one hop
  for the whole batch), on PostgreSQL on the async engine (`run_sync`);
- an op that refuses (a full quota: it raises HubError) has written nothing, or has undone
  what it wrote in the same transaction, so the others commit; any other error fails the
  transaction, and each op of it is then tried again alone, so one op cannot sink the rest;
- an op's caller learns its result only once the transaction committed: an acknowledged
  request's write is durable, and a crash loses only writes nobody was told of;
- a caller cancelled meanwhile still gets its result (a reservation to give back);
- on SQLite the batch takes the process's writer turn (Database), so it never meets the
  other writers of this process inside SQLite's busy handler; `stop` flushes what waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine, create_engine, event

from service.db.engine import Database, to_the_end
from service.errors import HubError

log = structlog.get_logger("aigne.hub")

T = TypeVar("T")
Op = Callable[[Connection], Any]
MAX_BATCH = 512


class BatchWriter:
    def __init__(self, database: Database) -> None:
        self._db = database
        self._waiting: list[tuple[Op, asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._sync: Engine | None = None
        if database.dialect == "sqlite":
            self._thread = concurrent.futures.ThreadPoolExecutor(1, "aigne-hub-writer")
            self._sync = _sqlite_engine(database)

    async def write(self, op: Callable[[Connection], T]) -> T:
        """`op`'s result once the transaction that applied it committed."""
        if self._closed:
            raise RuntimeError("the batch writer is stopped")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((op, future))
        if self._task is None or self._task.done():  # the writer rests while none wait
            self._task = asyncio.create_task(self._run())
        return await to_the_end(future)

    async def stop(self) -> None:
        """Apply what waits, then stop."""
        self._closed = True
        if self._task is not None:
            await self._task
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sync is not None:
            self._sync.dispose()

    async def _run(self) -> None:
        """Apply batches while writes wait (those that arrive during a batch make the next
        one), then rest."""
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            await self._apply(batch)

    async def _apply(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        ops = [op for op, _ in batch]
        try:
            outcomes = await self._transaction(ops)
        except Exception as exc:
            if len(ops) == 1:
                outcomes = [exc]
            else:  # one op may have sunk the rest: each alone
                log.warning("batched write failed; writing one by one", ops=len(ops),
                            error=repr(exc)[:200])
                outcomes = [await self._alone(op) for op in ops]
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def _alone(self, op: Op) -> Any:
        try:
            return (await self._transaction([op]))[0]
        except Exception as exc:
            return exc

    async def _transaction(self, ops: list[Op]) -> list[Any]:
        async with self._db.writer_turn():
            if self._sync is not None:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._thread, _in_transaction, self._sync, ops)
            async with self._db.engine.begin() as connection:
                return await connection.run_sync(_apply_all, ops)


def _in_transaction(engine: Engine, ops: list[Op]) -> list[Any]:
    with engine.begin() as connection:
        return _apply_all(connection, ops)


def _apply_all(connection: Connection, ops: list[Op]) -> list[Any]:
    """Each op's result, or the HubError it refused with (it wrote nothing that stays)."""
    outcomes: list[Any] = []
    for op in ops:
        try:
            outcomes.append(op(connection))
        except HubError as refused:
            outcomes.append(refused)
    return outcomes


def _sqlite_engine(database: Database) -> Engine:
    """The same SQLite file through the stdlib driver, for the writer's thread."""
    engine = create_engine(database.engine.url.set(drivername="sqlite"),
                           connect_args={"timeout": 30}, hide_parameters=True,
                           pool_size=1, max_overflow=0)
    event.listen(engine, "connect", _pragmas)
    return engine


def _pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
