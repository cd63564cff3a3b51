"""Reservations not settled yet, so that a dead process's are given back by a sweep.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.schema

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "quota_reservations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("windows", sa.JSON(), nullable=False),
        sa.Column("expires_at", service.db.schema.UtcDateTime(), nullable=False),
    )
    op.create_index("ix_quota_reservations_expires_at", "quota_reservations", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_quota_reservations_expires_at", "quota_reservations")
    op.drop_table("quota_reservations")
