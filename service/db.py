"""The database: tables, the async engine, and migrations to the newest schema.

SQLite under var/ by default (WAL, so readers never wait on the writer), PostgreSQL when
AIGNE_HUB_DATABASE_URL names one. Alembic owns the schema; `migrate` runs at start-up, and
several processes starting at once on one database take turns (a PostgreSQL advisory lock;
on SQLite, the database's write lock).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    event,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from service.errors import HubError, Unavailable

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK_ID = 0x41_49_47_4E_45_48_55_42  # "AIGNEHUB": the advisory lock of migrations
BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only


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
    # Limits; None means the limit does not apply (allowed_models None: every model).
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    daily_image_quota: Mapped[int | None] = mapped_column(Integer, nullable=True)
    monthly_image_quota: Mapped[int | None] = mapped_column(Integer, nullable=True)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class KeyGenerationRow(Base):
    """One row counting changes to api_keys (made, revoked, limits set): a process that keeps
    keys in memory (service/key_cache.py) compares it instead of reading every key again."""

    __tablename__ = "key_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class QuotaCounterRow(Base):
    """What one key used in one window: images per `day` or `month`, requests per
    `minute`. Reservations add to `used` with one conditional statement (see quotas.py)."""

    __tablename__ = "quota_counters"

    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UtcDateTime(), primary_key=True)
    used: Mapped[int] = mapped_column(Integer)


class UsageRecordRow(Base):
    """One image request that passed authentication, whatever its outcome."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_key_id_day", "key_id", "day"),
        Index("ix_usage_records_day", "day"),
        Index("ix_usage_records_key_id_id", "key_id", "id"),
        Index("ix_usage_records_request_id", "request_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    day: Mapped[date] = mapped_column(Date)  # created_at's UTC day, for totals per day
    door: Mapped[str] = mapped_column(String(8))
    model: Mapped[str] = mapped_column(String(200))
    served_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(40), nullable=True)
    n: Mapped[int] = mapped_column(Integer)
    size: Mapped[str | None] = mapped_column(String(32), nullable=True)
    quality: Mapped[str | None] = mapped_column(String(32), nullable=True)
    response_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    status: Mapped[str] = mapped_column(String(64))
    http_status: Mapped[int] = mapped_column(Integer)
    images: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    upstream_ms: Mapped[float] = mapped_column(Float)
    total_ms: Mapped[float] = mapped_column(Float)
    input_text_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    input_image_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    output_text_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    output_image_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Costs in billionths, so sums are exact on every database.
    cost_usd_nanos: Mapped[int] = mapped_column(BigInteger)
    cost_credits_nanos: Mapped[int] = mapped_column(BigInteger)


class DeploymentRow(Base):
    """An upstream that serves models: OpenAI, Azure OpenAI, an OpenAI-compatible base URL,
    the Gemini API or Vertex AI. Its health is shared by every replica through this row."""

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    base_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    api_version: Mapped[str | None] = mapped_column(String(40), nullable=True)
    options: Mapped[dict[str, str]] = mapped_column(JSON)  # kind-specific, e.g. Vertex project
    models: Mapped[list[str]] = mapped_column(JSON)  # empty: every model of its provider
    model_map: Mapped[dict[str, str]] = mapped_column(JSON)  # model -> upstream name
    priority: Mapped[int] = mapped_column(Integer)
    weight: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    cooldown_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(300), nullable=True)
    last_test_status: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_test_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_test_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class CredentialRow(Base):
    """A provider secret of one deployment, encrypted at rest (Fernet); never shown again."""

    __tablename__ = "credentials"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    weight: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    disabled_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    cooldown_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class UsageAttemptRow(Base):
    """One upstream attempt of a request: which deployment and credential, and how it went."""

    __tablename__ = "usage_attempts"
    __table_args__ = (Index("ix_usage_attempts_record_id", "record_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    record_id: Mapped[int] = mapped_column(BigId, ForeignKey("usage_records.id",
                                                             ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    deployment_id: Mapped[str] = mapped_column(String(40))
    credential_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    outcome: Mapped[str] = mapped_column(String(64))  # OK, or the error reason
    upstream_ms: Mapped[float] = mapped_column(Float)


# Issue 11: idempotent retries and background jobs.


class IdempotencyKeyRow(Base):
    """An `Idempotency-Key` a key sent, for 24 h: the request's fingerprint and, once the
    first attempt succeeded, its answer (images by their store names, never their bytes).
    While `state` is `running`, `request_id` owns it until `lease_until`."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)

    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    operation: Mapped[str] = mapped_column(String(16))
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(8))  # running, done
    request_id: Mapped[str] = mapped_column(String(128))
    lease_until: Mapped[datetime] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    answer: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # type: ignore[type-arg]


class JobRow(Base):
    """A generation run in the background. Whoever holds `owner` until `lease_until` works
    on it (runs it, or delivers its webhook); a lapsed lease lets any process take it over."""

    __tablename__ = "image_jobs"
    __table_args__ = (Index("ix_image_jobs_key_id", "key_id"),
                      Index("ix_image_jobs_status", "status"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40))
    request_id: Mapped[str] = mapped_column(String(128))
    door: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))  # queued, running, succeeded, failed
    model: Mapped[str] = mapped_column(String(200))
    n: Mapped[int] = mapped_column(Integer)
    request: Mapped[bytes] = mapped_column(LargeBinary)  # the GenerateRequest, serialized
    reservation: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # type: ignore[type-arg]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # type: ignore[type-arg]
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # type: ignore[type-arg]
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    webhook_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_next_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    webhook_error: Mapped[str | None] = mapped_column(String(300), nullable=True)


def create_engine(url: str) -> AsyncEngine:
    """The engine for `url`. Statement parameters (key digests among them) are kept out of
    error messages and logs."""
    if url.startswith("sqlite"):
        # A path, or a URI (`file:PATH?mode=ro&uri=true`) whose path is before the query.
        path = url.split(":///", 1)[-1].split("?", 1)[0].removeprefix("file:")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True, hide_parameters=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


T = TypeVar("T")


async def to_the_end(work: Awaitable[T]) -> T:
    """Await `work`, a database transaction, to its end even when the caller is cancelled
    meanwhile (a client that went away); the cancellation then lands at the caller's next
    await, once what `work` returned is in hand. A transaction cut off in the middle leaves
    its connection inside SQLite's write lock, and every writer after it waits for good."""
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


class WriteTurns:
    """Writers of one process take turns, in order, on SQLite.

    SQLite lets one writer in at a time; a writer that finds the database locked waits in
    its busy handler, which sleeps and tries again (up to 100 ms a try), and under load some
    writers lose every try: at 16 concurrent requests, each writing its reservation and its
    usage record, some waited seconds and a few gave up with "database is locked". Taking
    turns here first, the writers of this process never meet inside SQLite. PostgreSQL
    needs no turns (row locks, and writers wait in line there)."""

    def __init__(self, dialect: str) -> None:
        self._lock = asyncio.Lock() if dialect == "sqlite" else None

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self._lock is None:
            yield
            return
        async with self._lock:
            yield


def sessions(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)


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
