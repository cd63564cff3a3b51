"""The database: tables, the async engine, and migrations to the newest schema.

SQLite under var/ by default (WAL, so readers never wait on the writer), PostgreSQL when
AIGNE_HUB_DATABASE_URL names one. Alembic owns the schema; `migrate` runs at start-up.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Boolean, DateTime, LargeBinary, String, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from service.errors import HubError, Unavailable

MIGRATIONS = Path(__file__).with_name("migrations")


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and read back timezone-aware on every database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    """An API key. Only its HMAC digest is stored; the secret is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        # A path, or a URI (`file:PATH?mode=ro&uri=true`) whose path is before the query.
        path = url.split(":///", 1)[-1].split("?", 1)[0].removeprefix("file:")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sessions(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


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
