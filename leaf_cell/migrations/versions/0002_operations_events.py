"""Operations and node events.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "operations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "node_pk", sa.Integer(), sa.ForeignKey("nodes.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("action", sa.String(24), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("percent", sa.Integer(), nullable=False),
        sa.Column("queue_position", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("update_time", TZ, nullable=False),
    )
    op.create_index("ix_operations_node_pk", "operations", ["node_pk"])
    op.create_index("ix_operations_done", "operations", ["done"])
    op.create_table(
        "node_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("time", TZ, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_node_events_node_id", "node_events", ["node_id"])


def downgrade() -> None:
    op.drop_table("node_events")
    op.drop_table("operations")
