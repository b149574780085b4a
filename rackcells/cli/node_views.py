"""How a node looks to a person: list rows, the ``node show`` layout, the deploy breakdown.

``node show`` prints every field, including the ones that are empty, so an operator learns
what a node *could* carry and can tell "not set" from "not shown". The last deploy's phase
table answers the question operators keep asking ("where did the time go?") without a
metrics stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rackcells.cli.names import short_node_name
from rackcells.cli.output import (
    NONE,
    enum_label,
    format_duration,
    format_time,
    render_fields,
    render_table,
    truncate,
)
from rackcells.v1 import node_pb2

__all__ = [
    "FAILED_STATES",
    "LIST_HEADERS",
    "deploy_breakdown",
    "list_row",
    "node_summary",
    "power_label",
    "provision_label",
    "render_node",
    "render_node_list",
]

LIST_HEADERS = (
    "NAME",
    "POWER",
    "PROVISION STATE",
    "MAINT",
    "RESOURCE CLASS",
    "MACS",
    "LAST ERROR",
)
_ERROR_WIDTH = 40

# Where a node ends when an action did not do what was asked; it stays there until told otherwise.
FAILED_STATES = frozenset(
    {
        node_pb2.PROVISION_STATE_CLEAN_FAILED,
        node_pb2.PROVISION_STATE_DEPLOY_FAILED,
        node_pb2.PROVISION_STATE_ERROR,
    }
)


def provision_label(state: int) -> str:
    """``PROVISION_STATE_WAIT_CALL_BACK`` → ``wait-call-back``."""
    try:
        name = node_pb2.ProvisionState.Name(node_pb2.ProvisionState.ValueType(state))
    except ValueError:
        return str(state)
    return enum_label(name, "PROVISION_STATE_")


def power_label(state: int) -> str:
    """``POWER_STATE_ON`` → ``on``; never read → ``-``."""
    try:
        name = node_pb2.PowerState.Name(node_pb2.PowerState.ValueType(state))
    except ValueError:
        return str(state)
    return enum_label(name, "POWER_STATE_")


def _macs(node: node_pb2.Node) -> str:
    return ",".join(p.mac if p.pxe_enabled else f"{p.mac}(nopxe)" for p in node.ports) or NONE


def _state(node: node_pb2.Node) -> str:
    state = provision_label(node.provision_state)
    if node.target_provision_state:
        return f"{state} → {provision_label(node.target_provision_state)}"
    return state


def list_row(node: node_pb2.Node, *, with_cell: bool) -> list[str]:
    """One row of ``node list``, in the order of :data:`LIST_HEADERS`."""
    return [
        short_node_name(node.name, with_cell=with_cell),
        power_label(node.power_state),
        _state(node),
        "yes" if node.maintenance else "no",
        node.resource_class or NONE,
        _macs(node),
        truncate(node.last_error, _ERROR_WIDTH) or NONE,
    ]


def render_node_list(nodes: Sequence[node_pb2.Node], *, with_cell: bool) -> str:
    """The ``node list`` table."""
    return render_table(LIST_HEADERS, (list_row(n, with_cell=with_cell) for n in nodes))


def node_summary(node: node_pb2.Node) -> str:
    """One line after a change: name, provision state, power, maintenance."""
    text = f"{node.name}: {_state(node)}, power {power_label(node.power_state)}"
    if node.maintenance:
        text += ", maintenance"
    if node.last_error:
        text += f", last error: {truncate(node.last_error, 80)}"
    return text


def deploy_breakdown(timings: node_pb2.DeployTimings) -> str:
    """The phase table of a deploy: seconds per phase and its share of the total."""
    seconds = [p.duration.ToTimedelta().total_seconds() for p in timings.phases]
    total = sum(seconds)
    if timings.HasField("start_time") and timings.HasField("end_time"):
        wall = (timings.end_time.ToDatetime() - timings.start_time.ToDatetime()).total_seconds()
        total = max(total, wall)
    rows = [
        [phase.phase, format_duration(phase.duration), f"{(s / total * 100 if total else 0):.0f}%"]
        for phase, s in zip(timings.phases, seconds, strict=True)
    ]
    rows.append(["total", f"{total:.1f}", "100%"])
    return render_table(("PHASE", "SECONDS", "SHARE"), rows)


def _bmc(node: node_pb2.Node) -> str:
    bmc = node.bmc
    address = bmc.address or NONE
    if bmc.port:
        address = f"{address}:{bmc.port}"
    parts = [bmc.driver or NONE, address, f"user {bmc.username or NONE}"]
    parts.append("password set" if bmc.password_set else "no password")
    return ", ".join(parts)


def _properties(node: node_pb2.Node) -> str:
    p = node.properties
    return (
        f"cpus {p.cpus}, memory {p.memory_mb} MiB, local disk {p.local_gb} GiB, "
        f"arch {p.cpu_arch or NONE}"
    )


def _lock(node: node_pb2.Node, now: datetime | None) -> str:
    if not node.HasField("lock") or not node.lock.holder:
        return "unlocked"
    lock = node.lock
    text = f"held by {lock.holder} for {lock.purpose or NONE} since {format_time(lock.since, now)}"
    if lock.HasField("expire_time"):
        text += f"\nexpires {format_time(lock.expire_time, now)}"
    return text


def _instance(node: node_pb2.Node) -> str:
    info = node.instance_info
    lines = [
        f"image {info.image_url}" if info.image_url else "",
        f"checksum {info.image_checksum}" if info.image_checksum else "",
        f"root device {info.root_device}" if info.root_device else "",
    ]
    return "\n".join(line for line in lines if line) or NONE


def render_node(node: node_pb2.Node, now: datetime | None = None) -> str:
    """The ``node show`` layout: every field, then the last deploy's breakdown if any."""
    maintenance = "no"
    if node.maintenance:
        maintenance = f"yes ({node.maintenance_reason})" if node.maintenance_reason else "yes"
    pairs = [
        ("name", node.name),
        ("uid", node.uid),
        ("provision state", provision_label(node.provision_state)),
        ("target state", provision_label(node.target_provision_state)),
        ("power state", power_label(node.power_state)),
        ("maintenance", maintenance),
        ("last error", node.last_error),
        ("resource class", node.resource_class),
        ("traits", "\n".join(node.traits)),
        ("properties", _properties(node)),
        ("bmc", _bmc(node)),
        (
            "ports",
            "\n".join(f"{p.mac} ({'pxe' if p.pxe_enabled else 'no pxe'})" for p in node.ports),
        ),
        ("instance", _instance(node)),
        ("extra", "\n".join(f"{k}={v}" for k, v in sorted(node.extra.items()))),
        ("allocation", node.allocation),
        ("lock", _lock(node, now)),
        ("created", format_time(node.create_time, now)),
        ("updated", format_time(node.update_time, now)),
        ("provision updated", format_time(node.provision_update_time, now)),
        ("power synced", format_time(node.power_sync_time, now)),
        ("etag", node.etag),
    ]
    text = render_fields(pairs)
    if node.HasField("last_deploy") and (
        node.last_deploy.phases or node.last_deploy.HasField("start_time")
    ):
        deploy = node.last_deploy
        text += "\n\nlast deploy: started " + format_time(deploy.start_time, now)
        text += ", ended " + format_time(deploy.end_time, now)
        if deploy.phases:
            text += "\n" + "\n".join("  " + line for line in deploy_breakdown(deploy).split("\n"))
    return text
