"""Checks of NodeService requests that need nothing but the request, shared by both cells.

A leaf runs them before it touches its database; the top runs the very same functions before
its own cross-cell MAC look-up and before forwarding. Because both cells call one
implementation in the same order, a malformed request gets the same INVALID_ARGUMENT and the
same ``google.rpc.BadRequest`` field violations whether it is sent to a leaf or through the top
(DESIGN.md: every public RPC works identically through the top and directly at a leaf), and the
top never answers ALREADY_EXISTS for a request a leaf would refuse as malformed.

Every problem becomes a :class:`~common.errors.FieldViolation` with the field's path as the
caller sent it (``node.ports[1].mac``), and all of them are reported together, so an operator
fixing an import file sees every mistake at once. Checks that need stored state (a node's etag,
the BMC as it will be after an update, MACs already enrolled) stay with the leaf.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from common.errors import FieldViolation, InvalidArgument
from common.keys import normalize_mac
from common.names import label_problem
from rackcells.v1 import node_pb2, node_service_pb2

__all__ = [
    "BMC_DRIVERS",
    "DEFAULT_BMC_DRIVER",
    "DEFAULT_RESOURCE_CLASS",
    "MAX_BATCH_CREATE",
    "MUTABLE_PATHS",
    "CheckedCreate",
    "CheckedUpdate",
    "check_batch_create_request",
    "check_create_request",
    "check_node",
    "check_traits",
    "check_update_request",
    "normalize_paths",
]

BMC_DRIVERS = ("ipmi", "fake")
# What a leaf stores when the caller leaves these empty; the checks see the node with them
# filled in, because an ipmi BMC needs an address that a fake one does not.
DEFAULT_BMC_DRIVER = "ipmi"
DEFAULT_RESOURCE_CLASS = "baremetal"

# Update-mask paths a caller may name; a parent path ("bmc") covers its sub-fields.
MUTABLE_PATHS: dict[str, tuple[str, ...]] = {
    "resource_class": (),
    "traits": (),
    "properties": ("cpus", "memory_mb", "local_gb", "cpu_arch"),
    "bmc": ("driver", "address", "port", "username", "password"),
    "ports": (),
    "maintenance": (),
    "maintenance_reason": (),
    "instance_info": ("image_url", "image_checksum", "root_device"),
    "extra": (),
}

_RESOURCE_CLASS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$")
_TRAIT = re.compile(r"^[A-Z0-9_]{1,255}$")
_CPU_ARCH = re.compile(r"^[a-z0-9_]{0,32}$")
_CHECKSUM = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^[A-Za-z0-9.:\-\[\]]{1,255}$")
_MAX_EXTRA = 64


def check_traits(traits: Iterable[str], field: str) -> list[FieldViolation]:
    """Violations for trait names that are not upper-case letters, digits and underscores."""
    return [
        FieldViolation(f"{field}[{i}]", f"{trait!r} must be upper case letters, digits and _")
        for i, trait in enumerate(traits)
        if not _TRAIT.match(trait)
    ]


def normalize_paths(paths: Iterable[str]) -> set[str]:
    """Expands ``*`` and checks each update-mask path; raises naming ``update_mask``."""
    result: set[str] = set()
    for path in paths:
        if path == "*":
            result.update(MUTABLE_PATHS)
            continue
        top, sep, sub = path.partition(".")
        if top not in MUTABLE_PATHS or (sep and sub not in MUTABLE_PATHS[top]):
            raise InvalidArgument.field(
                "update_mask", f"{path!r} cannot be updated (one of {', '.join(MUTABLE_PATHS)})"
            )
        result.add(path)
    if not result:
        raise InvalidArgument.field("update_mask", "is required: name the fields to change")
    return result


def _covers(paths: set[str] | None, top: str, sub: str | None = None) -> bool:
    if paths is None:
        return True
    return top in paths or (sub is not None and f"{top}.{sub}" in paths)


def check_node(node: node_pb2.Node, paths: set[str] | None, prefix: str = "node") -> list[str]:
    """Validates the fields of ``node`` selected by ``paths`` (all when None).

    Returns the normalised MACs of ``node.ports`` when ports are selected; raises
    INVALID_ARGUMENT listing every violation otherwise.
    """
    bad: list[FieldViolation] = []

    def violation(field: str, text: str) -> None:
        bad.append(FieldViolation(f"{prefix}.{field}" if prefix else field, text))

    if (
        _covers(paths, "resource_class")
        and node.resource_class
        and not _RESOURCE_CLASS.match(node.resource_class)
    ):
        violation("resource_class", f"{node.resource_class!r} must match {_RESOURCE_CLASS.pattern}")
    if _covers(paths, "traits"):
        bad.extend(check_traits(node.traits, f"{prefix}.traits" if prefix else "traits"))
        if len(set(node.traits)) != len(node.traits):
            violation("traits", "contains duplicates")
    props = node.properties
    for sub in ("cpus", "memory_mb", "local_gb"):
        if _covers(paths, "properties", sub) and getattr(props, sub) < 0:
            violation(f"properties.{sub}", "must not be negative")
    if _covers(paths, "properties", "cpu_arch") and not _CPU_ARCH.match(props.cpu_arch):
        violation("properties.cpu_arch", f"{props.cpu_arch!r} must match {_CPU_ARCH.pattern}")
    bmc = node.bmc
    if _covers(paths, "bmc", "driver") and bmc.driver not in BMC_DRIVERS:
        violation("bmc.driver", f"{bmc.driver!r} is not a driver (one of {', '.join(BMC_DRIVERS)})")
    if _covers(paths, "bmc", "address"):
        if bmc.driver == "ipmi" and not bmc.address:
            violation("bmc.address", "is required for the ipmi driver")
        elif bmc.address and not _HOST.match(bmc.address):
            violation("bmc.address", f"{bmc.address!r} is not a host name or IP address")
    if _covers(paths, "bmc", "port") and not 0 <= bmc.port <= 65535:
        violation("bmc.port", f"must be 0..65535, got {bmc.port}")
    if _covers(paths, "bmc", "username") and len(bmc.username) > 64:
        violation("bmc.username", "must be at most 64 characters")
    if _covers(paths, "bmc", "password") and len(bmc.password) > 255:
        violation("bmc.password", "must be at most 255 characters")
    macs: list[str] = []
    if _covers(paths, "ports"):
        for i, port in enumerate(node.ports):
            mac = normalize_mac(port.mac)
            if mac is None:
                violation(f"ports[{i}].mac", f"{port.mac!r} is not a MAC address")
            elif mac in macs:
                violation(f"ports[{i}].mac", f"{mac} appears twice")
            else:
                macs.append(mac)
    info = node.instance_info
    if (
        _covers(paths, "instance_info", "image_url")
        and info.image_url
        and not info.image_url.startswith(("http://", "https://"))
    ):
        violation("instance_info.image_url", "must be an http:// or https:// URL")
    if (
        _covers(paths, "instance_info", "image_checksum")
        and info.image_checksum
        and not _CHECKSUM.match(info.image_checksum)
    ):
        violation("instance_info.image_checksum", "must be sha256:<64 lower-case hex digits>")
    if _covers(paths, "extra"):
        if len(node.extra) > _MAX_EXTRA:
            violation("extra", f"at most {_MAX_EXTRA} keys")
        for key, value in node.extra.items():
            if not key or len(key) > 255:
                violation("extra", f"key {key[:40]!r} must be 1..255 characters")
            if len(value) > 4096:
                violation(f"extra[{key!r}]", "value must be at most 4096 characters")
    if _covers(paths, "maintenance_reason") and len(node.maintenance_reason) > 1024:
        violation("maintenance_reason", "must be at most 1024 characters")
    # PostgreSQL cannot store NUL in text; refuse it everywhere so both backends agree.
    texts: dict[str, tuple[str, str | None, str]] = {
        "maintenance_reason": ("maintenance_reason", None, node.maintenance_reason),
        "bmc.username": ("bmc", "username", bmc.username),
        "bmc.password": ("bmc", "password", bmc.password),
        "instance_info.image_url": ("instance_info", "image_url", info.image_url),
        "instance_info.root_device": ("instance_info", "root_device", info.root_device),
    }
    for field, (top, part, text) in texts.items():
        if "\x00" in text and _covers(paths, top, part):
            violation(field, "must not contain a NUL character")
    if _covers(paths, "extra") and any("\x00" in k + v for k, v in node.extra.items()):
        violation("extra", "keys and values must not contain a NUL character")
    if bad:
        raise InvalidArgument.of(bad)
    return macs


@dataclass(frozen=True)
class CheckedCreate:
    """A CreateNode request that passed the checks: the node as a leaf stores it (defaults
    filled in) and its ports' normalised MACs, in port order."""

    node: node_pb2.Node
    macs: list[str]


