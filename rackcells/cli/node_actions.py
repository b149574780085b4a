"""``rackcells node power|boot-device|manage|provide|deploy|undeploy|abort``: acting on nodes.

Power and boot-device changes are quick BMC calls that answer with the node. Provisioning
actions take minutes, so they return an operation; by default the CLI waits for it (showing
phase and queue position on a terminal) because "did it work?" is what the operator wants to
know, and ``--no-wait`` hands the operation name back for scripts that track many at once.
"""

from __future__ import annotations

import argparse

from rackcells.cli.client import Session
from rackcells.cli.errors import CliError, UsageError
from rackcells.cli.node_views import FAILED_STATES, node_summary, power_label, provision_label
from rackcells.cli.operations import (
    INTERACTIVE_WAIT_SLICE,
    WAIT_SLICE,
    describe_progress,
    operation_node,
    wait_operation,
)
from rackcells.cli.output import (
    StatusLine,
    format_time,
    message_to_dict,
    print_json,
    render_fields,
)
from rackcells.v1 import node_pb2, node_service_pb2

__all__ = [
    "BOOT_DEVICES",
    "DEFAULT_WAIT_TIMEOUT",
    "POWER_ACTIONS",
    "PROVISION_ACTIONS",
    "cmd_boot_device",
    "cmd_power",
    "cmd_provision",
    "register",
]

POWER_ACTIONS: dict[str, node_service_pb2.PowerAction.ValueType] = {
    "on": node_service_pb2.POWER_ACTION_ON,
    "off": node_service_pb2.POWER_ACTION_OFF,
    "reboot": node_service_pb2.POWER_ACTION_REBOOT,
    "soft-off": node_service_pb2.POWER_ACTION_SOFT_OFF,
}

BOOT_DEVICES: dict[str, node_service_pb2.BootDevice.ValueType] = {
    "pxe": node_service_pb2.BOOT_DEVICE_PXE,
    "disk": node_service_pb2.BOOT_DEVICE_DISK,
}

PROVISION_ACTIONS: dict[str, tuple[node_service_pb2.ProvisionAction.ValueType, str]] = {
    "manage": (node_service_pb2.PROVISION_ACTION_MANAGE, "verify BMC access: enroll → manageable"),
    "provide": (node_service_pb2.PROVISION_ACTION_PROVIDE, "clean and offer: → available"),
    "deploy": (node_service_pb2.PROVISION_ACTION_DEPLOY, "write an image: available → active"),
    "undeploy": (node_service_pb2.PROVISION_ACTION_UNDEPLOY, "tear down: active → available"),
    "abort": (node_service_pb2.PROVISION_ACTION_ABORT, "stop waiting for the deploy agent"),
}

# A deploy of a large image on a slow rack can take a while; an hour is a generous ceiling.
DEFAULT_WAIT_TIMEOUT = 3600.0


def cmd_power(session: Session, args: argparse.Namespace) -> int:
    """Power on/off/reboot/soft-off through the BMC, or show the last power reading."""
    ref = session.node(args.name)
    if args.action == "status":
        node = session.nodes.GetNode(
            node_service_pb2.GetNodeRequest(name=str(ref)), timeout=session.timeout
        )
        if session.json:
            data = message_to_dict(node)
            print_json(
                {
                    "name": node.name,
                    "power_state": data.get("power_state", "POWER_STATE_UNSPECIFIED"),
                    "power_sync_time": data.get("power_sync_time"),
                }
            )
        else:
            print(
                render_fields(
                    [
                        ("power state", power_label(node.power_state)),
                        ("synced", format_time(node.power_sync_time)),
                    ]
                )
            )
        return 0
    node = session.nodes.SetPowerState(
        node_service_pb2.SetPowerStateRequest(
            name=str(ref),
            action=POWER_ACTIONS[args.action],
        ),
        timeout=session.timeout,
    )
    if session.json:
        print_json(message_to_dict(node))
    else:
        print(f"{node.name}: power {power_label(node.power_state)}")
    return 0


def cmd_boot_device(session: Session, args: argparse.Namespace) -> int:
    """Sets the device the node boots from next (or always, with --persistent)."""
    ref = session.node(args.name)
    node = session.nodes.SetBootDevice(
        node_service_pb2.SetBootDeviceRequest(
            name=str(ref),
            device=BOOT_DEVICES[args.device],
            persistent=args.persistent,
        ),
        timeout=session.timeout,
    )
    if session.json:
        print_json(message_to_dict(node))
    else:
        when = "every boot" if args.persistent else "the next boot"
        print(f"{node.name}: boots from {args.device} on {when}")
    return 0


