"""API key lookups answered from memory, never from a stale memory.

Every call names its key, and looking it up through SQLAlchemy's async session costs
~0.8 ms of CPU (docs/performance.md): more than all the rest of our own work on a small
request. A key seen before is answered from memory as long as the keys have not changed
since: every change to api_keys (a key made, revoked, its limits set; by any process, the
CLI's `keys revoke` among them) adds one to the `key_generation` row in the same
transaction. When it moved, the memory is emptied; a change this process makes empties it
at once. The expiry of a remembered key is checked on every use, and entries are read again
after MAX_AGE_SECONDS in any case.

- SQLite: the row is read on a connection of its own, in microseconds, before each lookup:
  another process's revocation is seen on the very next call.
- PostgreSQL: a read per call would cost what the cache saves, so the row is polled every
  POLL_SECONDS: another process's revocation is seen within that (this process's at once);
  while the poll is late (the database away), every lookup goes to the database.

Only keys that were accepted are kept, under the HMAC digest of the Authorization value
(never the token itself); refusals always go to the database, which says why.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time

from sqlalchemy import text
from sqlalchemy.engine import make_url

from service.accounting.keys import ApiKey, KeyStore
from service.db import Database, utcnow

MAX_AGE_SECONDS = 5.0
POLL_SECONDS = 0.25
MAX_ENTRIES = 10_000
GENERATION = "SELECT n FROM key_generation WHERE id = 1"


class KeyCache:
    def __init__(self, keys: KeyStore, database_url: str, database: Database | None = None,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self._keys = keys
        self._database = _sqlite_file(database_url)
        self._polled = database if self._database is None else None
        self._poll_seconds = poll_seconds
        self._poller: asyncio.Task[None] | None = None
        self._polled_at = -math.inf
        self._reader: sqlite3.Connection | None = None
        self._seen: int | None = None
        self._entries: dict[bytes, tuple[ApiKey, float]] = {}
        keys.listen(self._entries.clear)

    async def authenticate(self, authorization: str | None) -> ApiKey:
        if (self._database is None and self._polled is None) or not authorization:
            return await self._keys.authenticate(authorization)
        entry_key = self._keys.digest(authorization)
        now = time.monotonic()
        if self._unchanged(now):
            entry = self._entries.get(entry_key)
            if entry is not None and now - entry[1] < MAX_AGE_SECONDS and _usable(entry[0]):
                return entry[0]
        key = await self._keys.authenticate(authorization)  # raises for a key refused
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[entry_key] = (key, now)
        return key

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)

    def _unchanged(self, now: float) -> bool:
        """Whether the keys are as they were when the entries were read; if not, forget
        them. Any failure counts as a change (the lookup then says what is wrong)."""
        if self._polled is not None:
            if self._poller is None:
                self._poller = asyncio.create_task(self._poll(self._polled))
            return now - self._polled_at < 2 * self._poll_seconds
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


    async def _poll(self, database: Database) -> None:
        """Read key_generation every poll: when it moved, forget the entries."""
        while True:
            try:
                async with database.read() as session:
                    generation = await session.scalar(text(GENERATION))
                if generation != self._seen:
                    self._entries.clear()
                    self._seen = generation
                self._polled_at = time.monotonic()
            except Exception:  # the database may be away: lookups go to it meanwhile
                self._entries.clear()
            await asyncio.sleep(self._poll_seconds)


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
