"""common.config: every setting resolves flag > environment variable > file > default."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.config import ConfigError, add_arguments, from_namespace, setting

PREFIX = "SAMPLE"


@dataclass(frozen=True)
class Sample:
    name: str = setting("default-name", "a string")
    count: int = setting(1, "an integer")
    ratio: float = setting(0.5, "a float")
    enabled: bool = setting(False, "a boolean")


def load(argv: list[str], environ: dict[str, str] | None = None) -> Sample:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Sample, PREFIX)
    return from_namespace(Sample, parser.parse_args(argv), PREFIX, environ or {})


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sample.yaml"
    path.write_text("name: from-file\ncount: 3\nratio: 0.25\nenabled: true\n")
    return path


def test_defaults_apply_when_nothing_is_given() -> None:
    assert load([]) == Sample()


def test_the_file_beats_the_defaults(config_file: Path) -> None:
    assert load(["--config", str(config_file)]) == Sample("from-file", 3, 0.25, True)


def test_the_environment_beats_the_file(config_file: Path) -> None:
    env = {"SAMPLE_NAME": "from-env", "SAMPLE_COUNT": "4", "SAMPLE_ENABLED": "false"}
    assert load(["--config", str(config_file)], env) == Sample("from-env", 4, 0.25, False)


def test_a_flag_beats_the_environment_and_the_file(config_file: Path) -> None:
    env = {"SAMPLE_NAME": "from-env", "SAMPLE_COUNT": "4", "SAMPLE_ENABLED": "false"}
    argv = ["--config", str(config_file), "--name", "from-flag", "--enabled"]
    assert load(argv, env) == Sample("from-flag", 4, 0.25, True)


def test_a_negative_boolean_flag_beats_a_true_environment_variable() -> None:
    assert load(["--no-enabled"], {"SAMPLE_ENABLED": "yes"}).enabled is False


def test_the_config_file_can_be_named_by_the_environment(config_file: Path) -> None:
    assert load([], {"SAMPLE_CONFIG": str(config_file)}).name == "from-file"


def test_an_empty_environment_value_still_counts_as_set() -> None:
    assert load([], {"SAMPLE_NAME": ""}).name == ""


@pytest.mark.parametrize("raw", ["1", "true", "YES", "on"])
def test_true_spellings_in_the_environment(raw: str) -> None:
    assert load([], {"SAMPLE_ENABLED": raw}).enabled is True


@pytest.mark.parametrize(
    ("argv", "env", "mentions"),
    [
        (["--count", "many"], {}, "--count"),
        ([], {"SAMPLE_COUNT": "many"}, "SAMPLE_COUNT"),
        ([], {"SAMPLE_ENABLED": "perhaps"}, "SAMPLE_ENABLED"),
        ([], {"SAMPLE_RATIO": "half"}, "SAMPLE_RATIO"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_setting_and_its_source(
    argv: list[str], env: dict[str, str], mentions: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load(argv, env)
    assert mentions in str(exc.value)


def test_an_unknown_setting_in_the_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ncolour: blue\n")
    with pytest.raises(ConfigError) as exc:
        load(["--config", str(path)])
    assert "colour" in str(exc.value)


def test_a_file_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError):
        load(["--config", str(path)])


def test_the_help_names_each_environment_variable_and_default() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Sample, PREFIX)
    text = parser.format_help()
    for env in ("SAMPLE_NAME", "SAMPLE_COUNT", "SAMPLE_RATIO", "SAMPLE_ENABLED"):
        assert env in text
    assert "default-name" in text
