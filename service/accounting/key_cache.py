"""API key lookups answered from memory, never from a stale memory.

Every call names its key, and looking it up through SQLAlchemy's async session and aiosqlite
costs ~0.8 ms of CPU (docs/performance.md): more than all the rest of our own work on a
small request. A key seen before is answered from memory as long as the keys have not
changed since: every change to api_keys (a key made, revoked, its limits set; by any process,
the CLI's `keys revoke` among them) adds one to the `key_generation` row in the same
transaction, and for SQLite that row is read on a connection of its own in microseconds
before each lookup. When it moved, the memory is emptied. The expiry of a remembered key is
checked on every use, and entries are read again after MAX_AGE_SECONDS in any case.
Other databases have no cheap enough read: every lookup goes to them.

Only keys that were accepted are kept, under the HMAC digest of the Authorization value
(never the token itself); refusals always go to the database, which says why.
"""

from __future__ import annotations

import sqlite3
import time

from sqlalchemy.engine import make_url

from service.accounting.keys import ApiKey, KeyStore
from service.db import utcnow

MAX_AGE_SECONDS = 5.0
MAX_ENTRIES = 10_000
GENERATION = "SELECT n FROM key_generation WHERE id = 1"


class KeyCache:
    def __init__(self, keys: KeyStore, database_url: str) -> None:
        self._keys = keys
        self._database = _sqlite_file(database_url)
        self._reader: sqlite3.Connection | None = None
        self._seen: int | None = None
        self._entries: dict[bytes, tuple[ApiKey, float]] = {}

    async def authenticate(self, authorization: str | None) -> ApiKey:
        if self._database is None or not authorization:
            return await self._keys.authenticate(authorization)
        entry_key = self._keys.digest(authorization)
        now = time.monotonic()
        if self._unchanged():
            entry = self._entries.get(entry_key)
            if entry is not None and now - entry[1] < MAX_AGE_SECONDS and _usable(entry[0]):
                return entry[0]
        key = await self._keys.authenticate(authorization)  # raises for a key refused
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[entry_key] = (key, now)
        return key

    def _unchanged(self) -> bool:
        """Whether the keys are as they were when the entries were read; if not, forget
        them. Any failure counts as a change (the lookup then says what is wrong)."""
        try:
            if self._reader is None:
                self._reader = sqlite3.connect(f"file:{self._database}?mode=ro", uri=True,
                                               isolation_level=None, check_same_thread=False)
            row = self._reader.execute(GENERATION).fetchone()
            generation = int(row[0]) if row else None
        except sqlite3.Error:
            self._reader, generation = None, None
        if generation is not None and generation == self._seen:
            return True
        self._entries.clear()
        self._seen = generation
        return False


def _usable(key: ApiKey) -> bool:
    """Whether a remembered key may still be used now (it may have expired since)."""
    expires = key.limits.expires_at
    return key.revoked_at is None and (expires is None or expires > utcnow())


def _sqlite_file(database_url: str) -> str | None:
    """The SQLite database file of `database_url`; None for other databases or memory."""
    url = make_url(database_url)
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    return url.database.removeprefix("file:").split("?", 1)[0]
