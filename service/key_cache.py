"""API key lookups answered from memory, never from a stale memory.

Every call names its key, and looking it up through SQLAlchemy's async session and aiosqlite
costs ~0.8 ms of CPU (README "Performance"): more than all the rest of our own work on a
small request. A key seen before is answered from memory as long as the database has not
changed since. For SQLite, `PRAGMA data_version` on a connection of its own says so in
microseconds: any commit by any other connection or process (`keys revoke` from the CLI
among them) changes it, and the cache is emptied before the lookup. Entries are also read
again after MAX_AGE_SECONDS, so that a rule that depends on time alone can never be more
than that late. Other databases have no such cheap signal: every lookup goes to them.

Only keys that were accepted are kept, under the HMAC digest of the Authorization value
(never the token itself); refusals always go to the database.
"""

from __future__ import annotations

import sqlite3
import time

from sqlalchemy.engine import make_url

from service.keys import ApiKey, KeyStore

MAX_AGE_SECONDS = 5.0
MAX_ENTRIES = 10_000


class KeyCache:
    def __init__(self, keys: KeyStore, database_url: str) -> None:
        self._keys = keys
        self._database = _sqlite_file(database_url)
        self._version: sqlite3.Connection | None = None
        self._seen = -1
        self._entries: dict[bytes, tuple[ApiKey, float]] = {}

    async def authenticate(self, authorization: str | None) -> ApiKey:
        if self._database is None or not authorization:
            return await self._keys.authenticate(authorization)
        entry_key = self._keys.digest(authorization)
        now = time.monotonic()
        if self._unchanged():
            entry = self._entries.get(entry_key)
            if entry is not None and now - entry[1] < MAX_AGE_SECONDS:
                return entry[0]
        key = await self._keys.authenticate(authorization)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[entry_key] = (key, now)
        return key

    def _unchanged(self) -> bool:
        """Whether the database is as it was when the entries were read; if not, forget
        them. Any failure counts as a change (the lookup then says what is wrong)."""
        try:
            if self._version is None:
                self._version = sqlite3.connect(f"file:{self._database}?mode=ro", uri=True,
                                                isolation_level=None)
            version = self._version.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            self._version = None
            version = -1
        if version == self._seen and version != -1:
            return True
        self._entries.clear()
        self._seen = version
        return False


def _sqlite_file(database_url: str) -> str | None:
    """The SQLite database file of `database_url`; None for other databases or memory."""
    url = make_url(database_url)
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    return url.database.removeprefix("file:")
