"""The federation at scale: one top cell in front of N leaf cells, all measured in one run.

Prints four tables, each figure beside its target:

(c) inventory: N cells x M nodes enrolled concurrently *directly at the leaves*; then through the
    top: ListNodes first page (page_size 100, ``cells/-``) p50/p95, a full scan with page_size
    1,000 (beside the same scan done leaf by leaf), the top's peak and current RSS;
(a) GetNode latency directly at a leaf vs through the top (same nodes, interleaved), and the ratio;
    beside it, for scale, the same for one bare gRPC hop (bench/grpc_hop.py: a no-op server,
    direct and through a no-op relay);
(b) enrol-to-visible: from CreateNode returning at a leaf until the node counts in the top's
    GetCapacity (polled tightly), over E enrolments, one at a time;
(d) a claim race: 500 concurrent CreateAllocation calls through the top for 100 AVAILABLE nodes
    spread over the cells (made available through the API: manage + provide at each leaf, fake
    BMC driver): grants, RESOURCE_EXHAUSTED refusals, other errors, and double claims counted
    from the grants and from the leaves' own node records.

(a), (b) and (d) run after (c), against the full inventory. Nothing here asserts; it reports.

    .venv/bin/python -m bench.federation [--cells 8] [--nodes-per-cell 5000] [--enrolments 500]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from bench import grpc_hop
from bench.harness import Leaf, Server, percentile, print_table, spawn, start_leaf
from rackcells.v1 import (
    allocation_service_pb2,
    allocation_service_pb2_grpc,
    capacity_service_pb2,
    capacity_service_pb2_grpc,
    node_pb2,
    node_service_pb2,
    node_service_pb2_grpc,
)

BULK_CLASSES = ("baremetal", "gpu")
VISIBLE_CLASS = "bench-visible"
CLAIM_CLASS = "bench-claim"
HANG_GUARD = 600.0  # seconds; only stops a stuck run, nothing is timed against it
PA = node_service_pb2.ProvisionAction


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


# -- processes ----------------------------------------------------------------------------------


@dataclass
class Top(Server):
    def rss_mb(self) -> tuple[float, float]:
        """(VmHWM, VmRSS) of the top cell in MiB."""
        found = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0]) / 1024
        return found.get("VmHWM", float("nan")), found.get("VmRSS", float("nan"))


def start_top(leaves: Sequence[Leaf], workdir: Path) -> Top:
    registry = workdir / "cells.yaml"
    registry.write_text(
        yaml.safe_dump({"cells": [{"name": x.cell, "endpoint": x.endpoint} for x in leaves]})
    )
    args = ["--db", f"sqlite:///{workdir / 'top.db'}", "--registry", f"static:{registry}"]
    return Top(*spawn("top_cell.main", args, "top", workdir))


def bulk_node(cell_no: int, i: int) -> node_pb2.Node:
    return node_pb2.Node(
        resource_class=BULK_CLASSES[1 if i % 4 == 0 else 0],
        traits=["CUSTOM_RACK_R1", "HW_CPU_X86_AVX2"] if i % 2 else ["CUSTOM_RACK_R1"],
        properties=node_pb2.NodeProperties(
            cpus=64, memory_mb=262144, local_gb=960, cpu_arch="x86_64"
        ),
        bmc=node_pb2.BmcInfo(driver="fake", address=f"bmc-{cell_no}-{i}", username="admin"),
        ports=[node_pb2.Port(mac=mac(0x10 + cell_no, i), pxe_enabled=True)],
        extra={"slot": str(i % 42)},
    )


def mac(kind: int, i: int) -> str:
    return f"52:54:{kind:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


async def enrol_all(leaves: Sequence[Leaf], per_cell: int, in_flight: int) -> float:
    """Enrols ``per_cell`` nodes into every leaf at once, ``in_flight`` calls per leaf."""

    async def one_leaf(cell_no: int, leaf: Leaf) -> None:
        async with grpc.aio.insecure_channel(leaf.endpoint) as channel:
            stub = node_service_pb2_grpc.NodeServiceStub(channel)
            todo = iter(range(per_cell))

            async def worker() -> None:
                for i in todo:
                    await stub.CreateNode(
                        node_service_pb2.CreateNodeRequest(
                            parent=f"cells/{leaf.cell}",
                            node_id=f"n{i:05d}",
                            node=bulk_node(cell_no, i),
                        ),
                        timeout=60,
                    )

            await asyncio.gather(*(worker() for _ in range(in_flight)))

    start = time.perf_counter()
    await asyncio.gather(*(one_leaf(n, leaf) for n, leaf in enumerate(leaves)))
    return time.perf_counter() - start


async def make_available(leaves: Sequence[Leaf], count: int, in_flight: int = 8) -> list[str]:
    """Creates ``count`` fake-BMC nodes of CLAIM_CLASS spread over the leaves and runs manage +
    provide on each through the leaf's API; returns their names."""
    plan = [(leaves[i % len(leaves)], i) for i in range(count)]

    async def one(channel_of: dict[str, grpc.aio.Channel], leaf: Leaf, i: int) -> str:
        channel = channel_of[leaf.cell]
        nodes = node_service_pb2_grpc.NodeServiceStub(channel)
        ops = operations_pb2_grpc.OperationsStub(channel)
        created = await nodes.CreateNode(
            node_service_pb2.CreateNodeRequest(
                parent=f"cells/{leaf.cell}",
                node_id=f"claim-{i:04d}",
                node=node_pb2.Node(
                    resource_class=CLAIM_CLASS,
                    bmc=node_pb2.BmcInfo(driver="fake", address=f"claim-{i}"),
                    ports=[node_pb2.Port(mac=mac(0x0C, i))],
                ),
            ),
            timeout=60,
        )
        for action in (PA.PROVISION_ACTION_MANAGE, PA.PROVISION_ACTION_PROVIDE):
            op = await nodes.ChangeProvisionState(
                node_service_pb2.ChangeProvisionStateRequest(name=created.name, action=action),
                timeout=60,
            )
            while not op.done:
                op = await ops.WaitOperation(
                    operations_pb2.WaitOperationRequest(
                        name=op.name, timeout=duration_pb2.Duration(seconds=30)
                    ),
                    timeout=60,
                )
            if op.HasField("error"):
                raise RuntimeError(f"{created.name}: {op.error.message}")
        return created.name

    channels = {leaf.cell: grpc.aio.insecure_channel(leaf.endpoint) for leaf in leaves}
    try:
        gate = asyncio.Semaphore(in_flight)

        async def bounded(leaf: Leaf, i: int) -> str:
            async with gate:
                return await one(channels, leaf, i)

        return list(await asyncio.gather(*(bounded(leaf, i) for leaf, i in plan)))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels.values()))


