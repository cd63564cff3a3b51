"""Key limits and expiry, quota counters, usage records.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.schema

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("allowed_models", sa.JSON(), nullable=True))
    op.add_column("api_keys", sa.Column("daily_image_quota", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("monthly_image_quota", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("requests_per_minute", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("expires_at", service.db.schema.UtcDateTime(),
                                        nullable=True))
    op.create_table(
        "quota_counters",
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("period", sa.String(8), primary_key=True),
        sa.Column("period_start", service.db.schema.UtcDateTime(), primary_key=True),
        sa.Column("used", sa.Integer(), nullable=False),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", service.db.schema.BigId, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("created_at", service.db.schema.UtcDateTime(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("door", sa.String(8), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("served_model", sa.String(200), nullable=True),
        sa.Column("provider", sa.String(40), nullable=True),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("size", sa.String(32), nullable=True),
        sa.Column("quality", sa.String(32), nullable=True),
        sa.Column("response_format", sa.String(16), nullable=True),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("upstream_ms", sa.Float(), nullable=False),
        sa.Column("total_ms", sa.Float(), nullable=False),
        sa.Column("input_text_tokens", sa.BigInteger(), nullable=True),
        sa.Column("input_image_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_text_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_image_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cost_usd_nanos", sa.BigInteger(), nullable=False),
        sa.Column("cost_credits_nanos", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_usage_records_key_id_day", "usage_records", ["key_id", "day"])
    op.create_index("ix_usage_records_day", "usage_records", ["day"])
    op.create_index("ix_usage_records_key_id_id", "usage_records", ["key_id", "id"])
    op.create_index("ix_usage_records_request_id", "usage_records", ["request_id"])


def downgrade() -> None:
    op.drop_table("usage_records")
    op.drop_table("quota_counters")
    for column in ("expires_at", "requests_per_minute", "monthly_image_quota",
                   "daily_image_quota", "allowed_models"):
        with op.batch_alter_table("api_keys") as batch:
            batch.drop_column(column)
