"""Deploy phase and progress on node events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("node_events") as batch:
        batch.add_column(sa.Column("phase", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("percent", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("node_events") as batch:
        batch.drop_column("percent")
        batch.drop_column("phase")
