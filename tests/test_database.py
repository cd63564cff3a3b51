"""The database layer on SQLite and on PostgreSQL, each from empty: migrations when several
processes start at once, and the quota arithmetic (reserve, settle) under concurrency."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import db
from service.accounting.keys import KeyLimits, KeyStore
from service.accounting.quotas import Quotas
from service.errors import ResourceExhausted
from tests.stack import ROOT


def test_processes_starting_at_once_migrate_the_database_once(fresh_database: str,
                                                              tmp_path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AIGNE_HUB_")},
           "AIGNE_HUB_VAR_DIR": str(tmp_path), "AIGNE_HUB_DATABASE_URL": fresh_database,
           "AIGNE_HUB_KEY_HASH_SECRET": "a shared secret"}
    starts = [subprocess.Popen([sys.executable, "-m", "service", "keys", "create", f"k{i}"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT) for i in range(4)]
    outputs = [start.communicate(timeout=120)[0].decode() for start in starts]

    assert [start.returncode for start in starts] == [0] * 4, outputs
    listing = subprocess.run([sys.executable, "-m", "service", "keys", "list"], cwd=ROOT,
                             env=env, capture_output=True, text=True, check=True).stdout
    assert all(f" k{i}" in listing for i in range(4))


@dataclass
class Store:
    keys: KeyStore
    quotas: Quotas
    sessions: async_sessionmaker[AsyncSession]


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[Store]:
    engine = db.create_engine(fresh_database)
    await db.migrate(engine)
    database = db.Database(engine)
    sessions = database.sessions
    try:
        yield Store(KeyStore(database, b"secret"), Quotas(database),
                    sessions)
    finally:
        await engine.dispose()


async def test_schema_is_at_the_newest_revision(fresh_database: str) -> None:
    engine = db.create_engine(fresh_database)
    try:
        await db.migrate(engine)
        await db.migrate(engine)  # a second start changes nothing
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    assert {"api_keys", "quota_counters", "usage_records", "alembic_version"} <= tables


async def test_concurrent_reservations_stop_exactly_at_the_quota(store: Store) -> None:
    keys, quotas = store.keys, store.quotas
    key, _ = await keys.create("unit", limits=KeyLimits(daily_image_quota=50))

    async def one() -> bool:
        try:
            await quotas.reserve(key, 1)
            return True
        except ResourceExhausted:
            return False

    admitted = await asyncio.gather(*(one() for _ in range(200)))

    assert sum(admitted) == 50
    assert (await quotas.used([key.id]))[key.id] == (50, 50)


async def test_settling_charges_the_images_returned(store: Store) -> None:
    keys, quotas = store.keys, store.quotas
    key, _ = await keys.create("unit", limits=KeyLimits(monthly_image_quota=10))

    reservation = await quotas.reserve(key, 5)
    assert (await quotas.used([key.id]))[key.id] == (5, 5)
    await quotas.settle(reservation, 3)
    await quotas.settle(reservation, 0)  # only the first settlement counts
    assert (await quotas.used([key.id]))[key.id] == (3, 3)

    await quotas.reserve(key, 7)
    with pytest.raises(ResourceExhausted) as refused:
        await quotas.reserve(key, 1)
    assert refused.value.reason == "MONTHLY_QUOTA_EXCEEDED"
    assert refused.value.retry_after is not None and refused.value.retry_after > 0


async def test_a_full_window_reserves_nothing(store: Store) -> None:
    """The day has room, the month has not: the day's counter, already raised in the same
    transaction, must fall back."""
    keys, quotas = store.keys, store.quotas
    key, _ = await keys.create("unit", limits=KeyLimits(daily_image_quota=100,
                                                        monthly_image_quota=6))
    await quotas.reserve(key, 4)
    with pytest.raises(ResourceExhausted) as refused:
        await quotas.reserve(key, 4)
    assert refused.value.reason == "MONTHLY_QUOTA_EXCEEDED"
    assert (await quotas.used([key.id]))[key.id] == (4, 4)


async def test_rate_limit_counts_requests(store: Store) -> None:
    keys, quotas = store.keys, store.quotas
    key, _ = await keys.create("unit", limits=KeyLimits(requests_per_minute=2))
    if time.time() % 60 > 58:  # all three in the same clock minute
        await asyncio.sleep(2.5)
    await quotas.reserve(key, 5)
    await quotas.reserve(key, 5)
    with pytest.raises(ResourceExhausted) as refused:
        await quotas.reserve(key, 1)
    assert refused.value.reason == "RATE_LIMIT_EXCEEDED"
    assert 0 < (refused.value.retry_after or 0) <= 60
    assert (await quotas.used([key.id]))[key.id] == (10, 10)


async def test_keys_without_limits_are_counted_too(store: Store) -> None:
    """So a quota set in the middle of a day counts that day's images already made."""
    keys, quotas = store.keys, store.quotas
    key, _ = await keys.create("unit")
    await quotas.reserve(key, 6)
    limited = await keys.set_limits(key.id, KeyLimits(daily_image_quota=8))
    await quotas.reserve(limited, 2)
    with pytest.raises(ResourceExhausted):
        await quotas.reserve(limited, 1)
    async with store.sessions() as session:
        minute_rows = await session.scalar(
            select(func.count()).select_from(db.QuotaCounterRow).where(
                db.QuotaCounterRow.key_id == key.id, db.QuotaCounterRow.period == "minute"))
    assert minute_rows == 0, "no requests-per-minute limit, no minute counters"
