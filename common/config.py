"""Typed, frozen configuration objects filled from flags, environment variables and a file.

A component declares one frozen dataclass whose fields carry their help text in
``field(metadata={"help": ...})``. :func:`load` builds an ``argparse`` parser from it and
resolves each field in this order: command-line flag, environment variable
(``PREFIX_FIELD_NAME``), the YAML file named by ``--config``, the dataclass default. There is no
global config object: the result is passed to whatever needs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["ConfigError", "add_arguments", "from_namespace", "setting"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


def setting(default: Any, help: str) -> Any:
    """A config field with its help text."""
    return dataclasses.field(default=default, metadata={"help": help})


def _field_type(cls: type[Any], f: dataclasses.Field[Any]) -> Any:
    hints = typing.get_type_hints(cls)
    tp = hints[f.name]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any], env_prefix: str) -> None:
    """Adds one flag per field of ``cls`` (plus ``--config``) to ``parser``."""
    parser.add_argument("--config", help="YAML file with settings (keys are the field names)")
    for f in dataclasses.fields(cls):
        env = f"{env_prefix}_{f.name.upper()}"
        help_text = f"{f.metadata.get('help', '')} [env {env}; default {f.default!r}]"
        tp = _field_type(cls, f)
        if tp is bool:
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            parser.add_argument(_flag(f.name), dest=f.name, default=None, help=help_text)


def _convert(cls: type[Any], f: dataclasses.Field[Any], raw: Any, source: str) -> Any:
    tp = _field_type(cls, f)
    if raw is None:
        return None
    try:
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
        if tp is Path:
            return Path(str(raw))
        return str(raw)
    except ValueError as exc:
        raise ConfigError(f"{f.name} (from {source}): {exc}") from exc


def from_namespace(
    cls: type[T],
    ns: argparse.Namespace,
    env_prefix: str,
    environ: typing.Mapping[str, str] | None = None,
) -> T:
    """Resolves every field of ``cls``: flag, then environment, then file, then default."""
    environ = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    config_file = getattr(ns, "config", None) or environ.get(f"{env_prefix}_CONFIG")
    if config_file:
        loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file}: expected a mapping of settings")
        file_values = loaded
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise ConfigError(f"config file {config_file}: unknown settings {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        env = f"{env_prefix}_{f.name.upper()}"
        flag_value = getattr(ns, f.name, None)
        if flag_value is not None:
            values[f.name] = _convert(cls, f, flag_value, _flag(f.name))
        elif env in environ:
            values[f.name] = _convert(cls, f, environ[env], env)
        elif f.name in file_values:
            values[f.name] = _convert(cls, f, file_values[f.name], str(config_file))
    return cls(**values)


def parse(cls: type[T], argv: Sequence[str], env_prefix: str, prog: str) -> T:
    """Convenience for tests: parse ``argv`` into ``cls``."""
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser, cls, env_prefix)
    return from_namespace(cls, parser.parse_args(list(argv)), env_prefix)
