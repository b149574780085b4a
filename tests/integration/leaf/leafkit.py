"""Helpers for the leaf NodeService tests: node builders, error unpacking, DB access.

Imported by the test modules of this directory (pytest puts the directory on sys.path).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from google.protobuf import message as pb_message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import create_engine, func, select, update
from sqlalchemy.orm import Session

from leaf_cell.config import LeafConfig
from leaf_cell.db.models import Base, NodeRow
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc

CELL = "rack-1"
PARENT = f"cells/{CELL}"
LEAF_BIN = str(Path(sys.executable).with_name("rackcells-leaf"))


def node_name(node_id: str, cell: str = CELL) -> str:
    return f"cells/{cell}/nodes/{node_id}"


def valid_node(**fields: Any) -> node_pb2.Node:
    """A node that passes validation (ipmi BMC with an address, no ports); ``fields`` override."""
    values: dict[str, Any] = {
        "resource_class": "baremetal",
        "properties": node_pb2.NodeProperties(
            cpus=16, memory_mb=65536, local_gb=480, cpu_arch="x86_64"
        ),
        "bmc": node_pb2.BmcInfo(driver="ipmi", address="10.1.0.10", port=623, username="admin"),
    }
    values.update(fields)
    return node_pb2.Node(**values)


def ports(*macs: str, pxe: bool = True) -> list[node_pb2.Port]:
    return [node_pb2.Port(mac=m, pxe_enabled=pxe) for m in macs]


def rpc_error(call: Callable[[Any], Any], request: Any) -> grpc.RpcError:
    """Calls ``call(request)``, which must fail; returns the error."""
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value


def expect_error(code: grpc.StatusCode, call: Callable[[Any], Any], request: Any) -> grpc.RpcError:
    """Calls ``call(request)`` and checks that it fails with ``code``; returns the error."""
    err = rpc_error(call, request)
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
    return err


def _details(err: grpc.RpcError, kind: type[pb_message.Message]) -> list[Any]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return []
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            msg = kind()
            detail.Unpack(msg)
            found.append(msg)
    return found


def violation_fields(err: grpc.RpcError) -> list[str]:
    """The ``field`` of every ``google.rpc.BadRequest`` field violation carried by ``err``."""
    return [
        v.field for bad in _details(err, error_details_pb2.BadRequest) for v in bad.field_violations
    ]


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    infos = _details(err, error_details_pb2.ErrorInfo)
    assert len(infos) == 1, f"expected one ErrorInfo detail, got {infos}"
    return infos[0]


def without(node: node_pb2.Node, *fields: str) -> node_pb2.Node:
    """A copy of ``node`` with ``fields`` cleared, for "everything else unchanged" checks."""
    copy = node_pb2.Node()
    copy.CopyFrom(node)
    for field in fields:
        copy.ClearField(field)
    return copy


class LeafClient:
    """A synchronous client of one leaf, plus direct access to the leaf's database."""

    cell = CELL
    parent = PARENT

    def __init__(self, port: int, db_url: str, key_file: Path) -> None:
        self.port = port
        self.db_url = db_url
        self.key_file = key_file
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = node_service_pb2_grpc.NodeServiceStub(self.channel)
        self.engine = create_engine(db_url)

    def close(self) -> None:
        self.channel.close()
        self.engine.dispose()

    # -- API shortcuts ----------------------------------------------------------------------

    def create(self, node_id: str, node: node_pb2.Node | None = None) -> node_pb2.Node:
        return self.stub.CreateNode(
            node_service_pb2.CreateNodeRequest(
                parent=self.parent, node_id=node_id, node=node if node is not None else valid_node()
            )
        )

    def get(self, node_id: str) -> node_pb2.Node:
        return self.stub.GetNode(node_service_pb2.GetNodeRequest(name=node_name(node_id)))

    def list_pages(self, **request: Any) -> Iterator[node_service_pb2.ListNodesResponse]:
        """Every page of a listing, following next_page_token until it is empty."""
        request.setdefault("parent", self.parent)
        token = request.pop("page_token", "")
        for _ in range(10_000):
            page = self.stub.ListNodes(
                node_service_pb2.ListNodesRequest(page_token=token, **request)
            )
            yield page
            token = page.next_page_token
            if not token:
                return
        raise AssertionError("listing never ended")

    def list_ids(self, **request: Any) -> list[str]:
        """The node ids of a whole listing, in the order returned."""
        return [n.name.rsplit("/", 1)[1] for page in self.list_pages(**request) for n in page.nodes]

    # -- database ----------------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine) as session, session.begin():
            yield session

    def row(self, node_id: str) -> NodeRow | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.scalars(select(NodeRow).where(NodeRow.node_id == node_id)).one_or_none()

    def set_columns(self, node_id: str, **values: Any) -> None:
        """Writes columns of a node's row directly (as the conductor will), bypassing the API."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(NodeRow.__table__)
                .where(NodeRow.__table__.c.node_id == node_id)
                .values(**values)
            )
            assert result.rowcount == 1, f"no row for node {node_id}"

    def wipe(self) -> None:
        """Deletes every row of the leaf's tables (children first)."""
        with self.engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())

    def count_nodes(self) -> int:
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(NodeRow)) or 0

    def snapshot(self) -> dict[str, list[str]]:
        """Every row of every leaf table, for "a rejected call changes nothing" checks."""
        dump: dict[str, list[str]] = {}
        with self.engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                dump[table.name] = sorted(repr(tuple(r)) for r in conn.execute(select(table)))
        return dump

    def seed(self, count: int = 0, rows: list[dict[str, Any]] | None = None) -> None:
        """Inserts nodes straight into the database (fast; skips the API's validation).

        ``count`` nodes named ``n-0000``…, or one node per dict of column overrides in ``rows``
        (each needs a ``node_id``).
        """
        specs = rows if rows is not None else [{"node_id": f"n-{i:04d}"} for i in range(count)]
        now = datetime.now(UTC)
        with self.session() as session:
            for spec in specs:
                values: dict[str, Any] = {
                    "uid": str(uuid.uuid4()),
                    "resource_class": "baremetal",
                    "bmc_driver": "fake",
                    "provision_state": "ENROLL",
                    "create_time": now,
                    "update_time": now,
                    "provision_update_time": now,
                    "cpus": 0,
                    "memory_mb": 0,
                    "local_gb": 0,
                    "cpu_arch": "",
                    "bmc_address": "",
                    "bmc_port": 0,
                    "bmc_username": "",
                    "power_state": "UNSPECIFIED",
                    "target_provision_state": "UNSPECIFIED",
                    "maintenance": False,
                    "maintenance_reason": "",
                    "last_error": "",
                    "instance_info": {},
                    "extra": {},
                    "allocation": "",
                }
                values.update(spec)
                session.add(NodeRow(**values))


