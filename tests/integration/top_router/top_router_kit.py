"""Real leaf cells and a real top cell as child processes, for the router's integration tests.

Leaves are ``rackcells-leaf serve`` on SQLite in the test's directory; the top is
``rackcells-top serve`` with a static registry file listing them. Imported by the test modules
of this directory (pytest puts the directory on sys.path).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc

BIN = Path(sys.executable).parent
T = TypeVar("T")


class Proc:
    """A server child process that writes its port to a file once it serves."""

    def __init__(self, name: str, argv: list[str], tmp: Path, env_prefix: str) -> None:
        self.name = name
        self.port_file = tmp / f"{name}.port"
        self.stderr_path = tmp / f"{name}.stderr"
        self.port_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(env_prefix)}
        self._stderr = self.stderr_path.open("ab")
        self.proc = subprocess.Popen(
            [*argv, "--port-file", str(self.port_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=env,
        )
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, limit: float = 60.0) -> int:
        # The limit only keeps a broken start from hanging the suite; it is not what is tested.
        give_up = time.monotonic() + limit
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log()}"
                )
            text = self.port_file.read_text() if self.port_file.exists() else ""
            if text.endswith("\n"):
                self.port = int(text)
                return self.port
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not write its port file:\n{self.log()}")

    def log(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        """Signals this child, by its own PID."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


def start_leaf(cell: str, tmp: Path) -> Proc:
    return Proc(
        cell,
        [
            str(BIN / "rackcells-leaf"),
            "serve",
            "--cell",
            cell,
            "--listen",
            "127.0.0.1:0",
            "--db",
            f"sqlite:///{tmp / cell}.db",
            "--secret-key-file",
            str(tmp / f"{cell}.key"),
            "--power-sync-interval",
            "0",
        ],
        tmp,
        "RACKCELLS_LEAF_",
    )


def start_top(leaves: list[Proc], tmp: Path, *extra: str) -> Proc:
    registry = tmp / "cells.yaml"
    registry.write_text(
        yaml.safe_dump({"cells": [{"name": p.name, "endpoint": p.endpoint} for p in leaves]})
    )
    return Proc(
        "top",
        [
            str(BIN / "rackcells-top"),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            f"sqlite:///{tmp / 'top.db'}",
            "--registry",
            f"static:{registry}",
            *extra,
        ],
        tmp,
        "RACKCELLS_TOP_",
    )


def fake_node(i: int, resource_class: str, mac: str) -> node_pb2.Node:
    return node_pb2.Node(
        resource_class=resource_class,
        traits=["CUSTOM_EVEN"] if i % 2 == 0 else [],
        properties=node_pb2.NodeProperties(cpus=8, memory_mb=16384, local_gb=100),
        bmc=node_pb2.BmcInfo(driver="fake", address=f"10.9.{i // 250}.{i % 250 + 1}"),
        ports=[node_pb2.Port(mac=mac, pxe_enabled=True)] if mac else [],
    )


def eventually(check: Callable[[], T], limit: float = 30.0, what: str = "condition") -> T:
    """Retries ``check`` until it returns without AssertionError/RpcError (readiness only)."""
    give_up = time.monotonic() + limit
    while True:
        try:
            return check()
        except (AssertionError, grpc.RpcError):
            if time.monotonic() > give_up:
                raise
            time.sleep(0.1)


def fails(
    code: grpc.StatusCode, call: Callable[..., Any], request: Any, **kw: Any
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, **kw)
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    return info.value


def status_of(err: grpc.RpcError) -> Any:
    return rpc_status.from_call(err)  # type: ignore[arg-type]


def violation_fields(err: grpc.RpcError) -> list[str]:
    status = status_of(err)
    found: list[str] = []
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [v.field for v in bad.field_violations]
    return found


def list_all(
    stub: node_service_pb2_grpc.NodeServiceStub, **request: Any
) -> Iterator[node_service_pb2.ListNodesResponse]:
    token = ""
    for _ in range(1000):
        page = stub.ListNodes(
            node_service_pb2.ListNodesRequest(page_token=token, **request), timeout=10
        )
        yield page
        token = page.next_page_token
        if not token:
            return
    raise AssertionError("listing never ended")
