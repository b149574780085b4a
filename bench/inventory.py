"""Inventory at rack scale: enrol N nodes into one leaf over gRPC, then time reads.

Prints one table: enrolment time, ListNodes page (1,000 nodes) and GetNode latency percentiles,
database bytes per node and the leaf's peak RSS, each beside its target.

Enrolment is measured two ways, each into its own fresh leaf: as ``rackcells node import``
enrols a rack (BatchCreateNodes, 200 nodes a call, a few calls in flight), which is the figure
the target applies to, and one CreateNode call per node (32 in flight) beside it for
comparison. The reads run against the first leaf.

    .venv/bin/python -m bench.inventory [--nodes 10000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import grpc

from bench.harness import peak_rss_mb, percentile, print_table, start_leaf
from rackcells.cli.node_import import BATCH_SIZE, DEFAULT_CONCURRENCY
from rackcells.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc


def _node(i: int) -> node_pb2.Node:
    return node_pb2.Node(
        resource_class="baremetal" if i % 4 else "gpu",
        traits=["CUSTOM_RACK_R1", "HW_CPU_X86_AVX2"] if i % 2 else ["CUSTOM_RACK_R1"],
        properties=node_pb2.NodeProperties(
            cpus=64, memory_mb=262144, local_gb=960, cpu_arch="x86_64"
        ),
        bmc=node_pb2.BmcInfo(
            driver="ipmi",
            address=f"127.{i // 65536 + 1}.{i // 256 % 256}.{i % 256}",
            username="admin",
            password=f"bmc-secret-{i}",
        ),
        ports=[
            node_pb2.Port(
                mac=f"52:54:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:"
                f"{i >> 8 & 255:02x}:{i & 255:02x}",
                pxe_enabled=True,
            ),
        ],
        extra={"rack": "r1", "slot": str(i % 42)},
    )


async def _enrol(endpoint: str, cell: str, count: int, concurrency: int) -> float:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = node_service_pb2_grpc.NodeServiceStub(channel)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                await stub.CreateNode(
                    node_service_pb2.CreateNodeRequest(
                        parent=f"cells/{cell}", node_id=f"n{i:06d}", node=_node(i)
                    )
                )

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


async def _import(endpoint: str, cell: str, count: int, concurrency: int) -> float:
    """As ``rackcells node import`` does it: batches of BATCH_SIZE, ``concurrency`` at once."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = node_service_pb2_grpc.NodeServiceStub(channel)
        starts = list(range(0, count, BATCH_SIZE))

        async def worker() -> None:
            while starts:
                first = starts.pop(0)
                await stub.BatchCreateNodes(
                    node_service_pb2.BatchCreateNodesRequest(
                        parent=f"cells/{cell}",
                        requests=[
                            node_service_pb2.CreateNodeRequest(node_id=f"n{i:06d}", node=_node(i))
                            for i in range(first, min(first + BATCH_SIZE, count))
                        ],
                    )
                )

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--page-rounds", type=int, default=5, help="full list scans to time")
    parser.add_argument("--gets", type=int, default=2000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rackcells-bench-") as tmp:
        workdir = Path(tmp)
        single = start_leaf("rack-2", f"sqlite:///{workdir / 'single.db'}", workdir)
        try:
            print(
                f"enrolling {args.nodes} nodes with CreateNode ({args.concurrency} in flight)...",
                flush=True,
            )
            single_s = asyncio.run(_enrol(single.endpoint, "rack-2", args.nodes, args.concurrency))
        finally:
            single.stop()
        db_path = workdir / "leaf.db"
        leaf = start_leaf("rack-1", f"sqlite:///{db_path}", workdir)
        try:
            print(
                f"enrolling {args.nodes} nodes as node import does (BatchCreateNodes of "
                f"{BATCH_SIZE}, {DEFAULT_CONCURRENCY} in flight)...",
                flush=True,
            )
            enrol_s = asyncio.run(_import(leaf.endpoint, "rack-1", args.nodes, DEFAULT_CONCURRENCY))
            channel = grpc.insecure_channel(leaf.endpoint)
            stub = node_service_pb2_grpc.NodeServiceStub(channel)
            page_ms: list[float] = []
            for _ in range(args.page_rounds):
                token = ""
                while True:
                    t0 = time.perf_counter()
                    resp = stub.ListNodes(
                        node_service_pb2.ListNodesRequest(
                            parent="cells/rack-1", page_size=1000, page_token=token
                        )
                    )
                    page_ms.append((time.perf_counter() - t0) * 1000)
                    token = resp.next_page_token
                    if not token:
                        break
            filtered_ms: list[float] = []
            for _ in range(args.page_rounds):
                t0 = time.perf_counter()
                stub.ListNodes(
                    node_service_pb2.ListNodesRequest(
                        parent="cells/rack-1",
                        page_size=1000,
                        filter='resource_class = "gpu" AND traits:"HW_CPU_X86_AVX2"',
                    )
                )
                filtered_ms.append((time.perf_counter() - t0) * 1000)
            rng = random.Random(7)
            get_ms: list[float] = []
            for _ in range(args.gets):
                name = f"cells/rack-1/nodes/n{rng.randrange(args.nodes):06d}"
                t0 = time.perf_counter()
                stub.GetNode(node_service_pb2.GetNodeRequest(name=name))
                get_ms.append((time.perf_counter() - t0) * 1000)
            channel.close()
            rss = peak_rss_mb(leaf.process.pid)
        finally:
            leaf.stop()
        with sqlite3.connect(db_path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
        db_bytes = db_path.stat().st_size
        per_node = db_bytes / args.nodes
        rate = args.nodes / enrol_s
        scale = 10_000 / args.nodes
        rows = [
            (
                "enrol (node import: BatchCreateNodes)",
                f"{enrol_s:.1f} s ({rate:.0f}/s)",
                f"<= {30 / scale:.0f} s",
                "ok" if enrol_s <= 30 / scale else "MISSED",
            ),
            (
                f"enrol (CreateNode, {args.concurrency} in flight)",
                f"{single_s:.1f} s ({args.nodes / single_s:.0f}/s)",
                "",
                "",
            ),
            ("ListNodes page of 1000, p50", f"{percentile(page_ms, 50):.1f} ms", "", ""),
            (
                "ListNodes page of 1000, p95",
                f"{percentile(page_ms, 95):.1f} ms",
                "<= 150 ms",
                "ok" if percentile(page_ms, 95) <= 150 else "MISSED",
            ),
            ("ListNodes filtered page, p50", f"{percentile(filtered_ms, 50):.1f} ms", "", ""),
            ("GetNode p50", f"{percentile(get_ms, 50):.2f} ms", "", ""),
            ("GetNode p95", f"{percentile(get_ms, 95):.2f} ms", "", ""),
            (
                "database bytes per node",
                f"{per_node:.0f} B ({db_bytes / 2**20:.1f} MiB total)",
                "<= 4096 B",
                "ok" if per_node <= 4096 else "MISSED",
            ),
            ("leaf peak RSS", f"{rss:.0f} MiB", "", ""),
        ]
        print_table(
            f"inventory: {args.nodes} nodes, one leaf, SQLite",
            ("measure", "figure", "target", ""),
            rows,
        )


if __name__ == "__main__":
    main()
