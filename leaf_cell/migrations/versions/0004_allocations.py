"""Allocations.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "allocations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("resource_class", sa.String(80), nullable=False),
        sa.Column("required_traits", sa.JSON(), nullable=False),
        sa.Column("forbidden_traits", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_allocations_node_id", "allocations", ["node_id"])


def downgrade() -> None:
    op.drop_table("allocations")
