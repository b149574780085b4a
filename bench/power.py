"""Power control at rack scale, side by side, from one run.

(a) power-status calls to simulated BMCs through the in-process ``ipmi`` driver (pyghmi, one
    kept-alive session per BMC) versus one ``ipmitool`` subprocess per call: wall time and CPU
    seconds of each, and their ratio.
(b) full power sweeps of a 1,000-BMC simulated rack by the leaf's own power-sync code: the first
    sweep (an RMCP+ session set up with every BMC), a steady-state sweep (sessions reused), and a
    sweep with 5% of BMCs unreachable. The leaf's conductor runs in this process, so the CPU
    seconds reported are the leaf's; the simulator runs in its own processes.

    .venv/bin/python -m bench.power [--calls 200] [--nodes 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import update

from bench.harness import print_table
from bench.sim import SimRack, start_rack
from common.db import make_engine
from leaf_cell.conductor import Conductor
from leaf_cell.config import LeafConfig
from leaf_cell.db.migrate import upgrade
from leaf_cell.db.models import NodeRow
from leaf_cell.drivers import BmcAccess, load_driver
from leaf_cell.locks import NodeLocks
from leaf_cell.node_status import StatusStore
from leaf_cell.nodes import NodeStore
from leaf_cell.operations import OperationStore
from leaf_cell.power_sync import PowerSync, SweepResult
from leaf_cell.secrets import SecretBox
from rackcells.sim.control import SimControl
from rackcells.v1 import node_pb2, node_service_pb2


def _access(entry: dict) -> BmcAccess:  # type: ignore[type-arg]
    bmc = entry["bmc"]
    return BmcAccess("ipmi", bmc["address"], int(bmc["port"]), bmc["username"], bmc["password"])


def part_a(workdir: Path, calls: int, port_base: int) -> list[tuple[object, ...]]:
    rack = start_rack(workdir, 20, port_base, prefix="a-n")
    try:
        bmcs = [_access(e) for e in rack.inventory]
        driver = load_driver("ipmi")
        for bmc in bmcs:  # log in once per BMC: sessions are kept, as in the leaf
            driver.power.get_power(bmc, 5.0)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(calls):
            driver.power.get_power(bmcs[i % len(bmcs)], 5.0)
        py_wall, py_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        driver.close()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall0 = time.perf_counter()
        for i in range(calls):
            bmc = bmcs[i % len(bmcs)]
            subprocess.run(
                [
                    "ipmitool",
                    "-I",
                    "lanplus",
                    "-H",
                    bmc.address,
                    "-p",
                    str(bmc.port),
                    "-U",
                    bmc.username,
                    "-E",
                    "power",
                    "status",
                ],
                check=True,
                capture_output=True,
                env={"IPMI_PASSWORD": bmc.password},
            )
        tool_wall = time.perf_counter() - wall0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        tool_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    finally:
        rack.stop()
    return [
        (
            "ipmi driver (pyghmi, in-process)",
            f"{py_wall:.2f}",
            f"{py_cpu:.3f}",
            f"{py_cpu / calls * 1000:.2f}",
        ),
        (
            "ipmitool subprocess per call",
            f"{tool_wall:.2f}",
            f"{tool_cpu:.3f}",
            f"{tool_cpu / calls * 1000:.2f}",
        ),
        (
            "ratio ipmitool / driver",
            f"{tool_wall / py_wall:.1f}x",
            f"{tool_cpu / py_cpu:.1f}x",
            "target >= 10x CPU",
        ),
    ]


def _enrol(store: NodeStore, rack: SimRack) -> None:
    from google.protobuf import json_format

    for entry in rack.inventory:
        node = json_format.ParseDict(
            {k: v for k, v in entry.items() if k != "name"}, node_pb2.Node()
        )
        store.create(
            node_service_pb2.CreateNodeRequest(
                parent="cells/rack-1", node_id=entry["name"], node=node
            )
        )


async def _sweeps(config: LeafConfig, rack: SimRack, unreachable: int) -> list[SweepResult]:
    engine = make_engine(config.db, pool_size=config.db_pool_size)
    upgrade(engine)
    secrets = SecretBox(Fernet.generate_key())
    from concurrent.futures import ThreadPoolExecutor

    conductor = Conductor(
        config=config,
        nodes=NodeStore(engine, config.cell, secrets),
        status=StatusStore(engine, config.cell, secrets),
        locks=NodeLocks(engine, config.cell, "conductor/rack-1", timedelta(minutes=5)),
        operations=OperationStore(engine, config.cell),
        db_executor=ThreadPoolExecutor(max_workers=config.workers),
    )
    _enrol(conductor.nodes, rack)
    # Bench set-up: mark the rack managed directly (verifying it would log in to every BMC and
    # so spoil the measurement of the first sweep's logins).
    with engine.begin() as conn:
        conn.execute(
            update(NodeRow).values(provision_state="MANAGEABLE", revision=NodeRow.revision + 1)
        )
    sync = PowerSync(conductor)
    results = [await sync.sweep(), await sync.sweep()]
    control = SimControl(rack.control_url)
    for entry in rack.inventory[:unreachable]:
        control.set_fault(entry["name"], unreachable=True)
    results.append(await sync.sweep())
    await conductor.stop()
    engine.dispose()
    return results


def part_b(workdir: Path, nodes: int, port_base: int, timeout: float) -> list[tuple[object, ...]]:
    rack = start_rack(workdir, nodes, port_base, prefix="b-n")
    unreachable = max(1, nodes // 20)
    try:
        config = LeafConfig(
            cell="rack-1",
            db=f"sqlite:///{workdir / 'power.db'}",
            bmc_timeout=timeout,
            bmc_workers=64,
            power_sync_concurrency=64,
            power_sync_interval=0,
        )
        first, steady, faulty = asyncio.run(_sweeps(config, rack, unreachable))
    finally:
        rack.stop()
    targets = (
        "<= 60 s, 0 failures",
        "<= 10 s, 0 failures",
        f"within budget ({timeout:.0f} s BMC timeout), {unreachable} failures",
    )
    rows: list[tuple[object, ...]] = []
    for label, r, target in zip(
        ("first sweep (logins)", "steady-state sweep", f"steady, {unreachable} unreachable"),
        (first, steady, faulty),
        targets,
        strict=True,
    ):
        rows.append(
            (label, r.nodes, f"{r.wall_seconds:.2f}", f"{r.cpu_seconds:.2f}", r.failures, target)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--bmc-timeout", type=float, default=3.0)
    parser.add_argument("--port-base", type=int, default=17000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rackcells-bench-power-") as tmp:
        workdir = Path(tmp)
        print(f"(a) {args.calls} power-status calls to 20 simulated BMCs...", flush=True)
        rows_a = part_a(workdir, args.calls, args.port_base)
        print_table(
            f"(a) {args.calls} power-status calls",
            ("client", "wall s", "CPU s", "CPU ms/call"),
            rows_a,
        )
        print(f"\n(b) power sweeps of {args.nodes} simulated BMCs...", flush=True)
        rows_b = part_b(workdir, args.nodes, args.port_base + 100, args.bmc_timeout)
        print_table(
            f"(b) leaf power sweeps, {args.nodes} BMCs, 64 at a time",
            ("sweep", "nodes", "wall s", "leaf CPU s", "failures", "target"),
            rows_b,
        )


if __name__ == "__main__":
    main()