# -- measurements ---------------------------------------------------------------------------------


def wait_for(check: Callable[[], bool], what: str, limit: float = HANG_GUARD) -> float:
    """Polls ``check()`` until true; returns how long it took (raises after ``limit``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def capacity_total(
    stub: capacity_service_pb2_grpc.CapacityServiceStub, parent: str, resource_class: str = ""
) -> int:
    reply = stub.GetCapacity(
        capacity_service_pb2.GetCapacityRequest(parent=parent, resource_class=resource_class),
        timeout=30,
    )
    return int(reply.totals.total)


def get_node_latency(
    leaves: Sequence[Leaf], top: Top, per_cell: int, samples: int
) -> tuple[list[float], list[float]]:
    """GetNode of the same random nodes directly and through the top, interleaved (the order of
    the two alternates), after a warm-up of each channel."""
    rng = random.Random(7)
    top_channel = grpc.insecure_channel(top.endpoint)
    via_top = node_service_pb2_grpc.NodeServiceStub(top_channel)
    leaf_channels = {x.cell: grpc.insecure_channel(x.endpoint) for x in leaves}
    direct = {c: node_service_pb2_grpc.NodeServiceStub(ch) for c, ch in leaf_channels.items()}
    leaf_ms: list[float] = []
    top_ms: list[float] = []
    try:
        names = [
            (leaf.cell, f"cells/{leaf.cell}/nodes/n{rng.randrange(per_cell):05d}")
            for leaf in (rng.choice(leaves) for _ in range(samples + 50))
        ]
        for k, (cell, name) in enumerate(names):
            request = node_service_pb2.GetNodeRequest(name=name)
            order = [(direct[cell], leaf_ms), (via_top, top_ms)]
            for stub, into in order if k % 2 else reversed(order):
                t0 = time.perf_counter()
                stub.GetNode(request, timeout=30)
                if k >= 50:  # the first 50 pairs warm the channels up
                    into.append(time.perf_counter() - t0)
    finally:
        top_channel.close()
        for ch in leaf_channels.values():
            ch.close()
    return leaf_ms, top_ms


def enrol_to_visible(leaves: Sequence[Leaf], top: Top, count: int) -> tuple[list[float], int]:
    """One enrolment at a time, round robin over the leaves; the time until the top's
    GetCapacity of that cell counts it. Returns the latencies and how many never showed up."""
    top_channel = grpc.insecure_channel(top.endpoint)
    capacity = capacity_service_pb2_grpc.CapacityServiceStub(top_channel)
    leaf_channels = {x.cell: grpc.insecure_channel(x.endpoint) for x in leaves}
    seen: dict[str, int] = {
        x.cell: capacity_total(capacity, parent=f"cells/{x.cell}", resource_class=VISIBLE_CLASS)
        for x in leaves
    }
    latencies: list[float] = []
    missed = 0
    try:
        for i in range(count):
            leaf = leaves[i % len(leaves)]
            parent = f"cells/{leaf.cell}"
            node_service_pb2_grpc.NodeServiceStub(leaf_channels[leaf.cell]).CreateNode(
                node_service_pb2.CreateNodeRequest(
                    parent=parent,
                    node_id=f"vis-{i:04d}",
                    node=node_pb2.Node(
                        resource_class=VISIBLE_CLASS,
                        bmc=node_pb2.BmcInfo(driver="fake", address=f"vis-{i}"),
                        ports=[node_pb2.Port(mac=mac(0x0B, i))],
                    ),
                ),
                timeout=30,
            )
            t0 = time.perf_counter()
            want = seen[leaf.cell] + 1
            while True:
                total = capacity_total(capacity, parent=parent, resource_class=VISIBLE_CLASS)
                elapsed = time.perf_counter() - t0
                if total >= want:
                    latencies.append(elapsed)
                    break
                if elapsed > 30:
                    missed += 1
                    break
            seen[leaf.cell] = want
    finally:
        top_channel.close()
        for ch in leaf_channels.values():
            ch.close()
    return latencies, missed


def list_timings(
    leaves: Sequence[Leaf], top: Top, rounds: int, scans: int
) -> tuple[list[float], list[float], list[float], int]:
    """First pages (100, cells/-) through the top; full scans (1,000) through the top and, for
    comparison, leaf by leaf. Returns first-page times, top scan times, direct scan times, and
    how many nodes a scan returned."""
    top_channel = grpc.insecure_channel(top.endpoint)
    via_top = node_service_pb2_grpc.NodeServiceStub(top_channel)
    first: list[float] = []
    top_scans: list[float] = []
    leaf_scans: list[float] = []
    counted = 0
    try:
        for _ in range(rounds + 3):
            t0 = time.perf_counter()
            page = via_top.ListNodes(
                node_service_pb2.ListNodesRequest(parent="cells/-", page_size=100), timeout=60
            )
            first.append(time.perf_counter() - t0)
            assert len(page.nodes) == 100 and not page.unreachable, page.unreachable
        del first[:3]  # warm-up
        for _ in range(scans):
            t0 = time.perf_counter()
            counted = scan(via_top, "cells/-")
            top_scans.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for leaf in leaves:
                with grpc.insecure_channel(leaf.endpoint) as channel:
                    scan(node_service_pb2_grpc.NodeServiceStub(channel), f"cells/{leaf.cell}")
            leaf_scans.append(time.perf_counter() - t0)
    finally:
        top_channel.close()
    return first, top_scans, leaf_scans, counted


def scan(stub: node_service_pb2_grpc.NodeServiceStub, parent: str) -> int:
    token, count = "", 0
    while True:
        page = stub.ListNodes(
            node_service_pb2.ListNodesRequest(parent=parent, page_size=1000, page_token=token),
            timeout=120,
        )
        count += len(page.nodes)
        token = page.next_page_token
        if not token:
            return count


@dataclass
class Race:
    grants: list[tuple[str, str]] = field(default_factory=list)
    refusals: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0


async def claim_race(top: Top, calls: int) -> Race:
    race = Race()
    async with grpc.aio.insecure_channel(top.endpoint) as channel:
        stub = allocation_service_pb2_grpc.AllocationServiceStub(channel)
        start = asyncio.Event()

        async def one() -> None:
            await start.wait()
            t0 = time.perf_counter()
            try:
                granted = await stub.CreateAllocation(
                    allocation_service_pb2.CreateAllocationRequest(
                        parent="cells/-",
                        allocation=allocation_service_pb2.Allocation(resource_class=CLAIM_CLASS),
                    ),
                    timeout=120,
                )
                race.grants.append((granted.name, granted.node))
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    race.refusals += 1
                else:
                    race.errors[err.code().name] += 1
            race.latencies.append(time.perf_counter() - t0)

        tasks = [asyncio.ensure_future(one()) for _ in range(calls)]
        await asyncio.sleep(0.2)  # every call waits at the gate
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        race.wall = time.perf_counter() - t0
    return race


def double_claims(race: Race, leaves: Sequence[Leaf]) -> tuple[int, int, int]:
    """(allocations sharing a node, nodes whose record names another allocation than the grant
    that claimed them, claimed nodes the leaves show in all) from the grants and the leaves."""
    per_node = collections.Counter(node for _, node in race.grants)
    sharing = sum(n - 1 for n in per_node.values() if n > 1)
    recorded: dict[str, str] = {}
    for leaf in leaves:
        with grpc.insecure_channel(leaf.endpoint) as channel:
            stub = node_service_pb2_grpc.NodeServiceStub(channel)
            token = ""
            while True:
                page = stub.ListNodes(
                    node_service_pb2.ListNodesRequest(
                        parent=f"cells/{leaf.cell}",
                        filter=f'resource_class = "{CLAIM_CLASS}"',
                        page_size=1000,
                        page_token=token,
                    ),
                    timeout=60,
                )
                recorded.update({n.name: n.allocation for n in page.nodes if n.allocation})
                token = page.next_page_token
                if not token:
                    break
    mismatched = sum(1 for name, node in race.grants if recorded.get(node) != name)
    return sharing, mismatched, len(recorded)


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--nodes-per-cell", type=int, default=5000)
    parser.add_argument("--enrolments", type=int, default=500, help="enrol-to-visible samples")
    parser.add_argument("--gets", type=int, default=2000, help="GetNode samples each way")
    parser.add_argument("--pages", type=int, default=100, help="first-page samples")
    parser.add_argument("--scans", type=int, default=3, help="full scans each way")
    parser.add_argument("--claims", type=int, default=500, help="concurrent CreateAllocation")
    parser.add_argument("--available", type=int, default=100, help="nodes the claims race for")
    parser.add_argument("--in-flight", type=int, default=16, help="CreateNode in flight per leaf")
    parser.add_argument("--workdir", type=Path, help="keep databases and logs here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rackcells-fed-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        run(args, workdir)


def run(args: argparse.Namespace, workdir: Path) -> None:
    cells, per_cell = args.cells, args.nodes_per_cell
    total = cells * per_cell
    leaves: list[Leaf] = []
    top: Top | None = None
    try:
        for n in range(cells):
            cell = f"rack-{n + 1}"
            leaves.append(
                start_leaf(
                    cell,
                    f"sqlite:///{workdir / cell}.db",
                    workdir,
                    ["--power-sync-interval", "0"],
                )
            )
        top = start_top(leaves, workdir)
        print(
            f"{cells} leaf cells and a top cell on {os.cpu_count()} CPUs; enrolling {total} "
            f"nodes directly at the leaves ({args.in_flight} in flight per leaf)...",
            flush=True,
        )
        enrol_s = asyncio.run(enrol_all(leaves, per_cell, args.in_flight))
        top_channel = grpc.insecure_channel(top.endpoint)
        capacity = capacity_service_pb2_grpc.CapacityServiceStub(top_channel)
        caught_up = wait_for(
            lambda: capacity_total(capacity, parent="cells/-") >= total,
            "the top's inventory to count every node",
        )
        print(f"enrolled in {enrol_s:.1f} s; the top counted them all {caught_up:.2f} s later")

        # (c) listings and memory at full size, before anything else runs on the top
        first, top_scans, leaf_scans, scanned = list_timings(leaves, top, args.pages, args.scans)
        hwm, rss = top.rss_mb()

        # (a) GetNode, direct vs through the top; and one bare gRPC hop for scale
        leaf_ms, top_ms = get_node_latency(leaves, top, per_cell, args.gets)
        bare = grpc_hop.measure(args.gets)

        # (b) enrol-to-visible
        print(f"enrol-to-visible: {args.enrolments} enrolments, one at a time...", flush=True)
        visible, missed = enrol_to_visible(leaves, top, args.enrolments)

        # (d) the claim race
        print(
            f"claim race: making {args.available} nodes available (manage + provide through "
            "each leaf's API, fake BMC driver)...",
            flush=True,
        )
        asyncio.run(make_available(leaves, args.available))
        wait_for(
            lambda: (
                capacity.GetCapacity(
                    capacity_service_pb2.GetCapacityRequest(
                        parent="cells/-", resource_class=CLAIM_CLASS
                    ),
                    timeout=30,
                ).totals.available
                >= args.available
            ),
            "the top to see every claimable node",
        )
        race = asyncio.run(claim_race(top, args.claims))
        sharing, mismatched, recorded = double_claims(race, leaves)
        hwm_end, rss_end = top.rss_mb()
        top_channel.close()
    finally:
        if top is not None:
            top.stop()
        for leaf in leaves:
            leaf.stop()

    scale = f"{cells} cells x {per_cell} nodes = {total}"
    p50_ratio = percentile(top_ms, 50) / percentile(leaf_ms, 50)
    p95_ratio = percentile(top_ms, 95) / percentile(leaf_ms, 95)
    print_table(
        f"(a) GetNode, {len(leaf_ms)} samples each way ({scale})",
        ("measure", "direct at a leaf", "through the top", "ratio", "target", ""),
        [
            (
                "p50",
                ms(percentile(leaf_ms, 50)),
                ms(percentile(top_ms, 50)),
                f"{p50_ratio:.2f}",
                "ratio <= 1.3",
                verdict(p50_ratio <= 1.3),
            ),
            (
                "p95",
                ms(percentile(leaf_ms, 95)),
                ms(percentile(top_ms, 95)),
                f"{p95_ratio:.2f}",
                "",
                "",
            ),
            *(
                (
                    f"p50, no-op server: {label}",
                    ms(percentile(bare.direct, 50)),
                    ms(percentile(via, 50)),
                    f"{percentile(via, 50) / percentile(bare.direct, 50):.2f}",
                    "",
                    "",
                )
                for label, via in (
                    ("the top's front", bare.front),
                    ("a grpc.aio relay", bare.grpc_relay),
                )
            ),
        ],
    )
    print(
        "  The no-op rows (bench/grpc_hop.py): a server that does nothing, direct and through "
        "a relay that only forwards:\n  the top's frame relay (top_cell.front), and for "
        "comparison a gRPC proxy written with grpc.aio.\n  Here the top adds "
        f"{ms(percentile(top_ms, 50) - percentile(leaf_ms, 50))} at p50; the bare front adds "
        f"{ms(percentile(bare.front, 50) - percentile(bare.direct, 50))}, a grpc.aio relay "
        f"{ms(percentile(bare.grpc_relay, 50) - percentile(bare.direct, 50))}."
    )
    p99 = percentile(visible, 99)
    print_table(
        f"(b) enrol-to-visible (CreateNode returned at a leaf -> counted in the top's "
        f"GetCapacity), {len(visible)} enrolments",
        ("measure", "figure", "target", ""),
        [
            ("p50", ms(percentile(visible, 50)), "", ""),
            ("p99", ms(p99), "<= 500 ms (TripleO: 60 s)", verdict(p99 <= 0.5 and not missed)),
            ("max", ms(max(visible) if visible else float("nan")), "", ""),
            ("never visible within 30 s", str(missed), "0", verdict(missed == 0)),
        ],
    )
    first_p95 = percentile(first, 95)
    print_table(
        f"(c) inventory through the top ({scale}; enrolled at the leaves in {enrol_s:.1f} s, "
        f"{total / enrol_s:.0f}/s)",
        ("measure", "figure", "target", ""),
        [
            ("ListNodes cells/- first page (100), p50", ms(percentile(first, 50)), "", ""),
            (
                "ListNodes cells/- first page (100), p95",
                ms(first_p95),
                "<= 100 ms",
                verdict(first_p95 <= 0.1),
            ),
            (
                "full scan through the top (pages of 1000), best",
                f"{min(top_scans):.2f} s ({scanned} nodes)",
                "",
                "",
            ),
            ("full scan leaf by leaf (pages of 1000), best", f"{min(leaf_scans):.2f} s", "", ""),
            (
                "top RSS after enrolment: peak (VmHWM) / current",
                f"{hwm:.0f} / {rss:.0f} MiB",
                f"<= 250 MiB at 40,000 nodes (here {total})",
                verdict(hwm <= 250),
            ),
            (
                "top RSS at the end: peak / current",
                f"{hwm_end:.0f} / {rss_end:.0f} MiB",
                "",
                verdict(hwm_end <= 250),
            ),
        ],
    )
    errors = ", ".join(f"{k} {v}" for k, v in race.errors.items()) or "0"
    print_table(
        f"(d) {args.claims} concurrent CreateAllocation through the top for {args.available} "
        f"available nodes over {cells} cells",
        ("measure", "figure", "target", ""),
        [
            (
                "grants",
                str(len(race.grants)),
                f"exactly {args.available}",
                verdict(len(race.grants) == args.available),
            ),
            (
                "refusals (RESOURCE_EXHAUSTED)",
                str(race.refusals),
                str(args.claims - args.available),
                verdict(race.refusals == args.claims - args.available),
            ),
            ("other errors", errors, "0", verdict(not race.errors)),
            ("allocations sharing a node", str(sharing), "0", verdict(sharing == 0)),
            (
                "grants the node's record disagrees with",
                str(mismatched),
                "0",
                verdict(mismatched == 0),
            ),
            (
                "nodes the leaves show claimed",
                str(recorded),
                str(len(race.grants)),
                verdict(recorded == len(race.grants)),
            ),
            ("wall time of the race", f"{race.wall:.2f} s", "", ""),
            (
                "CreateAllocation p50 / p99",
                f"{ms(percentile(race.latencies, 50))} / {ms(percentile(race.latencies, 99))}",
                "",
                "",
            ),
        ],
    )


if __name__ == "__main__":
    main()
