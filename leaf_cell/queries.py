"""SQL for listing nodes: the parsed filter as WHERE clauses and keyset pagination.

Pages are cut with keyset (seek) pagination, not OFFSET: the page token carries the sort-key
values of the last node returned and the next page starts strictly after them. Page N costs the
same as page 1, and nodes enrolled or deleted between pages neither repeat nor shift the rest.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, false, or_

from common.errors import InvalidArgument
from common.listing import Condition, Filter, OrderBy
from leaf_cell.db.models import NodeRow, PortRow, TraitRow

__all__ = [
    "apply_filter",
    "apply_order",
    "decode_token",
    "encode_token",
    "order_columns",
    "seek_after",
]

_COLUMNS: dict[str, Any] = {
    "name": NodeRow.node_id,
    "resource_class": NodeRow.resource_class,
    "provision_state": NodeRow.provision_state,
    "power_state": NodeRow.power_state,
    "create_time": NodeRow.create_time,
    "update_time": NodeRow.update_time,
    "maintenance": NodeRow.maintenance,
    "uid": NodeRow.uid,
}
_TIME_FIELDS = {"create_time", "update_time"}


def _condition(cond: Condition) -> ColumnElement[bool]:
    if cond.field == "mac":
        return exists().where(PortRow.node_pk == NodeRow.id, PortRow.mac == cond.value)
    if cond.field == "traits":
        has = exists().where(TraitRow.node_pk == NodeRow.id, TraitRow.trait == cond.value)
        return has if cond.op == "has" else ~has
    column = _COLUMNS[cond.field]
    clause: ColumnElement[bool] = column == cond.value if cond.op == "=" else column != cond.value
    return clause


def apply_filter(stmt: Select[Any], flt: Filter) -> Select[Any]:
    for cond in flt.conditions:
        stmt = stmt.where(_condition(cond))
    return stmt


def apply_order(stmt: Select[Any], order: OrderBy) -> Select[Any]:
    return stmt.order_by(
        *(_COLUMNS[k.field].desc() if k.desc else _COLUMNS[k.field].asc() for k in order.keys)
    )


def order_columns(order: OrderBy) -> list[Any]:
    """The columns :func:`sort_values` reads, for a select that reads no others."""
    return list({id(c): c for c in (_COLUMNS[k.field] for k in order.keys)}.values())


def sort_values(row: Any, order: OrderBy) -> list[Any]:
    """The row's sort-key values in JSON-safe form, for the next page token."""
    values: list[Any] = []
    for key in order.keys:
        value = getattr(row, "node_id" if key.field == "name" else key.field)
        if isinstance(value, datetime):
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        values.append(value)
    return values


def seek_after(order: OrderBy, values: list[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in ``order``: (k1 > v1) OR (k1 = v1 AND k2 > v2) …"""
    clauses: list[ColumnElement[bool]] = []
    prefix: list[ColumnElement[bool]] = []
    for key, raw in zip(order.keys, values, strict=True):
        column = _COLUMNS[key.field]
        value = datetime.fromisoformat(raw) if key.field in _TIME_FIELDS else raw
        step = column < value if key.desc else column > value
        clauses.append(and_(*prefix, step) if prefix else step)
        prefix.append(column == value)
    return or_(*clauses) if clauses else false()


def _fingerprint(flt_text: str, order: OrderBy) -> str:
    digest = hashlib.sha256(f"{flt_text.strip()}\n{order.canonical()}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:9]).decode()


def encode_token(flt_text: str, order: OrderBy, values: list[Any]) -> str:
    """An opaque token naming the last row of a page and the query it belongs to."""
    payload = json.dumps(
        {"q": _fingerprint(flt_text, order), "after": values}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_token(token: str, flt_text: str, order: OrderBy) -> list[Any]:
    """The sort-key values inside ``token``; INVALID_ARGUMENT if it is foreign or corrupt."""
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        values = payload["after"]
        query = payload["q"]
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument.field("page_token", "is not a token this cell issued") from None
    if query != _fingerprint(flt_text, order):
        raise InvalidArgument.field(
            "page_token", "belongs to a different filter or order_by; start again without it"
        )
    if not isinstance(values, list) or len(values) != len(order.keys):
        raise InvalidArgument.field("page_token", "is not a token this cell issued")
    for key, value in zip(order.keys, values, strict=True):
        if not isinstance(value, str):
            raise InvalidArgument.field("page_token", "is not a token this cell issued")
        if key.field in _TIME_FIELDS:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise InvalidArgument.field(
                    "page_token", "is not a token this cell issued"
                ) from None
    return values
