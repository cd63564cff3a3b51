"""The tables: what the service keeps in its database (SQLite or PostgreSQL).

Alembic migrations (db/migrations/) create them; db/engine.py opens the database.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

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
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

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
    keys in memory (accounting/key_cache.py) compares it instead of reading every key again."""

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


class QuotaReservationRow(Base):
    """A reservation not settled yet. Settling deletes it; one whose request died with its
    process outlives `expires_at`, and the sweep gives its images back."""

    __tablename__ = "quota_reservations"
    __table_args__ = (Index("ix_quota_reservations_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40))
    images: Mapped[int] = mapped_column(Integer)
    windows: Mapped[list[list[str]]] = mapped_column(JSON)  # [[period, start ISO 8601], ...]
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())


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
