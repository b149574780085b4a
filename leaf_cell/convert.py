"""Conversion between database rows and ``rackcells.v1.Node`` messages.

The only place that knows both shapes. The BMC password never leaves the row here: responses
carry ``password_set`` instead.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from leaf_cell.db.models import NodeRow
from rackcells.v1 import node_pb2

__all__ = ["etag_of", "node_name", "power_state_name", "row_to_node", "timestamp"]


def node_name(cell: str, node_id: str) -> str:
    return f"cells/{cell}/nodes/{node_id}"


def etag_of(row: NodeRow) -> str:
    """An opaque etag: changes with every revision and differs between incarnations of a name."""
    return hashlib.blake2b(f"{row.uid}/{row.revision}".encode(), digest_size=8).hexdigest()


def _utc(dt: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns; all of ours are stored in UTC.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def timestamp(dt: datetime | None) -> timestamp_pb2.Timestamp | None:
    if dt is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(_utc(dt))
    return ts


def power_state_name(value: node_pb2.PowerState.ValueType) -> str:
    return node_pb2.PowerState.Name(value).removeprefix("POWER_STATE_")


def _deploy_timings(data: dict[str, Any]) -> node_pb2.DeployTimings:
    timings = node_pb2.DeployTimings()
    if data.get("start_time"):
        timings.start_time.FromJsonString(data["start_time"])
    if data.get("end_time"):
        timings.end_time.FromJsonString(data["end_time"])
    for phase in data.get("phases", []):
        d = duration_pb2.Duration()
        d.FromNanoseconds(int(float(phase["seconds"]) * 1e9))
        timings.phases.add(phase=phase["phase"], duration=d)
    return timings


def row_to_node(row: NodeRow, cell: str) -> node_pb2.Node:
    """The API view of ``row``; ports and traits must be loaded."""
    node = node_pb2.Node(
        name=node_name(cell, row.node_id),
        uid=row.uid,
        resource_class=row.resource_class,
        traits=[t.trait for t in row.trait_rows],
        properties=node_pb2.NodeProperties(
            cpus=row.cpus, memory_mb=row.memory_mb, local_gb=row.local_gb, cpu_arch=row.cpu_arch
        ),
        bmc=node_pb2.BmcInfo(
            driver=row.bmc_driver,
            address=row.bmc_address,
            port=row.bmc_port,
            username=row.bmc_username,
            password_set=bool(row.bmc_password_enc),
        ),
        ports=[node_pb2.Port(mac=p.mac, pxe_enabled=p.pxe_enabled) for p in row.ports],
        power_state=node_pb2.PowerState.Value("POWER_STATE_" + row.power_state),
        provision_state=node_pb2.ProvisionState.Value("PROVISION_STATE_" + row.provision_state),
        target_provision_state=node_pb2.ProvisionState.Value(
            "PROVISION_STATE_" + row.target_provision_state
        ),
        maintenance=row.maintenance,
        maintenance_reason=row.maintenance_reason,
        last_error=row.last_error,
        instance_info=node_pb2.InstanceInfo(
            image_url=row.instance_info.get("image_url", ""),
            image_checksum=row.instance_info.get("image_checksum", ""),
            root_device=row.instance_info.get("root_device", ""),
        ),
        extra=row.extra,
        allocation=row.allocation,
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
        provision_update_time=timestamp(row.provision_update_time),
        power_sync_time=timestamp(row.power_sync_time),
        etag=etag_of(row),
    )
    if row.lock_holder:
        node.lock.CopyFrom(
            node_pb2.NodeLock(
                holder=row.lock_holder,
                purpose=row.lock_purpose or "",
                since=timestamp(row.lock_since),
                expire_time=timestamp(row.lock_expires),
            )
        )
    if row.last_deploy:
        node.last_deploy.CopyFrom(_deploy_timings(row.last_deploy))
    return node