@dataclass(frozen=True)
class CheckedUpdate:
    """An UpdateNode request that passed the checks: the node to apply (the BMC driver
    defaulted when the mask names it), the expanded mask paths, and the normalised MACs of
    ``node.ports`` (empty unless the mask names ``ports``)."""

    node: node_pb2.Node
    paths: set[str]
    macs: list[str]


def check_create_request(request: node_service_pb2.CreateNodeRequest) -> CheckedCreate:
    """Checks ``node_id`` and the node body of a CreateNode request, reporting every
    violation of both together. ``parent`` is not checked here: each cell resolves it its own
    way (a leaf: is it this cell; the top: is it a known cell) before calling this."""
    node = node_pb2.Node()
    node.CopyFrom(request.node)
    if not node.bmc.driver:
        node.bmc.driver = DEFAULT_BMC_DRIVER
    if not node.resource_class:
        node.resource_class = DEFAULT_RESOURCE_CLASS
    problem = label_problem(request.node_id)
    violations = [FieldViolation("node_id", problem)] if problem else []
    try:
        macs = check_node(node, None)
    except InvalidArgument as exc:
        raise InvalidArgument.of([*violations, *exc.violations]) from None
    if violations:
        raise InvalidArgument.of(violations)
    return CheckedCreate(node, macs)


