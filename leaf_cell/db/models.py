"""SQLAlchemy models of the leaf cell's database.

A leaf holds one rack, so the schema favours simple, indexed look-ups over generality: ports and
traits are rows (MAC uniqueness and trait filters are then plain indexed SQL), free-form
structures (extra, instance info, last deploy timings) are JSON. ``revision`` is SQLAlchemy's
version counter: every ORM update is ``UPDATE … WHERE revision = :seen``, which gives etags and
lost-update detection without extra reads. The lock columns are written by conditional UPDATEs
that bypass the ORM on purpose and do not touch ``revision``: taking a lock is not a change an
API client should have to re-read for.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["AllocationRow", "Base", "EventRow", "NodeRow", "OperationRow", "PortRow", "TraitRow"]


class Base(DeclarativeBase):
    """Declarative base of the leaf schema."""


class NodeRow(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    node_id: Mapped[str] = mapped_column(String(63), unique=True)
    resource_class: Mapped[str] = mapped_column(String(80), index=True)
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mb: Mapped[int] = mapped_column(BigInteger, default=0)
    local_gb: Mapped[int] = mapped_column(BigInteger, default=0)
    cpu_arch: Mapped[str] = mapped_column(String(32), default="")
    bmc_driver: Mapped[str] = mapped_column(String(16))
    bmc_address: Mapped[str] = mapped_column(String(255), default="")
    bmc_port: Mapped[int] = mapped_column(Integer, default=0)
    bmc_username: Mapped[str] = mapped_column(String(64), default="")
    bmc_password_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    power_state: Mapped[str] = mapped_column(String(16), default="UNSPECIFIED")
    provision_state: Mapped[str] = mapped_column(String(24), index=True)
    target_provision_state: Mapped[str] = mapped_column(String(24), default="UNSPECIFIED")
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False)
    maintenance_reason: Mapped[str] = mapped_column(Text, default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    instance_info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    extra: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    last_deploy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    allocation: Mapped[str] = mapped_column(String(255), default="")
    lock_holder: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lock_purpose: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lock_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    lock_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    provision_update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    power_sync_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revision: Mapped[int] = mapped_column(Integer, nullable=False)

    ports: Mapped[list[PortRow]] = relationship(
        back_populates="node",
        cascade="all, delete-orphan",
        order_by="PortRow.id",
        passive_deletes=True,
    )
    trait_rows: Mapped[list[TraitRow]] = relationship(
        cascade="all, delete-orphan",
        order_by="TraitRow.trait",
        passive_deletes=True,
    )

    __mapper_args__ = {"version_id_col": revision}


class PortRow(Base):
    __tablename__ = "ports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_pk: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    pxe_enabled: Mapped[bool] = mapped_column(Boolean, default=True)

    node: Mapped[NodeRow] = relationship(back_populates="ports")


class TraitRow(Base):
    __tablename__ = "node_traits"

    node_pk: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    trait: Mapped[str] = mapped_column(String(255), primary_key=True)

    __table_args__ = (Index("ix_node_traits_trait", "trait"),)


class OperationRow(Base):
    """A long-running operation (AIP-151), kept in the leaf that runs it."""

    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node_pk: Mapped[int | None] = mapped_column(
        ForeignKey("nodes.id", ondelete="SET NULL"), nullable=True, index=True
    )
    node_id: Mapped[str] = mapped_column(String(63))
    action: Mapped[str] = mapped_column(String(24))
    done: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    phase: Mapped[str] = mapped_column(String(32), default="")
    percent: Mapped[int] = mapped_column(Integer, default=0)
    queue_position: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[int] = mapped_column(Integer, default=0)
    error_message: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EventRow(Base):
    """Something that happened to a node: a transition, an out-of-band power change, a failure.

    The id is a cell-wide, increasing revision, so a watcher can resume after the last one seen.
    """

    __tablename__ = "node_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(63), index=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    phase: Mapped[str] = mapped_column(String(32), default="")
    percent: Mapped[int] = mapped_column(Integer, default=0)


class AllocationRow(Base):
    """A claim on one node by a parent scheduler (the node's ``allocation`` names it)."""

    __tablename__ = "allocations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(63), index=True)
    resource_class: Mapped[str] = mapped_column(String(80))
    required_traits: Mapped[list[str]] = mapped_column(JSON, default=list)
    forbidden_traits: Mapped[list[str]] = mapped_column(JSON, default=list)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
