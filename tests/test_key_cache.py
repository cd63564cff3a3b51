"""The key cache answers from memory only while the database is unchanged: a revocation by
another process is seen on the very next call."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service import db
from service.errors import PermissionDenied
from service.key_cache import KeyCache
from service.keys import KeyStore


class CountingKeys(KeyStore):
    lookups = 0

    async def authenticate(self, authorization: str | None):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return await super().authenticate(authorization)


async def test_cache_hits_until_another_process_revokes(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/hub.db"
    engine = db.create_engine(url)
    try:
        await db.migrate(engine)
        keys = CountingKeys(db.sessions(engine), b"secret")
        key, token = await keys.create("k")
        cache = KeyCache(keys, url)
        for _ in range(5):
            assert (await cache.authenticate(f"Bearer {token}")).id == key.id
        assert keys.lookups == 1, "answered from memory while nothing changed"

        other = sqlite3.connect(tmp_path / "hub.db")  # `keys revoke` from another process
        other.execute("UPDATE api_keys SET revoked_at = '2026-01-01 00:00:00' WHERE id = ?",
                      (key.id,))
        other.commit()
        other.close()
        with pytest.raises(PermissionDenied):
            await cache.authenticate(f"Bearer {token}")
        assert keys.lookups == 2
    finally:
        await engine.dispose()


async def test_no_cache_without_a_sqlite_file(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/hub.db")
    try:
        await db.migrate(engine)
        keys = CountingKeys(db.sessions(engine), b"secret")
        _, token = await keys.create("k")
        cache = KeyCache(keys, "postgresql+asyncpg://db.example/hub")
        await cache.authenticate(f"Bearer {token}")
        await cache.authenticate(f"Bearer {token}")
        assert keys.lookups == 2
    finally:
        await engine.dispose()
