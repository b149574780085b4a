"""List semantics shared by both cells: the filter language, order_by, page sizes.

The filter is a small subset of AIP-160, enough for operators and schedulers and cheap to turn
into indexed SQL: conditions joined by ``AND``; ``field = value`` / ``field != value`` for
``provision_state``, ``power_state``, ``resource_class``, ``maintenance`` and ``uid``;
``mac = "…"``; ``traits:"X"`` (has) and ``-traits:"X"`` (has not). Parsing lives here, not
in the leaf, because the top cell must reject a bad filter itself rather than fan it out,
and must know the sort keys to merge pages.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Literal

from common.errors import InvalidArgument

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Condition",
    "Filter",
    "OrderBy",
    "OrderKey",
    "page_size",
    "parse_filter",
    "parse_order_by",
]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_PROVISION_STATES = {
    "ENROLL",
    "VERIFYING",
    "MANAGEABLE",
    "CLEANING",
    "CLEAN_FAILED",
    "AVAILABLE",
    "DEPLOYING",
    "WAIT_CALL_BACK",
    "DEPLOY_FAILED",
    "ACTIVE",
    "DELETING",
    "ERROR",
}
_POWER_STATES = {"ON", "OFF", "UNKNOWN", "UNSPECIFIED"}
_ORDER_FIELDS = (
    "name",
    "resource_class",
    "provision_state",
    "power_state",
    "create_time",
    "update_time",
)

Op = Literal["=", "!=", "has", "has_not"]


@dataclass(frozen=True)
class Condition:
    field: str
    op: Op
    value: str | bool


@dataclass(frozen=True)
class Filter:
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class OrderKey:
    field: str
    desc: bool = False


@dataclass(frozen=True)
class OrderBy:
    """Sort keys; always ends with ``name`` so that the order is total (names are unique)."""

    keys: tuple[OrderKey, ...]

    def canonical(self) -> str:
        return ",".join(f"{k.field} desc" if k.desc else k.field for k in self.keys)


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", f"must not be negative, got {requested}")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


_TERM = re.compile(r"^(-?)([a-z_]+)\s*(!=|=|:)\s*(.+)$", re.DOTALL)


def _unquote(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if any(c.isspace() for c in raw):
        raise InvalidArgument.field("filter", f"value {raw!r} must be quoted")
    return raw


def _enum_value(field: str, raw: str, allowed: set[str], prefix: str) -> str:
    value = raw.upper()
    if value.startswith(prefix):
        value = value[len(prefix) :]
    if value not in allowed:
        raise InvalidArgument.field(
            "filter", f"{field} has no value {raw!r} (one of {', '.join(sorted(allowed))})"
        )
    return value


def _split_and(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=False)
    lexer.whitespace_split = True
    lexer.commenters = ""
    terms: list[list[str]] = [[]]
    try:
        for token in lexer:
            if token == "AND":
                terms.append([])
            elif token == "OR":
                raise InvalidArgument.field(
                    "filter", "OR is not supported; conditions are joined by AND"
                )
            else:
                terms[-1].append(token)
    except ValueError as exc:
        raise InvalidArgument.field("filter", f"cannot parse: {exc}") from None
    return [" ".join(t) for t in terms]


def parse_filter(text: str) -> Filter:
    """Parses and validates a filter expression; raises INVALID_ARGUMENT naming ``filter``."""
    text = text.strip()
    if not text:
        return Filter()
    conditions: list[Condition] = []
    for term in _split_and(text):
        match = _TERM.match(term.strip())
        if not match:
            raise InvalidArgument.field("filter", f"cannot parse condition {term.strip()!r}")
        negate, field, op, raw = match.groups()
        value = _unquote(raw)
        if field == "traits":
            if op != ":":
                raise InvalidArgument.field("filter", 'use traits:"TRAIT" or -traits:"TRAIT"')
            conditions.append(Condition("traits", "has_not" if negate else "has", value))
            continue
        if negate or op == ":":
            raise InvalidArgument.field("filter", f"{field} supports = and != only")
        cmp: Op = "=" if op == "=" else "!="
        if field == "provision_state":
            conditions.append(
                Condition(
                    field, cmp, _enum_value(field, value, _PROVISION_STATES, "PROVISION_STATE_")
                )
            )
        elif field == "power_state":
            conditions.append(
                Condition(field, cmp, _enum_value(field, value, _POWER_STATES, "POWER_STATE_"))
            )
        elif field in ("resource_class", "uid"):
            conditions.append(Condition(field, cmp, value))
        elif field == "mac":
            if cmp != "=":
                raise InvalidArgument.field("filter", "mac supports = only")
            conditions.append(Condition(field, cmp, value.lower().replace("-", ":")))
        elif field == "maintenance":
            if value.lower() not in {"true", "false"}:
                raise InvalidArgument.field(
                    "filter", f"maintenance must be true or false, got {value!r}"
                )
            conditions.append(Condition(field, cmp, value.lower() == "true"))
        else:
            raise InvalidArgument.field(
                "filter",
                f"unknown field {field!r} (provision_state, power_state, resource_class, "
                "maintenance, traits, uid, mac)",
            )
    return Filter(tuple(conditions))


def parse_order_by(text: str) -> OrderBy:
    """Parses ``field [desc], …``; appends ``name`` as the final tie-breaker."""
    keys: list[OrderKey] = []
    seen: set[str] = set()
    for part in (p.strip() for p in text.split(",")) if text.strip() else []:
        words = part.split()
        if (
            not words
            or len(words) > 2
            or (len(words) == 2 and words[1].lower() not in {"asc", "desc"})
        ):
            raise InvalidArgument.field("order_by", f"cannot parse {part!r} (FIELD [asc|desc])")
        field = words[0]
        if field not in _ORDER_FIELDS:
            raise InvalidArgument.field(
                "order_by", f"cannot sort by {field!r} (one of {', '.join(_ORDER_FIELDS)})"
            )
        if field in seen:
            raise InvalidArgument.field("order_by", f"{field} appears twice")
        seen.add(field)
        keys.append(OrderKey(field, len(words) == 2 and words[1].lower() == "desc"))
    if "name" not in seen:
        keys.append(OrderKey("name"))
    return OrderBy(tuple(keys))
