"""Deploys answer the same directly at a leaf and through the top cell: ChangeProvisionState
DEPLOY returns an operation that WaitOperation follows to ACTIVE, WatchNodes streams the deploy
phases, the node records the per-phase timings, the disk holds the image, and UNDEPLOY brings the
node back to AVAILABLE.

This module has its own leaf (``conf-d``, with a boot HTTP server), a simulated rack whose IPMI
BMCs boot machines from that leaf and run the real deploy agent against disk files, a local
image source, and a top cell in front of ``conf-d`` and the session's second leaf. Each run of
the test body deploys two machines of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conformance_kit import (
    OTHER_CELL,
    PA,
    PS,
    WAIT_GUARD,
    Api,
    Federation,
    eventually,
    start_leaf,
    start_top,
    write_static_registry,
)
from google.protobuf import json_format

from rackcells.sim.harness import RunningSim, start_rack
from rackcells.v1 import cell_service_pb2, node_pb2, node_service_pb2

DEPLOY_CELL = "conf-d"
PHASES = ["queued", "image_cache", "power_on", "pxe", "agent_lookup", "image_write", "reboot"]
IMAGE_SIZE = 1 << 20
MACHINES = {"leaf": (0, 1), "top": (2, 3)}

pytestmark = pytest.mark.slow


class ImageSource:
    """Serves one directory over HTTP on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Rack:
    sim: RunningSim
    disks: Path
    image: node_pb2.InstanceInfo
    channels: dict[str, grpc.Channel]

    def api(self, kind: str) -> Api:
        target = "top" if kind == "top" else DEPLOY_CELL
        return Api(kind, DEPLOY_CELL, self.channels[target], self.channels[DEPLOY_CELL])

    def node(self, index: int) -> tuple[str, node_pb2.Node]:
        entry = dict(self.sim.inventory[index])
        node_id = str(entry.pop("name"))
        return node_id, json_format.ParseDict(entry, node_pb2.Node())


@pytest.fixture(scope="module")
def rack(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rack]:
    tmp = tmp_path_factory.mktemp("deploy")
    (tmp / "source").mkdir()
    data = os.urandom(IMAGE_SIZE)
    (tmp / "source" / "os.img").write_bytes(data)
    http_port = _free_port()
    with contextlib.ExitStack() as stack:
        image = ImageSource(tmp / "source")
        stack.callback(image.stop)
        leaf = start_leaf(
            DEPLOY_CELL, tmp, "--http-listen", f"127.0.0.1:{http_port}", "--power-on-rate", "0"
        )
        stack.callback(leaf.stop)
        leaf.wait_ready()
        sim = start_rack(
            4,
            tmp / "sim",
            "--post-seconds",
            "0.2",
            "--boot-url",
            f"http://127.0.0.1:{http_port}",
            "--disk-dir",
            str(tmp / "disks"),
            prefix="cd-n",
        )
        stack.callback(sim.reap_workers)
        stack.callback(sim.stop)
        registry = write_static_registry(
            tmp / "cells.yaml",
            {DEPLOY_CELL: leaf.endpoint, OTHER_CELL: federation.leaves[OTHER_CELL].endpoint},
        )
        top = start_top(registry, tmp, name="deploy-top")
        stack.callback(top.stop)
        top.wait_ready()
        channels = {
            name: stack.enter_context(grpc.insecure_channel(proc.endpoint))
            for name, proc in ((DEPLOY_CELL, leaf), ("top", top))
        }
        checksum = "sha256:" + hashlib.sha256(data).hexdigest()
        info = node_pb2.InstanceInfo(image_url=f"{image.url}/os.img", image_checksum=checksum)
        built = Rack(sim, tmp / "disks", info, channels)
        eventually(
            lambda: _state_is_up(built.api("top")), f"the top to see {DEPLOY_CELL} up", WAIT_GUARD
        )
        yield built


def _state_is_up(api: Api) -> None:
    cell = api.cells.GetCell(cell_service_pb2.GetCellRequest(name=api.parent), timeout=5)
    assert cell.state == cell_service_pb2.CELL_STATE_UP


@pytest.fixture(params=["leaf", "top"])
def deploy_api(request: pytest.FixtureRequest, rack: Rack) -> Api:
    return rack.api(str(request.param))


def test_deploy_runs_to_active_with_phases_and_undeploy_returns_the_node(
    deploy_api: Api, rack: Rack
) -> None:
    api = deploy_api
    ids = []
    for index in MACHINES[api.kind]:
        node_id, node = rack.node(index)
        api.create(node_id, node)
        api.make_available(node_id)
        ids.append(node_id)
    names = [api.name(i) for i in ids]
    events = api.nodes.WatchNodes(
        node_service_pb2.WatchNodesRequest(parent=api.parent, names=names, since_revision=0),
        timeout=WAIT_GUARD * 3,
    )
    ops = [api.change(i, PA.PROVISION_ACTION_DEPLOY, instance_info=rack.image) for i in ids]
    assert all(op.name.startswith(f"cells/{DEPLOY_CELL}/operations/") for op in ops)

    # The watch replays these nodes' events from the start, so nothing races with its start.
    phases: dict[str, list[str]] = {n: [] for n in names}
    ended: dict[str, str] = {}
    try:
        for event in events:
            seen = phases[event.node]
            if event.kind == "phase" and (not seen or seen[-1] != event.phase):
                seen.append(event.phase)
            if event.kind == "provision" and event.detail.endswith(
                ("-> ACTIVE", "-> DEPLOY_FAILED")
            ):
                ended[event.node] = event.detail.rsplit(" ", 1)[1]
            if len(ended) == len(names):
                break
    finally:
        events.cancel()
    assert ended == dict.fromkeys(names, "ACTIVE"), phases

    for op in ops:
        done = api.wait(op)
        assert done.done and not done.HasField("error"), done.error
    checksum = rack.image.image_checksum
    for node_id, name in zip(ids, names, strict=True):
        node = api.get(node_id)
        assert node.provision_state == PS.PROVISION_STATE_ACTIVE, node.last_error
        assert [p.phase for p in node.last_deploy.phases] == PHASES
        assert node.instance_info.image_checksum == checksum
        # The stream shows every phase as it starts (and a last "active" mark, maybe after the
        # ACTIVE transition the loop stopped at).
        assert [p for p in phases[name] if p != "active"] == PHASES, phases[name]
        disk = (rack.disks / f"{node_id}.img").read_bytes()[:IMAGE_SIZE]
        assert "sha256:" + hashlib.sha256(disk).hexdigest() == checksum

    undeployed = api.run(ids[0], PA.PROVISION_ACTION_UNDEPLOY)
    assert not undeployed.HasField("error"), undeployed.error
    node = api.get(ids[0])
    assert node.provision_state == PS.PROVISION_STATE_AVAILABLE
    assert node.power_state == node_pb2.POWER_STATE_OFF
    assert not node.instance_info.image_url
