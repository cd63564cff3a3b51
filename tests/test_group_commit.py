"""Group commit (service/db/batch.py) on SQLite and PostgreSQL: many requests' writes to a
transaction, each told its result only once it is committed; a refusal or a failing write
sinks no other; a caller that goes away still has its write done; stop flushes. And the
sweep that gives back the reservations of requests that died with their process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import Connection, event, func, select, text, update

from service import db
from service.accounting.keys import KeyLimits, KeyStore
from service.accounting.quotas import Quotas
from service.db import batch
from service.db.batch import BatchWriter
from service.errors import ResourceExhausted


@pytest.fixture
async def database(fresh_database: str) -> AsyncIterator[db.Database]:
    database = db.Database.open(fresh_database)
    await db.migrate(database.engine)
    try:
        yield database
    finally:
        await database.dispose()


def counted_commits(writer: BatchWriter, database: db.Database) -> list[int]:
    """Commits of the writer's transactions, counted as they happen."""
    commits: list[int] = []
    engines = [e for e in (writer._inline, writer._sync) if e is not None] \
        or [database.engine.sync_engine]
    for engine in engines:
        event.listen(engine, "commit", lambda connection: commits.append(1))
    return commits


async def test_concurrent_writes_share_transactions_and_all_land(database: db.Database) -> None:
    writer = BatchWriter(database)
    commits = counted_commits(writer, database)
    await database.write(lambda s: s.execute(text(
        "CREATE TABLE tally (n INTEGER NOT NULL)")))

    def add(n: int):  # type: ignore[no-untyped-def]
        def op(connection: Connection) -> int:
            connection.execute(text("INSERT INTO tally (n) VALUES (:n)"), {"n": n})
            return n
        return op

    results = await asyncio.gather(*(writer.write(add(n)) for n in range(200)))

    assert results == list(range(200))
    async with database.read() as session:
        assert await session.scalar(text("SELECT count(*) FROM tally")) == 200
    assert 1 <= len(commits) < 50, f"{len(commits)} transactions for 200 writes"
    await writer.stop()


async def test_a_refusal_or_a_broken_write_sinks_no_other(database: db.Database) -> None:
    writer = BatchWriter(database)
    await database.write(lambda s: s.execute(text("CREATE TABLE tally (n INTEGER NOT NULL)")))

    def add(connection: Connection) -> str:
        connection.execute(text("INSERT INTO tally (n) VALUES (1)"))
        return "added"

    def refuse(connection: Connection) -> str:
        raise ResourceExhausted("full", reason="DAILY_QUOTA_EXCEEDED")

    def broken(connection: Connection) -> str:
        connection.execute(text("INSERT INTO no_such_table VALUES (1)"))
        return "never"

    outcomes = await asyncio.gather(writer.write(add), writer.write(refuse),
                                    writer.write(broken), writer.write(add),
                                    return_exceptions=True)

    assert outcomes[0] == outcomes[3] == "added"
    assert isinstance(outcomes[1], ResourceExhausted)
    assert isinstance(outcomes[2], Exception) and not isinstance(outcomes[2], ResourceExhausted)
    async with database.read() as session:
        assert await session.scalar(text("SELECT count(*) FROM tally")) == 2
    await writer.stop()


async def test_a_caller_that_goes_away_still_has_its_write_done(database: db.Database) -> None:
    keys = KeyStore(database, b"secret")
    writer = BatchWriter(database)
    quotas = Quotas(database, writer)
    key, _ = await keys.create("gone", limits=KeyLimits(daily_image_quota=10))
    # On SQLite the first write of a turn of the loop is written at once, by its caller; the
    # second waits for the writer.
    first = asyncio.create_task(quotas.reserve(key, 1))
    reserving = asyncio.create_task(quotas.reserve(key, 4))
    await asyncio.sleep(0)  # queued, not yet written
    reserving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reserving
    await first
    await writer.stop()  # flushes
    assert (await quotas.used([key.id]))[key.id] == (5, 5)


async def test_stop_writes_what_waits(database: db.Database) -> None:
    writer = BatchWriter(database)
    await database.write(lambda s: s.execute(text("CREATE TABLE tally (n INTEGER NOT NULL)")))
    pending = [asyncio.create_task(writer.write(
        lambda c: c.execute(text("INSERT INTO tally (n) VALUES (1)")).rowcount))
        for _ in range(20)]
    await asyncio.sleep(0)
    await writer.stop()
    assert sum(await asyncio.gather(*pending)) == 20
    with pytest.raises(RuntimeError):
        await writer.write(lambda c: None)