def quiet_leaf_settings() -> dict[str, Any]:
    """Settings that switch off the leaf's periodic background work (the power-sync sweep), so
    that the database changes only through the calls a test makes (those LeafConfig has)."""
    names = {f.name for f in dataclasses.fields(LeafConfig)}
    wanted = {"power_sync_interval": 0.0}
    return {k: v for k, v in wanted.items() if k in names}


class LeafProcess:
    """``rackcells-leaf serve`` as a child process, its stderr in a file."""

    def __init__(self, args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.port_file = tmp_path / f"leaf-{id(self)}.port"
        self.stderr_path = tmp_path / f"leaf-{id(self)}.stderr"
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("RACKCELLS_LEAF_")}
        child_env.update(env or {})
        self._stderr = self.stderr_path.open("wb")
        quiet = [f"--{k.replace('_', '-')}={v}" for k, v in quiet_leaf_settings().items()]
        self.proc = subprocess.Popen(
            [LEAF_BIN, "serve", *args, *quiet, "--port-file", str(self.port_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=child_env,
        )
        self.port = 0

    def wait_ready(self, limit: float = 60.0) -> int:
        """Waits until the leaf has written its port file; returns the port."""
        # Waits for readiness (the port file is written once the server is healthy); the limit
        # only stops a broken start from hanging the suite, it is not what the tests check.
        give_up = time.monotonic() + limit
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"rackcells-leaf exited with {self.proc.returncode}:\n{self.stderr()}"
                )
            text = self.port_file.read_text() if self.port_file.exists() else ""
            if text.endswith("\n"):
                self.port = int(text)
                return self.port
            time.sleep(0.05)
        raise AssertionError(f"rackcells-leaf did not write its port file:\n{self.stderr()}")

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


# -- BMC password hygiene ---------------------------------------------------------------------


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


def exercise(
    stub: node_service_pb2_grpc.NodeServiceStub,
    passwords: dict[str, str],
    cell: str = CELL,
) -> Recorder:
    """Every NodeService call that carries or could echo a password, successful and failing,
    against an empty ``cell``."""
    rec = Recorder(stub)
    parent = f"cells/{cell}"

    def bmc(pw: str, **kw: Any) -> node_pb2.BmcInfo:
        return node_pb2.BmcInfo(
            driver="ipmi", address="10.1.0.10", username="admin", password=pw, **kw
        )

    def create(
        node_id: str, node: node_pb2.Node, parent: str = parent
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
    rec.ok("ListNodes", node_service_pb2.ListNodesRequest(parent=parent))
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
        "UpdateNode",
        update(node_pb2.Node(name=node_name("ghost", cell), bmc=bmc(bad)), "bmc.password"),
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
