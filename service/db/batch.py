"""Group commit: the request path's writes of one process, many requests to a transaction.

Quota reservations, their settlement with the usage record, and reservation sweeps are
small writes that every request makes. Each used to be a transaction of its own, each
statement a hop to aiosqlite's thread and back (most of a small request's server CPU,
docs/performance.md). Here a request hands its write to the process's one writer as an
`op`, a plain function of a SQLAlchemy Connection, and awaits the commit that holds it:

- the writer takes every op waiting (up to MAX_BATCH) and applies them, in order, in one
  transaction (on SQLite an op that finds the writer resting, nothing waiting and no other
  writer of this process at work is applied at once by its caller, without the hop to the
  writer task: a batch of one, and the ops that come in the same turn of the event loop
  make the writer's next batch): on SQLite through the stdlib sqlite3 driver, the requests'
  hot statements straight on its cursor (db/hot.py), on the event loop itself (a local
  file in WAL mode commits in tens of microseconds; handing the batch to a thread cost
  more than the batch), and in a thread of its own only when another process holds the
  write lock (the wait happens there, never on the loop); on PostgreSQL on the async
  engine (`run_sync`);
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
from typing import Any, TypeVar, cast

import structlog
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError

from service.db.engine import Database, to_the_end
from service.db.hot import HotConnection
from service.errors import HubError

log = structlog.get_logger("aigne.hub")

T = TypeVar("T")
Op = Callable[[Connection], Any]
MAX_BATCH = 512
CHECKPOINT_EVERY = 500
WAL_KEPT_BYTES = 64 << 20  # a WAL started over is cut back to this


class BatchWriter:
    def __init__(self, database: Database) -> None:
        self._db = database
        self._waiting: list[tuple[Op, asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._sync: Engine | None = None  # waits for the lock, in the thread
        self._inline: Engine | None = None  # never waits: on the loop
        self._commits = 0
        self._wrote_this_turn = False
        self._checkpoints: set[asyncio.Task[None]] = set()
        if database.dialect == "sqlite":
            self._thread = concurrent.futures.ThreadPoolExecutor(1, "aigne-hub-writer")
            self._sync = _sqlite_engine(database, busy_ms=30_000, checkpoints=True)
            self._inline = _sqlite_engine(database, busy_ms=0, checkpoints=False)

    async def write(self, op: Callable[[Connection], T]) -> T:
        """`op`'s result once the transaction that applied it committed."""
        if self._closed:
            raise RuntimeError("the batch writer is stopped")
        if self._inline is not None and not self._waiting and not self._wrote_this_turn \
                and self._resting() and self._db.writer_idle():
            done, outcome = self._at_once(op)
            if done:
                return cast(T, outcome)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((op, future))
        if self._resting():  # the writer rests while none wait
            self._task = asyncio.create_task(self._run())
        return await to_the_end(future)

    def _next_turn(self) -> None:
        self._wrote_this_turn = False

    def _resting(self) -> bool:
        return self._task is None or self._task.done()

    def _at_once(self, op: Op) -> tuple[bool, Any]:
        """SQLite, nothing else writing: `op` alone, committed here on the loop without a
        hop to the writer task (a batch of one, as the writer would have made it; ~50 µs
        of CPU less a write). (False, None) when another process holds the write lock: the
        writer then waits for it in its thread."""
        outcomes = self._on_the_loop([op])
        if outcomes is None:
            return False, None
        # Writes that come in the same turn of the loop (a burst) wait for the writer, which
        # takes them together in the next.
        self._wrote_this_turn = True
        asyncio.get_running_loop().call_soon(self._next_turn)
        [outcome] = outcomes
        if isinstance(outcome, HubError):
            raise outcome
        return True, outcome

    def _on_the_loop(self, ops: list[Op]) -> list[Any] | None:
        """`ops` in one SQLite transaction on the loop's connection, which never waits for a
        lock: None, nothing written, when another process holds it."""
        assert self._inline is not None
        try:
            outcomes = _in_transaction(self._inline, ops)
        except OperationalError as exc:
            if not _locked(exc):
                raise
            return None
        self._checkpoint_now_and_then()
        return outcomes

    async def stop(self) -> None:
        """Apply what waits, then stop."""
        self._closed = True
        if self._task is not None:
            await self._task
        await asyncio.gather(*self._checkpoints, return_exceptions=True)
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        for engine in (self._sync, self._inline):
            if engine is not None:
                engine.dispose()

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
            if self._inline is not None:
                outcomes = self._on_the_loop(ops)
                if outcomes is None:  # another process writes: wait for its lock in the thread
                    assert self._sync is not None
                    return await asyncio.get_running_loop().run_in_executor(
                        self._thread, _in_transaction, self._sync, ops)
                return outcomes
            async with self._db.engine.begin() as connection:
                return await connection.run_sync(_apply_all, ops)

    def _checkpoint_now_and_then(self) -> None:
        """Copy the WAL back into the database file every CHECKPOINT_EVERY commits."""
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0 and self._sync is not None:
            task = asyncio.get_running_loop().create_task(self._checkpoint())
            self._checkpoints.add(task)
            task.add_done_callback(self._checkpoints.discard)

    async def _checkpoint(self) -> None:
        """In the thread (the loop's connection never checkpoints: that can take an fsync),
        and in this process's writer turn: with no commit in between, the checkpoint copies
        the whole WAL back, so the next write starts the WAL over. (Checkpoints beside a
        steady stream of commits never caught up: the WAL grew by ~30 MB a second under
        load, and reads slowed as it did.)"""
        assert self._sync is not None
        async with self._db.writer_turn():
            await asyncio.get_running_loop().run_in_executor(self._thread, _checkpoint,
                                                             self._sync)


def _in_transaction(engine: Engine, ops: list[Op]) -> list[Any]:
    """`ops` in one SQLite transaction, their hot statements on its cursor (db/hot.py)."""
    with engine.begin() as connection:
        return _apply_all(HotConnection(connection), ops)  # type: ignore[arg-type]


def _apply_all(connection: Connection, ops: list[Op]) -> list[Any]:
    """Each op's result, or the HubError it refused with (it wrote nothing that stays)."""
    outcomes: list[Any] = []
    for op in ops:
        try:
            outcomes.append(op(connection))
        except HubError as refused:
            outcomes.append(refused)
    return outcomes


def _checkpoint(engine: Engine) -> None:
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
    except Exception:  # the next one, or any other connection's, will do it
        log.warning("WAL checkpoint failed", exc_info=True)


def _locked(exc: OperationalError) -> bool:
    return "locked" in str(exc.orig).lower() or "busy" in str(exc.orig).lower()


def _sqlite_engine(database: Database, *, busy_ms: int, checkpoints: bool) -> Engine:
    """The same SQLite file through the stdlib driver: waiting up to `busy_ms` for another
    process's write lock, and copying the WAL back (`checkpoints`) or never."""
    engine = create_engine(database.engine.url.set(drivername="sqlite"),
                           connect_args={"timeout": busy_ms / 1000, "check_same_thread": False},
                           hide_parameters=True, pool_size=1, max_overflow=0)

    def pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if not checkpoints:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")  # the WAL, started over
        cursor.close()

    event.listen(engine, "connect", pragmas)
    return engine
