"""Deployments, their encrypted credentials, and each request's upstream attempts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.schema

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("base_url", sa.String(500), nullable=True),
        sa.Column("api_version", sa.String(40), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("model_map", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", service.db.schema.UtcDateTime(), nullable=False),
        sa.Column("cooldown_until", service.db.schema.UtcDateTime(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("last_test_status", sa.String(64), nullable=True),
        sa.Column("last_test_ms", sa.Float(), nullable=True),
        sa.Column("last_test_at", service.db.schema.UtcDateTime(), nullable=True),
    )
    op.create_table(
        "credentials",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("deployment_id", sa.String(40),
                  sa.ForeignKey("deployments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", service.db.schema.UtcDateTime(), nullable=False),
        sa.Column("disabled_reason", sa.String(300), nullable=True),
        sa.Column("disabled_at", service.db.schema.UtcDateTime(), nullable=True),
        sa.Column("cooldown_until", service.db.schema.UtcDateTime(), nullable=True),
    )
    op.create_index("ix_credentials_deployment_id", "credentials", ["deployment_id"])
    op.create_table(
        "usage_attempts",
        sa.Column("id", service.db.schema.BigId, primary_key=True, autoincrement=True),
        sa.Column("record_id", service.db.schema.BigId,
                  sa.ForeignKey("usage_records.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", service.db.schema.UtcDateTime(), nullable=False),
        sa.Column("deployment_id", sa.String(40), nullable=False),
        sa.Column("credential_id", sa.String(40), nullable=True),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("upstream_ms", sa.Float(), nullable=False),
    )
    op.create_index("ix_usage_attempts_record_id", "usage_attempts", ["record_id"])


def downgrade() -> None:
    op.drop_table("usage_attempts")
    op.drop_table("credentials")
    op.drop_table("deployments")
