"""The database: tables (schema), opening it and writing to it (engine), migrations."""

from service.db.engine import (
    Database,
    create_engine,
    hub_error,
    migrate,
    rows_changed,
    to_the_end,
)
from service.db.schema import (
    ApiKeyRow,
    Base,
    CredentialRow,
    DeploymentRow,
    IdempotencyKeyRow,
    JobRow,
    KeyGenerationRow,
    QuotaCounterRow,
    QuotaReservationRow,
    UsageAttemptRow,
    UsageRecordRow,
    utcnow,
)

__all__ = [
    "ApiKeyRow", "Base", "CredentialRow", "Database", "DeploymentRow", "IdempotencyKeyRow",
    "JobRow", "KeyGenerationRow", "QuotaCounterRow", "QuotaReservationRow", "UsageAttemptRow",
    "UsageRecordRow",
    "create_engine", "hub_error", "migrate", "rows_changed", "to_the_end", "utcnow",
]
