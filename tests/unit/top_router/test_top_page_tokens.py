"""Cross-cell page tokens: opaque, sealed with the top's key, bound to filter and order_by; an
edited, foreign or mismatched token is refused with INVALID_ARGUMENT naming page_token."""

from __future__ import annotations

import base64

import pytest
from cryptography.fernet import Fernet

from common.errors import InvalidArgument
from common.listing import parse_order_by
from top_cell.cross_list import DONE, DROPPED, Cursor, PageTokens, query_fingerprint

CURSORS = {
    "rack-1": Cursor("leaf-token-1", 3, "node-17"),
    "rack-2": DONE,
    "rack-3": DROPPED,
    "rack-4": Cursor(),
}
QUERY = query_fingerprint('resource_class = "gpu"', parse_order_by("create_time desc"))


def refused(tokens: PageTokens, token: str, query: str = QUERY) -> str:
    with pytest.raises(InvalidArgument) as info:
        tokens.open(token, query)
    assert [v.field for v in info.value.violations] == ["page_token"]
    return info.value.message


def test_sealed_cursors_open_again() -> None:
    tokens = PageTokens(Fernet.generate_key())
    assert tokens.open(tokens.seal(QUERY, CURSORS), QUERY) == CURSORS


def test_token_does_not_show_its_cursors() -> None:
    tokens = PageTokens(Fernet.generate_key())
    token = tokens.seal(QUERY, CURSORS)
    decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for text in ("leaf-token-1", "node-17", "rack-1"):
        assert text not in token
        assert text.encode() not in decoded


def test_a_changed_character_is_refused() -> None:
    tokens = PageTokens(Fernet.generate_key())
    token = tokens.seal(QUERY, CURSORS)
    middle = len(token) // 2
    edited = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    refused(tokens, edited)


@pytest.mark.parametrize("garbage", ["x", "", "gAAAAA", "not base64 !!"])
def test_garbage_is_refused(garbage: str) -> None:
    refused(PageTokens(Fernet.generate_key()), garbage)


def test_a_token_of_another_key_is_refused() -> None:
    """A top restarted with a throw-away key cannot read the tokens it issued before."""
    token = PageTokens(Fernet.generate_key()).seal(QUERY, CURSORS)
    refused(PageTokens(Fernet.generate_key()), token)


@pytest.mark.parametrize(
    ("flt", "order_by"),
    [('resource_class = "cpu"', "create_time desc"), ('resource_class = "gpu"', "create_time")],
)
def test_a_token_of_another_filter_or_order_is_refused(flt: str, order_by: str) -> None:
    tokens = PageTokens(Fernet.generate_key())
    token = tokens.seal(QUERY, CURSORS)
    message = refused(tokens, token, query_fingerprint(flt, parse_order_by(order_by)))
    assert "filter or order_by" in message


def test_equivalent_order_by_spellings_share_tokens() -> None:
    assert query_fingerprint("", parse_order_by("")) == query_fingerprint(
        "", parse_order_by("name asc")
    )


def test_many_cells_still_make_a_reasonable_token() -> None:
    tokens = PageTokens(Fernet.generate_key())
    cursors = {
        f"rack-{i:03d}": Cursor("eyJxIjoiYWJjIiwiYWZ0ZXIiOlsibi0wMDEiXX0", 7, "n-001")
        for i in range(200)
    }
    token = tokens.seal(QUERY, cursors)
    assert tokens.open(token, QUERY) == cursors
    assert len(token) < 8000