async def test_the_sweep_gives_back_what_dead_requests_reserved(database: db.Database) -> None:
    keys = KeyStore(database, b"secret")
    quotas = Quotas(database, lease_seconds=3600)
    key, _ = await keys.create("swept", limits=KeyLimits(daily_image_quota=10))
    dead = await quotas.reserve(key, 6)  # its process died: never settled
    alive = await quotas.reserve(key, 3)
    settled_early = await quotas.reserve(key, 1)
    await quotas.settle(settled_early, 1)
    assert await quotas.sweep() == 0, "nothing has lapsed yet"
    await database.write(lambda s: s.execute(
        update(db.QuotaReservationRow).where(db.QuotaReservationRow.id == dead.id)
        .values(expires_at=db.utcnow() - timedelta(seconds=1))))

    assert await quotas.sweep() == 1
    assert (await quotas.used([key.id]))[key.id] == (4, 4)
    assert await quotas.sweep() == 0, "given back once"
    # The dead request's settlement, should it come after all, gives back nothing again.
    await quotas.settle(dead, 0)
    await quotas.settle(alive, 3)
    assert (await quotas.used([key.id]))[key.id] == (4, 4)
    async with database.read() as session:
        assert await session.scalar(
            select(func.count()).select_from(db.QuotaReservationRow)) == 0


async def test_a_settlement_in_a_failed_batch_counts_once_when_written_again(
        database: db.Database) -> None:
    """A batch that fails is written again op by op: a settlement in it must give back its
    images then, exactly once (nothing it did in the rolled-back batch may stick)."""
    keys = KeyStore(database, b"secret")
    writer = BatchWriter(database)
    quotas = Quotas(database, writer)
    key, _ = await keys.create("again", limits=KeyLimits(daily_image_quota=10))
    reservation = await quotas.reserve(key, 5)

    def broken(connection: Connection) -> None:
        connection.execute(text("INSERT INTO no_such_table VALUES (1)"))

    outcomes = await asyncio.gather(quotas.settle(reservation, 2), writer.write(broken),
                                    return_exceptions=True)

    assert outcomes[0] is None and isinstance(outcomes[1], Exception)
    assert reservation.settled
    assert (await quotas.used([key.id]))[key.id] == (2, 2)
    await writer.stop()


async def test_another_process_holding_the_lock_is_waited_for_off_the_loop(
        database: db.Database) -> None:
    """SQLite: the writer commits on the event loop, but never waits there: while another
    process holds the write lock, the batch waits in the writer's thread and the loop goes
    on serving."""
    if database.dialect != "sqlite":
        pytest.skip("SQLite's write lock")
    import sqlite3

    writer = BatchWriter(database)
    await database.write(lambda s: s.execute(text("CREATE TABLE tally (n INTEGER NOT NULL)")))
    other = sqlite3.connect(database.engine.url.database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer, mid-transaction
    try:
        waiting = asyncio.create_task(writer.write(
            lambda c: c.execute(text("INSERT INTO tally (n) VALUES (1)")).rowcount))
        started = asyncio.get_running_loop().time()
        for _ in range(10):  # the loop is free meanwhile
            await asyncio.sleep(0.02)
        assert asyncio.get_running_loop().time() - started < 2.0
        assert not waiting.done()
        other.execute("COMMIT")
        assert await asyncio.wait_for(waiting, 30) == 1
    finally:
        other.close()
        await writer.stop()


async def test_the_wal_starts_over_under_a_steady_stream_of_writes(
        database: db.Database) -> None:
    """SQLite: checkpoints beside commits that never pause never caught up, and the WAL grew
    without end (~30 MB a second under load, reads slowing as it did). Taken in the writer's
    turn, each checkpoint copies the whole WAL back and the next write starts it over."""
    if database.dialect != "sqlite":
        pytest.skip("SQLite's write-ahead log")
    writer = BatchWriter(database)
    await database.write(lambda s: s.execute(text("CREATE TABLE tally (n INTEGER NOT NULL)")))
    for n in range(6 * batch.CHECKPOINT_EVERY):  # commits one after another, as under load
        await writer.write(lambda c: c.execute(text("INSERT INTO tally (n) VALUES (1)")))
        if n % 50 == 0:
            await asyncio.sleep(0.001)  # (the checkpoints' turns come)
    wal = await asyncio.to_thread(os.path.getsize, f"{database.engine.url.database}-wal")
    await writer.stop()
    # Six checkpoints' worth of commits: ~12 MB of WAL when it never starts over.
    assert wal < 5 << 20, f"the WAL is {wal >> 20} MB"
