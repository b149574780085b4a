"""Nodes, ports and traits.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(36), nullable=False, unique=True),
        sa.Column("node_id", sa.String(63), nullable=False, unique=True),
        sa.Column("resource_class", sa.String(80), nullable=False),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.BigInteger(), nullable=False),
        sa.Column("local_gb", sa.BigInteger(), nullable=False),
        sa.Column("cpu_arch", sa.String(32), nullable=False),
        sa.Column("bmc_driver", sa.String(16), nullable=False),
        sa.Column("bmc_address", sa.String(255), nullable=False),
        sa.Column("bmc_port", sa.Integer(), nullable=False),
        sa.Column("bmc_username", sa.String(64), nullable=False),
        sa.Column("bmc_password_enc", sa.Text(), nullable=True),
        sa.Column("power_state", sa.String(16), nullable=False),
        sa.Column("provision_state", sa.String(24), nullable=False),
        sa.Column("target_provision_state", sa.String(24), nullable=False),
        sa.Column("maintenance", sa.Boolean(), nullable=False),
        sa.Column("maintenance_reason", sa.Text(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("instance_info", sa.JSON(), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("last_deploy", sa.JSON(), nullable=True),
        sa.Column("allocation", sa.String(255), nullable=False),
        sa.Column("lock_holder", sa.String(128), nullable=True),
        sa.Column("lock_purpose", sa.String(128), nullable=True),
        sa.Column("lock_since", TZ, nullable=True),
        sa.Column("lock_expires", TZ, nullable=True),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("update_time", TZ, nullable=False),
        sa.Column("provision_update_time", TZ, nullable=False),
        sa.Column("power_sync_time", TZ, nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
    )
    op.create_index("ix_nodes_resource_class", "nodes", ["resource_class"])
    op.create_index("ix_nodes_provision_state", "nodes", ["provision_state"])
    op.create_table(
        "ports",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "node_pk", sa.Integer(), sa.ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("mac", sa.String(17), nullable=False, unique=True),
        sa.Column("pxe_enabled", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_ports_node_pk", "ports", ["node_pk"])
    op.create_table(
        "node_traits",
        sa.Column(
            "node_pk",
            sa.Integer(),
            sa.ForeignKey("nodes.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("trait", sa.String(255), primary_key=True),
    )
    op.create_index("ix_node_traits_trait", "node_traits", ["trait"])


def downgrade() -> None:
    op.drop_table("node_traits")
    op.drop_table("ports")
    op.drop_table("nodes")
