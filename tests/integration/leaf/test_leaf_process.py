"""The ``rackcells-leaf serve`` console script as a child process: settings from flags and
environment variables, standard gRPC health checking, server reflection, no BMC password in
its DEBUG log, SIGTERM."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from leafkit import LEAF_BIN, LeafProcess, exercise, new_passwords, valid_node

from rackcells.v1 import node_service_pb2, node_service_pb2_grpc

NODE_SERVICE = "rackcells.v1.NodeService"


@pytest.fixture(scope="module")
def env_leaf(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeafProcess]:
    """A leaf child process whose cell, database, key file and log level (DEBUG) come from
    RACKCELLS_LEAF_* environment variables (only --listen is a flag), on each backend."""
    tmp = tmp_path_factory.mktemp("proc")
    proc = LeafProcess(
        ["--listen", "127.0.0.1:0"],
        tmp,
        env={
            "RACKCELLS_LEAF_CELL": "rack-7",
            "RACKCELLS_LEAF_DB": module_db_url,
            "RACKCELLS_LEAF_SECRET_KEY_FILE": str(tmp / "leaf.key"),
            "RACKCELLS_LEAF_LOG_LEVEL": "DEBUG",
        },
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def channel(env_leaf: LeafProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{env_leaf.port}") as ch:
        yield ch


@pytest.mark.parametrize("service", ["", NODE_SERVICE])
def test_health_check_reports_serving(channel: grpc.Channel, service: str) -> None:
    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service)
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_of_an_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="no.Such"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _reflect(
    channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (response,) = list(stub.ServerReflectionInfo(iter([request])))
    return response


def test_reflection_lists_the_node_service_health_and_reflection(channel: grpc.Channel) -> None:
    response = _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in response.list_services_response.service}
    assert {
        NODE_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_reflection_describes_the_node_service_methods(channel: grpc.Channel) -> None:
    response = _reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=NODE_SERVICE)
    )
    methods = set()
    for blob in response.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto.FromString(blob)
        for service in fd.service:
            if f"{fd.package}.{service.name}" == NODE_SERVICE:
                methods.update(m.name for m in service.method)
    assert {"CreateNode", "GetNode", "ListNodes", "UpdateNode", "DeleteNode"} <= methods


def test_the_cell_named_by_the_environment_is_the_one_served(channel: grpc.Channel) -> None:
    stub = node_service_pb2_grpc.NodeServiceStub(channel)
    created = stub.CreateNode(
        node_service_pb2.CreateNodeRequest(
            parent="cells/rack-7", node_id="env-node", node=valid_node()
        )
    )
    assert created.name == "cells/rack-7/nodes/env-node"
    with pytest.raises(grpc.RpcError) as info:
        stub.GetNode(node_service_pb2.GetNodeRequest(name="cells/rack-1/nodes/env-node"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    stub.DeleteNode(node_service_pb2.DeleteNodeRequest(name=created.name))


def test_a_flag_beats_the_environment_and_sigterm_stops_the_leaf_cleanly(
    tmp_path: Path, leaf_process: Callable[..., LeafProcess]
) -> None:
    proc = leaf_process(
        ["--cell", "rack-8", "--listen", "127.0.0.1:0", "--db", f"sqlite:///{tmp_path / 'f.db'}"],
        env={
            "RACKCELLS_LEAF_CELL": "rack-7",
            "RACKCELLS_LEAF_DB": "sqlite:////nonexistent/dir/x.db",
        },
    )
    with grpc.insecure_channel(f"127.0.0.1:{proc.port}") as ch:
        stub = node_service_pb2_grpc.NodeServiceStub(ch)
        created = stub.CreateNode(
            node_service_pb2.CreateNodeRequest(
                parent="cells/rack-8", node_id="n1", node=valid_node()
            )
        )
        assert created.name == "cells/rack-8/nodes/n1"
    assert (tmp_path / "f.db.key").exists(), "the key file defaults to beside the SQLite database"
    assert proc.stop() == 0
    assert "stopping" in proc.stderr()


@pytest.mark.parametrize(
    ("args", "env", "mentions"),
    [
        (["--cell", "Rack_1"], {}, "cell"),
        ([], {}, "cell"),
        (["--cell", "rack-1"], {"RACKCELLS_LEAF_WORKERS": "many"}, "workers"),
        (["--cell", "rack-1", "--workers", "0"], {}, "workers"),
    ],
    ids=["bad-cell", "no-cell", "env-not-a-number", "zero-workers"],
)
def test_bad_settings_exit_with_usage_error_naming_the_setting(
    tmp_path: Path, args: list[str], env: dict[str, str], mentions: str
) -> None:
    result = subprocess.run(
        [
            LEAF_BIN,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            f"sqlite:///{tmp_path / 'x.db'}",
            *args,
        ],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert mentions in result.stderr
    assert not (tmp_path / "x.db").exists(), "a leaf with bad settings must not touch the database"


def test_a_leaf_logging_at_debug_never_logs_or_returns_bmc_passwords(
    env_leaf: LeafProcess, channel: grpc.Channel
) -> None:
    passwords = new_passwords()
    rec = exercise(node_service_pb2_grpc.NodeServiceStub(channel), passwords, cell="rack-7")
    # Read the log only once the leaf has answered a later call: every line before it is out.
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    stderr = env_leaf.stderr()
    assert " DEBUG " in stderr, "the leaf did not log at DEBUG, so this test would prove nothing"
    assert rec.leaks(*passwords.values()) == []
    for tag, pw in passwords.items():
        assert pw not in stderr, f"the {tag} password is in the leaf's log"
