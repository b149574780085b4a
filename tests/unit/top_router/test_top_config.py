"""The top cell's settings and command line: the registry must be given, flags beat environment
variables, and the page-token key lives beside the SQLite database (or only in memory)."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest

from common.config import ConfigError, add_arguments, from_namespace
from top_cell.config import ENV_PREFIX, TopConfig
from top_cell.main import main
from top_cell.server import page_token_key


def load(argv: list[str], environ: dict[str, str] | None = None) -> TopConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser, TopConfig, ENV_PREFIX)
    return from_namespace(TopConfig, parser.parse_args(argv), ENV_PREFIX, environ or {})


def test_the_registry_is_required() -> None:
    with pytest.raises(ConfigError, match="registry is required"):
        load([])


def test_an_unknown_registry_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="neither static:FILE nor zk://"):
        load(["--registry", "etcd://x"])


def test_flags_environment_and_defaults() -> None:
    config = load(
        ["--registry", "static:cells.yaml", "--fanout-timeout", "2.5"],
        {"RACKCELLS_TOP_FANOUT_TIMEOUT": "9", "RACKCELLS_TOP_LISTEN": "127.0.0.1:7100"},
    )
    assert config.registry == "static:cells.yaml"
    assert config.fanout_timeout == 2.5
    assert config.listen == "127.0.0.1:7100"
    assert config.db == "sqlite:///rackcells-top.db"
    assert load([], {"RACKCELLS_TOP_REGISTRY": "zk://127.0.0.1:2181/rackcells"}).registry


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--fanout-timeout", "0"], "fanout_timeout"),
        (["--listen", "nowhere"], "listen"),
        (["--log-level", "chatty"], "log_level"),
    ],
)
def test_bad_values_name_their_setting(argv: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load(["--registry", "static:c.yaml", *argv])


def test_key_file_beside_the_sqlite_database(tmp_path: Path) -> None:
    config = TopConfig(registry="static:c.yaml", db=f"sqlite:///{tmp_path / 'top.db'}")
    assert config.key_path() == tmp_path / "top.db.key"
    key = page_token_key(config)
    path = tmp_path / "top.db.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert page_token_key(config) == key, "the same key after a restart"


def test_explicit_key_file_and_throw_away_key(tmp_path: Path) -> None:
    explicit = TopConfig(
        registry="static:c.yaml",
        db="postgresql+psycopg2://u@h/db",
        secret_key_file=str(tmp_path / "k"),
    )
    assert explicit.key_path() == tmp_path / "k"
    memory = TopConfig(registry="static:c.yaml", db="postgresql+psycopg2://u@h/db")
    assert memory.key_path() is None
    assert page_token_key(memory) != page_token_key(memory)


def test_serve_without_a_registry_explains_what_is_missing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RACKCELLS_TOP_REGISTRY", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["serve", "--listen", "127.0.0.1:0"])
    assert info.value.code == 2
    assert "registry is required" in capsys.readouterr().err


def test_serve_with_a_missing_registry_file_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    code = main(
        [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            f"sqlite:///{tmp_path / 'top.db'}",
            "--registry",
            f"static:{missing}",
        ]
    )
    assert code == 1
    assert str(missing) in capsys.readouterr().err
