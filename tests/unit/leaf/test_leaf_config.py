"""leaf_cell.config.LeafConfig: checks at construction and where the secret key lives."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ConfigError, parse
from leaf_cell.config import ENV_PREFIX, LeafConfig


@pytest.mark.parametrize("cell", ["", "Rack-1", "rack_1", "-rack", "r" * 64])
def test_a_cell_that_is_not_an_rfc1123_label_is_rejected_naming_cell(cell: str) -> None:
    with pytest.raises(ConfigError) as exc:
        LeafConfig(cell=cell)
    assert "cell" in str(exc.value)


@pytest.mark.parametrize("setting", ["workers", "db_pool_size"])
def test_pool_sizes_must_be_at_least_one(setting: str) -> None:
    with pytest.raises(ConfigError) as exc:
        LeafConfig(cell="rack-1", **{setting: 0})
    assert setting in str(exc.value)


def test_the_key_file_setting_wins(tmp_path: Path) -> None:
    config = LeafConfig(cell="rack-1", db="sqlite:///x.db", secret_key_file=str(tmp_path / "k"))
    assert config.key_path() == tmp_path / "k"


def test_the_key_defaults_to_beside_the_sqlite_database(tmp_path: Path) -> None:
    config = LeafConfig(cell="rack-1", db=f"sqlite:///{tmp_path}/leaf.db")
    assert config.key_path() == tmp_path / "leaf.db.key"


def test_an_in_memory_database_uses_a_throw_away_key() -> None:
    assert LeafConfig(cell="rack-1", db="sqlite:///:memory:").key_path() is None


def test_postgresql_requires_a_key_file() -> None:
    config = LeafConfig(cell="rack-1", db="postgresql+psycopg2://u@h/db")
    with pytest.raises(ConfigError) as exc:
        config.key_path()
    assert "secret_key_file" in str(exc.value)


def test_settings_come_from_rackcells_leaf_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RACKCELLS_LEAF_CELL", "rack-9")
    monkeypatch.setenv("RACKCELLS_LEAF_WORKERS", "3")
    config = parse(LeafConfig, ["--listen", "127.0.0.1:0"], ENV_PREFIX, "rackcells-leaf")
    assert (config.cell, config.workers, config.listen) == ("rack-9", 3, "127.0.0.1:0")


def test_the_config_is_frozen() -> None:
    config = LeafConfig(cell="rack-1")
    with pytest.raises(AttributeError):
        config.cell = "rack-2"  # type: ignore[misc]
