"""leaf_cell.node_wire: pages assembled as bytes parse like built messages; the cache keys."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from leaf_cell.node_wire import NodeWireCache, list_response
from rackcells.v1 import node_pb2, node_service_pb2


def _row(pk: int, **changes: Any) -> SimpleNamespace:
    row = SimpleNamespace(
        id=pk,
        uid=f"uid-{pk}",
        revision=1,
        power_sync_time=None,
        lock_holder=None,
        lock_purpose=None,
        lock_since=None,
        lock_expires=None,
    )
    for key, value in changes.items():
        setattr(row, key, value)
    return row


def test_a_page_of_bytes_parses_as_the_built_response() -> None:
    nodes = [node_pb2.Node(name=f"cells/c/nodes/n{i}", extra={"x": "y" * i * 40}) for i in range(5)]
    for token in ("", "next-page" * 20):
        data = list_response([n.SerializeToString() for n in nodes], token)
        parsed = node_service_pb2.ListNodesResponse.FromString(data)
        assert parsed == node_service_pb2.ListNodesResponse(nodes=nodes, next_page_token=token)
    assert list_response([], "") == b""


def test_the_cache_serves_only_the_version_it_stored() -> None:
    cache = NodeWireCache()
    cache.put(_row(1), b"v1")
    assert cache.get(_row(1)) == b"v1"
    for changed in (
        {"revision": 2},
        {"uid": "uid-other"},
        {"lock_holder": "c"},
        {"lock_expires": 5},
        {"power_sync_time": 7},
    ):
        assert cache.get(_row(1, **changed)) is None, changed
    assert cache.get(_row(2)) is None
    cache.put(_row(1, revision=2), b"v2")
    assert (cache.get(_row(1)), cache.get(_row(1, revision=2))) == (None, b"v2")
    cache.forget([1])
    assert cache.get(_row(1, revision=2)) is None


def test_the_cache_is_bounded_and_drops_the_oldest() -> None:
    cache = NodeWireCache(capacity=3)
    for pk in range(5):
        cache.put(_row(pk), b"x")
    assert len(cache) == 3
    assert [cache.get(_row(pk)) for pk in range(5)] == [None, None, b"x", b"x", b"x"]