#: Nodes one BatchCreateNodes call may enrol: a rack's worth, in one transaction of bounded size.
MAX_BATCH_CREATE = 1000


def check_batch_create_request(
    request: node_service_pb2.BatchCreateNodesRequest,
) -> list[CheckedCreate]:
    """Checks every request of a BatchCreateNodes call as CreateNode would, reporting all
    violations at once with their paths under ``requests[i]``; also refuses a parent that
    differs from the batch's, and a node id or MAC that two requests of the batch share.
    ``parent`` itself is resolved by the caller, as for :func:`check_create_request`."""
    count = len(request.requests)
    if not 1 <= count <= MAX_BATCH_CREATE:
        raise InvalidArgument.field(
            "requests", f"must hold 1 to {MAX_BATCH_CREATE} requests, got {count}"
        )
    violations: list[FieldViolation] = []
    checked: list[CheckedCreate] = []
    first_id: dict[str, int] = {}
    first_mac: dict[str, int] = {}
    for i, item in enumerate(request.requests):
        where = f"requests[{i}]"
        if item.parent and item.parent != request.parent:
            violations.append(
                FieldViolation(f"{where}.parent", f"must be empty or {request.parent!r}")
            )
        try:
            one = check_create_request(item)
        except InvalidArgument as exc:
            violations += [
                FieldViolation(f"{where}.{v.field}", v.description) for v in exc.violations
            ]
            continue
        checked.append(one)
        if item.node_id in first_id:
            violations.append(
                FieldViolation(
                    f"{where}.node_id", f"{item.node_id} is also requests[{first_id[item.node_id]}]"
                )
            )
        first_id.setdefault(item.node_id, i)
        for k, mac in enumerate(one.macs):
            if first_mac.setdefault(mac, i) != i:
                violations.append(
                    FieldViolation(
                        f"{where}.node.ports[{k}].mac",
                        f"{mac} is also a port of requests[{first_mac[mac]}]",
                    )
                )
    if violations:
        raise InvalidArgument.of(violations)
    return checked


def check_update_request(request: node_service_pb2.UpdateNodeRequest) -> CheckedUpdate:
    """Checks the update mask first (an unknown or immutable path ends the check, naming
    ``update_mask``), then the fields of ``node`` the mask selects. ``node.name`` is resolved
    by the caller, as for :func:`check_create_request`."""
    paths = normalize_paths(request.update_mask.paths)
    node = request.node
    if "bmc" in paths or "bmc.driver" in paths:
        node = node_pb2.Node()
        node.CopyFrom(request.node)
        node.bmc.driver = node.bmc.driver or DEFAULT_BMC_DRIVER
    macs = check_node(node, paths)
    return CheckedUpdate(node, paths, macs)
