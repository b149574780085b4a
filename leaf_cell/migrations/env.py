"""Alembic environment for the leaf schema; run through leaf_cell.db.migrate, never alembic.ini."""

from __future__ import annotations

from alembic import context

from leaf_cell.db.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
