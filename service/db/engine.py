"""Opening the database, and the one way the request path writes to it.

SQLite under var/ by default (WAL, so readers never wait on the writer), PostgreSQL when
AIGNE_HUB_DATABASE_URL names one. Alembic owns the schema (db/schema.py, db/migrations/);
`migrate` runs at start-up, and several processes starting at once on one database take
turns (a PostgreSQL advisory lock; on SQLite, the database's write lock).

Every write goes through `Database.write`: one transaction, in this process's writer turn
(SQLite), run to its end even when the caller is cancelled meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from service.errors import HubError, Unavailable

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK_ID = 0x41_49_47_4E_45_48_55_42  # "AIGNEHUB": the advisory lock of migrations
T = TypeVar("T")


class Database:
    """The engine, its sessions, and `write`, the one transaction helper of every writer.

    Why writes take turns: SQLite lets one writer in at a time; a writer that finds the
    database locked waits in its busy handler, which sleeps and tries again (up to 100 ms a
    try), and under load some writers lose every try (at 16 concurrent requests some
    waited seconds and a few gave up with "database is locked"). Taking turns here first,
    the writers of this process never meet inside SQLite. PostgreSQL needs no turns (row
    locks; writers wait in line there).

    Why writes run to their end: a transaction cut off in the middle (its caller cancelled
    because the client went away) leaves its SQLite connection inside the write lock, and
    every writer after it waits for good; and what it wrote (a quota reservation) must be
    known to the caller, to be given back."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._turn = asyncio.Lock() if self.dialect == "sqlite" else None

    @classmethod
    def open(cls, url: str) -> Database:
        return cls(create_engine(url))

    def read(self) -> AsyncSession:
        """A session for reads: `async with database.read() as session: ...`."""
        return self.sessions()

    async def write(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """`work(session)` in one transaction, committed when it returns, rolled back when
        it raises; in this process's writer turn, and to its end even when the caller is
        cancelled meanwhile (the cancellation then lands at the caller's next await)."""
        return await to_the_end(self._write(work))

    async def _write(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with self.writer_turn(), self.sessions() as session, session.begin():
            return await work(session)

    @contextlib.asynccontextmanager
    async def writer_turn(self) -> AsyncIterator[None]:
        """This process's turn to write (SQLite; PostgreSQL writers need none)."""
        if self._turn is None:
            yield
            return
        async with self._turn:
            yield

    def writer_idle(self) -> bool:
        """Whether no writer of this process holds its turn now (a caller that writes
        without awaiting in between may then go ahead as if it held it)."""
        return self._turn is None or not self._turn.locked()

    async def ping(self) -> None:
        """A round trip to the database (readiness)."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def create_engine(url: str) -> AsyncEngine:
    """The engine for `url`. Statement parameters (key digests among them) are kept out of
    error messages and logs."""
    if url.startswith("sqlite"):
        # A path, or a URI (`file:PATH?mode=ro&uri=true`) whose path is before the query.
        path = url.split(":///", 1)[-1].split("?", 1)[0].removeprefix("file:")
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        if path and path != ":memory:" and "mode=ro" not in url:
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            event.listen(engine.sync_engine, "do_connect",
                         lambda *_: _private_file(Path(path)))
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True, hide_parameters=True)


def _private_file(path: Path) -> None:
    """Before each connection: the SQLite file made (or kept) readable by this user only,
    0600 (its directory is made 0700); its -wal and -shm files take the database file's
    mode (SQLite does that). A directory that is gone is left for SQLite to report."""
    with contextlib.suppress(FileNotFoundError):
        os.close(os.open(path, os.O_CREAT | os.O_RDONLY, 0o600))
    with contextlib.suppress(OSError):  # gone, or someone else's file: theirs to mind
        os.chmod(path, 0o600)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_size_limit=67108864")  # a WAL started over: cut to 64 MB
    cursor.close()


def rows_changed(result: object) -> int:
    """The rows a write statement changed (its result, from a session's `execute`, is typed
    as a plain Result, which does not say it has `rowcount`)."""
    return int(getattr(result, "rowcount", 0) or 0)


async def to_the_end(work: Awaitable[T]) -> T:
    """Await `work` to its end even when the caller is cancelled meanwhile; the
    cancellation then lands at the caller's next await, once what `work` returned is in
    hand. (Database.write applies it to every transaction.)"""
    task = asyncio.ensure_future(work)
    cancelled = False
    try:
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                # Also when `work` has just ended: its result must not be lost (a
                # reservation nobody would give back).
                if task.cancelled():
                    raise
                cancelled = True
        return task.result()
    finally:
        current = asyncio.current_task()
        if cancelled and current is not None:
            current.cancel()


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision, one process at a time: the others wait,
    then find it at the newest revision already."""
    async with engine.begin() as connection:
        await _lock_schema(connection)
        await connection.run_sync(_upgrade)


async def _lock_schema(connection: AsyncConnection) -> None:
    """Hold the migration lock until this transaction ends. PostgreSQL: an advisory lock
    (its DDL is transactional). SQLite: the write lock, taken at once (BEGIN IMMEDIATE), so
    a second process waits (busy_timeout) instead of creating the same tables."""
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:id)"),
                                 {"id": MIGRATION_LOCK_ID})
    elif connection.dialect.name == "sqlite":
        await connection.exec_driver_sql("BEGIN IMMEDIATE")


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def hub_error(exc: BaseException) -> HubError | None:
    """What a caller hears when the database cannot do its part (it is unreachable, locked
    too long, or refuses writes); None for anything else, which is a bug, not an outage."""
    if not isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return None
    if "readonly" in str(exc).lower().replace("-", "").replace(" ", ""):
        return Unavailable("The database refuses writes right now; an operator must check it.",
                           reason="DATABASE_READ_ONLY", retry_after=30)
    return Unavailable("The database is not reachable right now; try again shortly.",
                       reason="DATABASE_UNAVAILABLE", retry_after=5)
