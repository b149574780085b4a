"""SQL for listing nodes: the parsed filter as WHERE clauses and keyset pagination.

Pages are cut with keyset (seek) pagination, not OFFSET: the page token carries the sort-key
values of the last node returned and the next page starts strictly after them. Page N costs the
same as page 1, and nodes enrolled or deleted between pages neither repeat nor shift the rest.
The token format is :mod:`common.page_tokens`, shared with the top cell, which writes these
tokens itself to resume a leaf in the middle of a page.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, false, or_

from common.listing import Condition, Filter, OrderBy
from common.page_tokens import decode_token, encode_token, token_value, typed_values
from leaf_cell.db.models import NodeRow, PortRow, TraitRow

__all__ = [
    "apply_filter",
    "apply_order",
    "decode_token",
    "encode_token",
    "order_columns",
    "seek_after",
    "sort_values",
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
    """The row's sort-key values in token form, for the next page token."""
    return [
        token_value(getattr(row, "node_id" if k.field == "name" else k.field)) for k in order.keys
    ]


def seek_after(order: OrderBy, values: list[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in ``order``: (k1 > v1) OR (k1 = v1 AND k2 > v2) …"""
    clauses: list[ColumnElement[bool]] = []
    prefix: list[ColumnElement[bool]] = []
    for key, value in zip(order.keys, typed_values(order, values), strict=True):
        column = _COLUMNS[key.field]
        step = column < value if key.desc else column > value
        clauses.append(and_(*prefix, step) if prefix else step)
        prefix.append(column == value)
    return or_(*clauses) if clauses else false()
