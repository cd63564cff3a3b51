"""Idempotency keys and background jobs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.schema

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("idempotency_key", sa.String(255), primary_key=True),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("lease_until", service.db.schema.UtcDateTime(), nullable=False),
        sa.Column("created_at", service.db.schema.UtcDateTime(), nullable=False),
        sa.Column("expires_at", service.db.schema.UtcDateTime(), nullable=False),
        sa.Column("answer", sa.JSON(), nullable=True),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])
    op.create_table(
        "image_jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("door", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("reservation", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("lease_until", service.db.schema.UtcDateTime(), nullable=True),
        sa.Column("created_at", service.db.schema.UtcDateTime(), nullable=False),
        sa.Column("finished_at", service.db.schema.UtcDateTime(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("webhook_url", sa.String(2048), nullable=True),
        sa.Column("webhook_status", sa.String(16), nullable=True),
        sa.Column("webhook_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("webhook_next_at", service.db.schema.UtcDateTime(), nullable=True),
        sa.Column("webhook_error", sa.String(300), nullable=True),
    )
    op.create_index("ix_image_jobs_key_id", "image_jobs", ["key_id"])
    op.create_index("ix_image_jobs_status", "image_jobs", ["status"])


def downgrade() -> None:
    op.drop_table("image_jobs")
    op.drop_table("idempotency_keys")
