"""The leaf's schema: Alembic migrations run on start, are idempotent, and match the ORM models
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from leafkit import valid_node
from sqlalchemy import Engine, create_engine, inspect, text

import leaf_cell.migrations
from common.db import make_engine
from leaf_cell.db.migrate import current_revision, head_revision, upgrade
from leaf_cell.db.models import Base
from rackcells.v1 import node_service_pb2, node_service_pb2_grpc

SCRIPTS = Path(leaf_cell.migrations.__file__).resolve().parent


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


def schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_the_migrations_have_exactly_one_head() -> None:
    heads = ScriptDirectory(str(SCRIPTS)).get_heads()
    assert len(heads) == 1
    assert heads[0] == head_revision()


def test_starting_a_leaf_migrates_an_empty_database_to_head(
    db_url: str, leaf_runner, engine: Engine
) -> None:
    assert current_revision(engine) is None
    leaf_runner.start(db_url)
    assert current_revision(engine) == head_revision()
    assert {"nodes", "ports", "node_traits", "alembic_version"} <= set(
        inspect(engine).get_table_names()
    )


def test_starting_twice_on_one_database_is_a_no_op_that_keeps_the_data(
    db_url: str, leaf_runner, engine: Engine
) -> None:
    first = leaf_runner.start(db_url)
    with grpc.insecure_channel(f"127.0.0.1:{first.port}") as ch:
        created = node_service_pb2_grpc.NodeServiceStub(ch).CreateNode(
            node_service_pb2.CreateNodeRequest(
                parent="cells/rack-1", node_id="keep-me", node=valid_node()
            )
        )
    leaf_runner.stop(first)
    second = leaf_runner.start(db_url)
    with grpc.insecure_channel(f"127.0.0.1:{second.port}") as ch:
        again = node_service_pb2_grpc.NodeServiceStub(ch).GetNode(
            node_service_pb2.GetNodeRequest(name=created.name)
        )
    assert again == created
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1


def test_upgrade_is_idempotent(db_url: str, engine: Engine) -> None:
    leaf_engine = make_engine(db_url)
    try:
        upgrade(leaf_engine)
        upgrade(leaf_engine)
    finally:
        leaf_engine.dispose()
    assert current_revision(engine) == head_revision()


def test_the_orm_models_match_the_migrated_schema(db_url: str, engine: Engine) -> None:
    leaf_engine = make_engine(db_url)
    try:
        upgrade(leaf_engine)
    finally:
        leaf_engine.dispose()
    assert schema_diff(engine) == []


def test_downgrade_to_base_and_upgrade_again_restores_the_same_schema(
    db_url: str, engine: Engine
) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    assert current_revision(engine) == head_revision()
    assert schema_diff(engine) == []
