"""common.errors and common.grpc_errors.status_of: each error becomes a google.rpc.Status with
its code, ErrorInfo and, for bad input, a BadRequest listing every field."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.rpc import code_pb2, error_details_pb2

from common.errors import (
    AlreadyExists,
    EtagMismatch,
    FieldViolation,
    InvalidArgument,
    NodeLocked,
    NotFound,
)
from common.grpc_errors import status_of


def unpack(status, kind):
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            msg = kind()
            detail.Unpack(msg)
            found.append(msg)
    return found


def test_invalid_argument_carries_every_violation_in_a_bad_request() -> None:
    err = InvalidArgument.of(
        [FieldViolation("node_id", "is required"), FieldViolation("node.ports[0].mac", "bad")]
    )
    status = status_of(err)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "node_id: is required" in status.message
    assert "node.ports[0].mac: bad" in status.message
    (bad,) = unpack(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("node_id", "is required"),
        ("node.ports[0].mac", "bad"),
    ]
    (info,) = unpack(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "rackcells.io")


def test_errors_without_violations_carry_no_bad_request_but_their_metadata() -> None:
    status = status_of(AlreadyExists("MAC taken", metadata={"mac": "aa:bb:cc:dd:ee:ff", "n": 3}))
    assert status.code == code_pb2.ALREADY_EXISTS
    assert unpack(status, error_details_pb2.BadRequest) == []
    (info,) = unpack(status, error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == {"mac": "aa:bb:cc:dd:ee:ff", "n": "3"}


def test_each_error_class_maps_to_its_grpc_code() -> None:
    assert NotFound("x").code == grpc.StatusCode.NOT_FOUND
    assert EtagMismatch(given="e", name="n").code == grpc.StatusCode.ABORTED
    assert (
        NodeLocked(name="n", holder="h", purpose="p", since="s").code
        == grpc.StatusCode.FAILED_PRECONDITION
    )


def test_templated_messages_name_their_parameters() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    locked = NodeLocked(name="cells/r/nodes/n", holder="conductor:r", purpose="deploy", since=since)
    assert "conductor:r" in locked.message
    assert "deploy" in locked.message
    assert "cells/r/nodes/n" in locked.message
    assert locked.reason == "NODE_LOCKED"
    stale = EtagMismatch(given="abc", name="cells/r/nodes/n")
    assert "'abc'" in stale.message
    assert status_of(stale).code == code_pb2.ABORTED
