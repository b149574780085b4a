"""BMC passwords are write-only: never in a response, an error, a log line, or the database
in plaintext (DESIGN.md, Security). Checked in-process (caplog at DEBUG) and against a
``rackcells-leaf serve --log-level DEBUG`` child process (its stderr)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from leafkit import PARENT, LeafClient, LeafProcess, node_name, ports, valid_node

from leaf_cell.db.models import NodeRow
from leaf_cell.secrets import SecretBox
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc


def secret(tag: str) -> str:
    return f"Pw-{tag}-{uuid.uuid4().hex}"


class Recorder:
    """Makes calls, keeping every response and every error for inspection."""

    def __init__(self, stub: node_service_pb2_grpc.NodeServiceStub) -> None:
        self.stub = stub
        self.responses: list[Any] = []
        self.errors: list[grpc.RpcError] = []

    def ok(self, method: str, request: Any) -> Any:
        response = getattr(self.stub, method)(request)
        self.responses.append(response)
        return response

    def fails(self, method: str, request: Any) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            getattr(self.stub, method)(request)
        self.errors.append(info.value)
        return info.value

    def attempt(self, method: str, request: Any) -> None:
        """A call whose outcome this test does not judge (it may succeed or fail)."""
        try:
            self.responses.append(getattr(self.stub, method)(request))
        except grpc.RpcError as err:
            self.errors.append(err)

    def leaks(self, *secrets: str) -> list[str]:
        """Where any of ``secrets`` shows up in what the server sent back."""
        found = []
        for response in self.responses:
            wire = response.SerializeToString()
            text = json_format.MessageToJson(response) + str(response)
            for s in secrets:
                if s.encode() in wire or s in text:
                    found.append(f"response {type(response).__name__}")
        for err in self.errors:
            blobs = [err.details() or "", err.debug_error_string() or "", str(err)]
            for key, value in err.trailing_metadata() or ():
                blobs.append(f"{key}={value!r}")
                if isinstance(value, bytes):
                    blobs.append(value.decode("latin-1"))
            for s in secrets:
                if any(s in b for b in blobs):
                    found.append(f"error {err.code().name}: {err.details()}")
        return found


def exercise(stub: node_service_pb2_grpc.NodeServiceStub, passwords: dict[str, str]) -> Recorder:
    """Every NodeService call that carries or could echo a password, successful and failing."""
    rec = Recorder(stub)

    def bmc(pw: str, **kw: Any) -> node_pb2.BmcInfo:
        return node_pb2.BmcInfo(
            driver="ipmi", address="10.1.0.10", username="admin", password=pw, **kw
        )

    def create(
        node_id: str, node: node_pb2.Node, parent: str = PARENT
    ) -> node_service_pb2.CreateNodeRequest:
        return node_service_pb2.CreateNodeRequest(parent=parent, node_id=node_id, node=node)

    def update(node: node_pb2.Node, *paths: str) -> node_service_pb2.UpdateNodeRequest:
        return node_service_pb2.UpdateNodeRequest(
            node=node, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )

    created = rec.ok(
        "CreateNode",
        create(
            "node-1", valid_node(bmc=bmc(passwords["create"]), ports=ports("52:54:00:00:00:01"))
        ),
    )
    rec.ok("GetNode", node_service_pb2.GetNodeRequest(name=created.name))
    rec.ok("ListNodes", node_service_pb2.ListNodesRequest(parent=PARENT))
    updated = rec.ok(
        "UpdateNode",
        update(node_pb2.Node(name=created.name, bmc=bmc(passwords["update"])), "bmc.password"),
    )
    rec.ok(
        "UpdateNode",
        update(node_pb2.Node(name=created.name, bmc=bmc(passwords["whole-bmc"])), "bmc"),
    )
    rec.ok("GetNode", node_service_pb2.GetNodeRequest(name=created.name))
    rec.ok(
        "ListNodes",
        node_service_pb2.ListNodesRequest(parent="cells/-", filter="provision_state = ENROLL"),
    )
    bad = passwords["rejected"]
    rec.fails("CreateNode", create("node-2", valid_node(bmc=bmc(bad), ports=ports("zz"))))
    rec.fails("CreateNode", create("Node_2", valid_node(bmc=bmc(bad))))
    rec.fails("CreateNode", create("node-1", valid_node(bmc=bmc(bad))))
    rec.fails(
        "CreateNode", create("node-2", valid_node(bmc=bmc(bad), ports=ports("52:54:00:00:00:01")))
    )
    rec.fails("CreateNode", create("node-2", valid_node(bmc=bmc(bad)), parent="cells/rack-2"))
    rec.fails("CreateNode", create("node-2", valid_node(bmc=bmc(passwords["too-long"] * 10))))
    rec.fails(
        "UpdateNode",
        update(node_pb2.Node(name=created.name, etag=created.etag, bmc=bmc(bad)), "bmc.password"),
    )
    rec.fails(
        "UpdateNode", update(node_pb2.Node(name=created.name, bmc=bmc(bad)), "bmc.password", "uid")
    )
    rec.fails(
        "UpdateNode", update(node_pb2.Node(name=node_name("ghost"), bmc=bmc(bad)), "bmc.password")
    )
    rec.fails(
        "UpdateNode",
        update(
            node_pb2.Node(name=created.name, bmc=bmc(passwords["too-long"] * 10)), "bmc.password"
        ),
    )
    rec.fails(
        "UpdateNode", update(node_pb2.Node(name=created.name, bmc=bmc(bad, port=99999)), "bmc")
    )
    rec.fails(
        "DeleteNode", node_service_pb2.DeleteNodeRequest(name=created.name, etag=created.etag)
    )
    # PostgreSQL cannot store NUL in text: whatever the leaf answers (see
    # test_create_node.py), the password must not surface, not even in an internal-error log.
    rec.attempt(
        "CreateNode", create("node-3", valid_node(bmc=bmc(bad), maintenance_reason="nul\x00"))
    )
    assert updated.bmc.password_set
    return rec


def new_passwords() -> dict[str, str]:
    return {tag: secret(tag) for tag in ("create", "update", "whole-bmc", "rejected", "too-long")}


def assert_stored_encrypted(
    engine_url_rows: list[NodeRow], key_file: Path, expected: str, passwords: dict[str, str]
) -> None:
    (row,) = engine_url_rows
    assert row.bmc_password_enc
    for pw in passwords.values():
        assert pw not in row.bmc_password_enc
    assert SecretBox(key_file.read_bytes().strip()).decrypt(row.bmc_password_enc) == expected


def test_bmc_passwords_never_appear_in_responses_errors_logs_or_the_database(
    leaf: LeafClient, caplog: pytest.LogCaptureFixture
) -> None:
    passwords = new_passwords()
    caplog.set_level(logging.DEBUG)
    rec = exercise(leaf.stub, passwords)

    assert rec.leaks(*passwords.values()) == []
    logged = caplog.text + "".join(repr(r.args) + repr(r.__dict__) for r in caplog.records)
    for tag, pw in passwords.items():
        assert pw not in logged, f"the {tag} password was logged"
    dump = repr(leaf.snapshot())
    for tag, pw in passwords.items():
        assert pw not in dump, f"the {tag} password is stored in plaintext"
    row = leaf.row("node-1")
    assert row is not None
    assert_stored_encrypted([row], leaf.key_file, passwords["whole-bmc"], passwords)
    if leaf.db_url.startswith("sqlite:///"):
        path = Path(leaf.db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())
        for pw in passwords.values():
            assert pw.encode() not in raw


def test_a_debug_logging_leaf_process_never_logs_bmc_passwords(
    db_url: str, tmp_path: Path, leaf_process: Callable[..., LeafProcess]
) -> None:
    passwords = new_passwords()
    key_file = tmp_path / "proc.key"
    proc = leaf_process(
        [
            "--cell",
            "rack-1",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db_url,
            "--secret-key-file",
            str(key_file),
            "--log-level",
            "DEBUG",
        ]
    )
    with grpc.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
        rec = exercise(node_service_pb2_grpc.NodeServiceStub(channel), passwords)
    assert proc.stop() == 0
    stderr = proc.stderr()
    assert "DEBUG" in stderr, "the child did not log at DEBUG, so this test would prove nothing"
    assert rec.leaks(*passwords.values()) == []
    for tag, pw in passwords.items():
        assert pw not in stderr, f"the {tag} password is in the leaf's log"