def _instance_info(args: argparse.Namespace) -> node_pb2.InstanceInfo | None:
    image = getattr(args, "image", None)
    checksum = getattr(args, "checksum", None)
    root_device = getattr(args, "root_device", None)
    if not (image or checksum or root_device):
        return None
    if checksum and not image:
        raise UsageError("--checksum needs --image")
    return node_pb2.InstanceInfo(
        image_url=image or "", image_checksum=checksum or "", root_device=root_device or ""
    )


def cmd_provision(session: Session, args: argparse.Namespace) -> int:
    """Starts a provisioning action and, unless --no-wait, waits for its outcome."""
    ref = session.node(args.name)
    action, _ = PROVISION_ACTIONS[args.provision_action]
    request = node_service_pb2.ChangeProvisionStateRequest(
        name=str(ref),
        action=action,
        etag=args.etag or "",
    )
    info = _instance_info(args)
    if info is not None:
        request.instance_info.CopyFrom(info)
    operation = session.nodes.ChangeProvisionState(request, timeout=session.timeout)
    if args.no_wait:
        if session.json:
            print_json(message_to_dict(operation))
        else:
            print(f"{args.provision_action} of {ref} started: {operation.name}")
        return 0
    status = StatusLine(session.interactive)
    try:
        operation = wait_operation(
            session.operations,
            operation,
            wait_timeout=args.wait_timeout,
            rpc_timeout=session.timeout,
            on_progress=lambda op: status.show(describe_progress(op)),
            wait_slice=INTERACTIVE_WAIT_SLICE if session.interactive else WAIT_SLICE,
        )
    finally:
        status.clear()
    node = operation_node(operation)
    if node is None:
        node = session.nodes.GetNode(
            node_service_pb2.GetNodeRequest(name=str(ref)), timeout=session.timeout
        )
    if session.json:
        print_json(message_to_dict(node))
    else:
        print(node_summary(node))
    # Ending in deploy-failed is the purpose of abort, a failure of anything else.
    if node.provision_state in FAILED_STATES and args.provision_action != "abort":
        raise CliError(
            f"{args.provision_action} of {node.name} ended in "
            f"{provision_label(node.provision_state)}"
        )
    return 0


def _wait_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    """Adds the power, boot-device and provisioning commands to ``rackcells node``."""
    name_help = "cells/CELL/nodes/NODE, or a node id with --cell"
    power = commands.add_parser(
        "power", parents=parents, help="power on/off/reboot/soft-off, or show the power state"
    )
    power.add_argument("action", choices=[*POWER_ACTIONS, "status"])
    power.add_argument("name", metavar="NAME", help=name_help)
    power.set_defaults(handler=cmd_power)

    boot = commands.add_parser("boot-device", parents=parents, help="set the next boot device")
    boot.add_argument("name", metavar="NAME", help=name_help)
    boot.add_argument("device", choices=list(BOOT_DEVICES))
    boot.add_argument("--persistent", action="store_true", help="for every boot, not just the next")
    boot.set_defaults(handler=cmd_boot_device)

    for verb, (_, text) in PROVISION_ACTIONS.items():
        cmd = commands.add_parser(verb, parents=parents, help=text)
        cmd.add_argument("name", metavar="NAME", help=name_help)
        if verb == "deploy":
            cmd.add_argument("--image", metavar="URL", help="image to deploy (http or https)")
            cmd.add_argument("--checksum", metavar="sha256:HEX", help="the image's checksum")
            cmd.add_argument("--root-device", metavar="DEV", help="target disk, e.g. /dev/sda")
        cmd.add_argument("--etag", metavar="E", help="start only if the node still has this etag")
        cmd.add_argument(
            "--no-wait", action="store_true", help="print the operation name and return at once"
        )
        cmd.add_argument(
            "--wait-timeout",
            metavar="S",
            type=_wait_timeout,
            default=DEFAULT_WAIT_TIMEOUT,
            help=f"give up waiting after S seconds (default {DEFAULT_WAIT_TIMEOUT:g}; 0: never)",
        )
        cmd.set_defaults(handler=cmd_provision, provision_action=verb)
