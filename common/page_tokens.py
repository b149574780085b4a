"""The leaves' keyset page tokens, for the leaf that issues them and the top that writes them.

A leaf cuts pages by keyset: its token carries the sort-key values of the last node of a page,
bound to a fingerprint of the filter and order_by, and the next page starts strictly after
those values. The top cell resumes a leaf in the middle of a page it used in part by writing
such a token itself (``top_cell.cross_list``), so both must agree on the format byte for byte.
It lives here because ``top_cell`` may not import ``leaf_cell``.

A token is base64url, unpadded, of the JSON ``{"q": <fingerprint>, "after": [<values>]}``. The
values are text: node id, resource class, state names without their enum prefix (as the leaf
stores them) and times as ISO 8601 with their UTC offset. Tokens are held by clients between
calls, so a change to this format makes the tokens already handed out fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import timestamp_pb2

from common.errors import InvalidArgument
from common.listing import OrderBy
from rackcells.v1 import node_pb2

__all__ = [
    "TIME_FIELDS",
    "decode_token",
    "encode_token",
    "fingerprint",
    "node_token_values",
    "node_value",
    "token_value",
    "typed_values",
]

TIME_FIELDS = frozenset({"create_time", "update_time"})
"""order_by fields holding times: ISO 8601 text in a token, compared as instants."""


def fingerprint(filter_text: str, order: OrderBy) -> str:
    """The query a token belongs to: the filter text as sent, less surrounding whitespace, and
    the canonical order_by, so that a token used with another query is refused."""
    digest = hashlib.sha256(f"{filter_text.strip()}\n{order.canonical()}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:9]).decode()


def token_value(value: Any) -> Any:
    """A stored sort value in its token form: times as ISO 8601 (a naive time is UTC, as the
    leaf's SQLite returns them), anything else as it is."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return value


def encode_token(filter_text: str, order: OrderBy, values: Sequence[Any]) -> str:
    """An opaque token naming the last node of a page and the query it belongs to."""
    payload = json.dumps(
        {"q": fingerprint(filter_text, order), "after": list(values)}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _not_issued() -> InvalidArgument:
    return InvalidArgument.field("page_token", "is not a token this cell issued")


def decode_token(token: str, filter_text: str, order: OrderBy) -> list[str]:
    """The sort-key values inside ``token``; INVALID_ARGUMENT naming page_token if it is
    foreign or corrupt. Tokens are not signed, so every value is checked to fit its key here,
    where a bad one is the caller's mistake, rather than failing later inside a query."""
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        values = payload["after"]
        query = payload["q"]
    except (ValueError, KeyError, TypeError):
        raise _not_issued() from None
    if query != fingerprint(filter_text, order):
        raise InvalidArgument.field(
            "page_token", "belongs to a different filter or order_by; start again without it"
        )
    if not isinstance(values, list) or len(values) != len(order.keys):
        raise _not_issued()
    for key, value in zip(order.keys, values, strict=True):
        if not isinstance(value, str):
            raise _not_issued()
        if key.field in TIME_FIELDS:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise _not_issued() from None
    return values


def typed_values(order: OrderBy, values: Sequence[str]) -> list[str | datetime]:
    """Decoded token values as they compare: times as datetimes (equal instants are equal
    whatever their offset), text as it is."""
    return [
        datetime.fromisoformat(v) if k.field in TIME_FIELDS else v
        for k, v in zip(order.keys, values, strict=True)
    ]


def node_value(node: node_pb2.Node, field: str) -> str | timestamp_pb2.Timestamp:
    """A node message's value of an order_by field as the leaf stores and sorts it: the node
    id, strings, state names without the enum prefix (stored as text), and times."""
    if field == "name":
        return node.name.rsplit("/", 1)[-1]
    if field == "resource_class":
        return node.resource_class
    if field == "provision_state":
        return node_pb2.ProvisionState.Name(node.provision_state).removeprefix("PROVISION_STATE_")
    if field == "power_state":
        return node_pb2.PowerState.Name(node.power_state).removeprefix("POWER_STATE_")
    if field in TIME_FIELDS:
        stamp: timestamp_pb2.Timestamp = getattr(node, field)
        return stamp
    raise ValueError(f"cannot sort by {field}")


def node_token_values(node: node_pb2.Node, order: OrderBy) -> list[str] | None:
    """The values a leaf puts in its token for ``node``, or None when the message cannot be
    one of its nodes as stored: the leaf keeps times in microseconds, so a finer time would
    name a position between two of its values."""
    values: list[str] = []
    for key in order.keys:
        value = node_value(node, key.field)
        if isinstance(value, str):
            values.append(value)
            continue
        if value.nanos % 1000:
            return None
        when = datetime.fromtimestamp(value.seconds, UTC)
        values.append(token_value(when + timedelta(microseconds=value.nanos // 1000)))
    return values
