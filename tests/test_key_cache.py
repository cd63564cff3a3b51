"""The key cache answers from memory only while the database is unchanged: a revocation by
another process is seen on the very next call."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service import db
from service.accounting.key_cache import KeyCache
from service.accounting.keys import KeyLimits, KeyStore
from service.errors import PermissionDenied


class CountingKeys(KeyStore):
    lookups = 0

    async def authenticate(self, authorization: str | None):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return await super().authenticate(authorization)


async def test_cache_hits_until_another_process_revokes(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/hub.db"
    engine = db.create_engine(url)
    other_engine = db.create_engine(url)  # `keys revoke` from another process
    try:
        await db.migrate(engine)
        keys = CountingKeys(db.Database(engine), b"secret")
        key, token = await keys.create("k")
        cache = KeyCache(keys, url)
        for _ in range(5):
            assert (await cache.authenticate(f"Bearer {token}")).id == key.id
        assert keys.lookups == 1, "answered from memory while nothing changed"

        writer = sqlite3.connect(tmp_path / "hub.db")  # other tables change all the time
        writer.execute("INSERT INTO quota_counters VALUES ('x', 'day', '2026-01-01', 1)")
        writer.commit()
        writer.close()
        await cache.authenticate(f"Bearer {token}")
        assert keys.lookups == 1, "usage and quota writes leave the memory of keys alone"

        await KeyStore(db.Database(other_engine), b"secret").revoke(key.id)
        with pytest.raises(PermissionDenied):
            await cache.authenticate(f"Bearer {token}")
        assert keys.lookups == 2
    finally:
        await engine.dispose()
        await other_engine.dispose()


async def test_a_remembered_key_that_expires_is_refused_at_once(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/hub.db"
    engine = db.create_engine(url)
    try:
        await db.migrate(engine)
        keys = CountingKeys(db.Database(engine), b"secret")
        soon = datetime.now(UTC) + timedelta(seconds=1)
        _, token = await keys.create("k", limits=KeyLimits(expires_at=soon))
        cache = KeyCache(keys, url)
        await cache.authenticate(f"Bearer {token}")
        await asyncio.sleep(1.1)
        with pytest.raises(PermissionDenied) as refused:
            await cache.authenticate(f"Bearer {token}")
        assert refused.value.reason == "KEY_EXPIRED"
    finally:
        await engine.dispose()


async def test_no_cache_without_a_sqlite_file(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/hub.db")
    try:
        await db.migrate(engine)
        keys = CountingKeys(db.Database(engine), b"secret")
        _, token = await keys.create("k")
        cache = KeyCache(keys, "postgresql+asyncpg://db.example/hub")
        await cache.authenticate(f"Bearer {token}")
        await cache.authenticate(f"Bearer {token}")
        assert keys.lookups == 2
    finally:
        await engine.dispose()


async def test_postgresql_polls_for_changes_and_forgets_its_own_at_once(
        postgres, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No cheap read per call on PostgreSQL: key_generation is polled. Another process's
    revocation is seen within a poll; this process's own changes at once."""
    url = postgres.create_database(f"keycache_{abs(hash(tmp_path)) % 10**9}")
    engine, other_engine = db.create_engine(url), db.create_engine(url)
    try:
        await db.migrate(engine)
        keys = CountingKeys(db.Database(engine), b"secret")
        key, token = await keys.create("k")
        cache = KeyCache(keys, url, db.Database(engine), poll_seconds=0.1)
        await cache.authenticate(f"Bearer {token}")
        await asyncio.sleep(0.3)  # the first poll
        for _ in range(5):
            assert (await cache.authenticate(f"Bearer {token}")).id == key.id
        assert keys.lookups <= 2, "answered from memory while nothing changed"

        await KeyStore(db.Database(other_engine), b"secret").revoke(key.id)
        await asyncio.sleep(0.35)  # within a few polls
        with pytest.raises(PermissionDenied):
            await cache.authenticate(f"Bearer {token}")

        second, second_token = await keys.create("k2")
        await cache.authenticate(f"Bearer {second_token}")
        await keys.revoke(second.id)  # this process: forgotten at once, no wait for a poll
        with pytest.raises(PermissionDenied):
            await cache.authenticate(f"Bearer {second_token}")
        await cache.aclose()
    finally:
        await engine.dispose()
        await other_engine.dispose()
