"""Deploys at rack scale: 100 simulated nodes, a 64 MiB image, POST 3 s, concurrency 1/10/100.

For each concurrency level a fresh leaf and simulated rack deploy every node from a local HTTP
image source; the table gives the total time, mean and p95 request-to-active time per node,
downloads from the source (one is the goal: the leaf's cache is single-flight) and where the
time went per phase. The floor is one deploy on an unloaded rack, measured first. The CPU
columns are what the leaf and the simulated rack (its agents download, hash and verify every
image) used during the deploys: on a two-core host their sum over the total time shows how
much of the machine the run had. The last lines give the lowest mean this host allows at each
level, whatever the leaf does (:mod:`bench.transfer_cost`): the floor plus the wait for the other
machines' images when the cores can send, receive and checksum only so many at a time.

    .venv/bin/python -m bench.deploy [--nodes 100] [--image-mib 64] [--levels 1,10,100]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import json_format

from bench.harness import mean, percentile, print_table, start_leaf, tree_cpu_seconds
from bench.imagesource import ImageSource, make_image
from bench.sim import start_rack
from bench.transfer_cost import image_cpu_seconds, lowest_mean
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc

PHASES = ("queued", "image_cache", "power_on", "pxe", "agent_lookup", "image_write", "reboot")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_all(ops: operations_pb2_grpc.OperationsStub, names: list[str], timeout: float) -> None:
    """Waits for every operation with WaitOperation, one at a time: the leaf answers when the
    operation ends, so waiting costs it nothing (polling a hundred operations several times a
    second would load the very leaf being measured)."""
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"operations still running after {timeout:.0f} s")
            request = operations_pb2.WaitOperationRequest(name=name)
            request.timeout.FromSeconds(int(min(remaining, 60)) + 1)
            if ops.WaitOperation(request, timeout=remaining + 5).done:
                break


def run_level(
    workdir: Path,
    nodes: int,
    concurrency: int,
    image: tuple[str, str],
    post: float,
    port_base: int,
    per_worker: int,
) -> dict[str, object]:
    url, checksum = image
    level_dir = workdir / f"c{concurrency}-{nodes}"
    level_dir.mkdir()
    http_port = _free_port()
    leaf = start_leaf(
        "rack-1",
        f"sqlite:///{level_dir / 'leaf.db'}",
        level_dir,
        [
            "--http-listen",
            f"127.0.0.1:{http_port}",
            "--deploy-concurrency",
            str(concurrency),
            "--power-on-rate",
            "0",
            "--power-sync-interval",
            "0",
            "--workers",
            "16",
        ],
    )
    rack = start_rack(
        level_dir,
        nodes,
        port_base,
        prefix="d-n",
        extra=(
            "--post-seconds",
            str(post),
            "--boot-url",
            f"http://127.0.0.1:{http_port}",
            # The agent hashes and verifies every byte; a disk that hashed again would only
            # charge the shared host cores for work no real disk does.
            "--disk-sink",
            "count",
            # Each simulator worker is one Python process: a hundred machines' agents in one
            # would queue on its interpreter lock, which no rack of real machines shares.
            "--per-worker",
            str(per_worker),
        ),
    )
    try:
        channel = grpc.insecure_channel(leaf.endpoint)
        stub = node_service_pb2_grpc.NodeServiceStub(channel)
        ops = operations_pb2_grpc.OperationsStub(channel)
        names = []
        for entry in rack.inventory:
            node = json_format.ParseDict(
                {k: v for k, v in entry.items() if k != "name"}, node_pb2.Node()
            )
            names.append(
                stub.CreateNode(
                    node_service_pb2.CreateNodeRequest(
                        parent="cells/rack-1", node_id=entry["name"], node=node
                    )
                ).name
            )
        for action in (
            node_service_pb2.PROVISION_ACTION_MANAGE,
            node_service_pb2.PROVISION_ACTION_PROVIDE,
        ):
            _wait_all(
                ops,
                [
                    stub.ChangeProvisionState(
                        node_service_pb2.ChangeProvisionStateRequest(name=n, action=action)
                    ).name
                    for n in names
                ],
                300,
            )
        info = node_pb2.InstanceInfo(image_url=url, image_checksum=checksum)
        cpu_before = (tree_cpu_seconds(leaf.process.pid), tree_cpu_seconds(rack.process.pid))
        started = time.monotonic()
        op_names = [
            stub.ChangeProvisionState(
                node_service_pb2.ChangeProvisionStateRequest(
                    name=n, action=node_service_pb2.PROVISION_ACTION_DEPLOY, instance_info=info
                )
            ).name
            for n in names
        ]
        _wait_all(ops, op_names, 3600)
        total = time.monotonic() - started
        leaf_cpu = tree_cpu_seconds(leaf.process.pid) - cpu_before[0]
        sim_cpu = tree_cpu_seconds(rack.process.pid) - cpu_before[1]
        per_node: list[float] = []
        phases: dict[str, list[float]] = {p: [] for p in PHASES}
        failed = 0
        for n in names:
            node = stub.GetNode(node_service_pb2.GetNodeRequest(name=n))
            if node.provision_state != node_pb2.PROVISION_STATE_ACTIVE:
                failed += 1
                continue
            timings = node.last_deploy
            per_node.append(
                (timings.end_time.ToDatetime() - timings.start_time.ToDatetime()).total_seconds()
            )
            for p in timings.phases:
                phases.setdefault(p.phase, []).append(p.duration.ToTimedelta().total_seconds())
        channel.close()
    finally:
        rack.stop()
        leaf.stop()
    return {
        "total": total,
        "per_node": per_node,
        "phases": phases,
        "failed": failed,
        "leaf_cpu": leaf_cpu,
        "sim_cpu": sim_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--image-mib", type=int, default=64)
    parser.add_argument("--post-seconds", type=float, default=3.0)
    parser.add_argument("--levels", default="1,10,100")
    parser.add_argument("--port-base", type=int, default=19000)
    parser.add_argument(
        "--sim-per-worker", type=int, default=25, help="simulated machines per simulator process"
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="rackcells-bench-deploy-") as tmp:
        workdir = Path(tmp)
        (workdir / "images").mkdir()
        checksum = make_image(workdir / "images" / "os.img", args.image_mib << 20)
        sender, receiver = image_cpu_seconds(workdir / "images" / "os.img")
        rows = []
        phase_rows = []
        floor_run = None
        for i, level in enumerate([0, *levels]):
            nodes = 1 if level == 0 else args.nodes
            source = ImageSource(workdir / "images")
            print(f"deploying {nodes} node(s) with concurrency {max(level, 1)}...", flush=True)
            result = run_level(
                workdir,
                nodes,
                max(level, 1),
                (f"{source.url}/os.img", checksum),
                args.post_seconds,
                args.port_base + i * (args.nodes + 10),
                args.sim_per_worker,
            )
            downloads = source.downloads
            source.stop()
            per_node = result["per_node"]
            assert isinstance(per_node, list)
            if level == 0:
                floor_run = mean(per_node)
                label = "floor: 1 node, unloaded"
            else:
                label = f"{nodes} nodes, concurrency {level}"
            rows.append(
                (
                    label,
                    f"{result['total']:.1f}",
                    f"{mean(per_node):.2f}",
                    f"{percentile(per_node, 95):.2f}",
                    downloads,
                    result["failed"],
                    f"{result['leaf_cpu']:.1f}",
                    f"{result['sim_cpu']:.1f}",
                )
            )
            phases = result["phases"]
            assert isinstance(phases, dict)
            phase_rows.append((label, *(f"{mean(phases.get(p, [])):.2f}" for p in PHASES)))
        print_table(
            f"deploys: {args.image_mib} MiB image, POST {args.post_seconds:.0f} s",
            (
                "run",
                "total s",
                "mean s/node",
                "p95 s/node",
                "source downloads",
                "failed",
                "leaf CPU s",
                "sim CPU s",
            ),
            rows,
        )
        print_table("mean seconds per phase", ("run", *PHASES), phase_rows)
        serial = float(rows[1][1]) if len(rows) > 1 else float("nan")
        cores = os.cpu_count() or 1
        if floor_run and len(rows) > 1:
            print("\nratios:")
            for row in rows[1:]:
                level = int(str(row[0]).rsplit(" ", 1)[1])
                if level == 1:
                    continue
                # After POST (every node powered on at once, so the POSTs overlap) the deploys
                # need only CPU: the share of the cores busy in that time says whether the rack
                # waited for the leaf or for the host's cores.
                cpu = float(row[6]) + float(row[7])
                after_post = max(float(row[1]) - args.post_seconds, 1e-9)
                busy = cpu / (cores * after_post)
                bound = lowest_mean(floor_run, sender + receiver, args.nodes, cores)
                allowed = (
                    f"; this host allows no less than {bound / floor_run:.2f}"
                    if level >= args.nodes
                    else ""
                )
                print(
                    f"  {row[0]}: total {serial / float(row[1]):.1f}x faster than serial "
                    f"(target >= 10x at 100); mean/floor {float(row[2]) / floor_run:.2f} "
                    f"(target <= 1.5{allowed})"
                    + (
                        f"; leaf + simulated rack used {cpu:.1f} CPU s, the {cores} cores "
                        f"{busy:.0%} busy after POST"
                        if level == args.nodes
                        else ""
                    )
                )
            print(
                f"  host bound: one {args.image_mib} MiB image costs {sender * 1000:.0f} ms of "
                f"CPU to send (sendfile) and {receiver * 1000:.0f} ms to receive and checksum, on "
                f"the same {cores} cores; started together, {args.nodes} deploys cannot average "
                f"less than {lowest_mean(floor_run, sender + receiver, args.nodes, cores):.2f} s "
                f"per node here (the floor {floor_run:.2f} s plus the wait for the cores)"
            )


if __name__ == "__main__":
    main()
