"""Node flags of ``node create`` and ``node update`` turned into a Node and an update mask.

Updates send only the paths the operator changed (AIP-134), so two operators editing different
fields of one node do not overwrite each other. Lists and maps (traits, extra, ports) can only
be replaced as a whole, so adding or removing one element is a read-modify-write: the node is
read first and the new whole value is sent with the etag that was read, which turns a
concurrent change into ABORTED instead of a silently lost edit.

The BMC password is taken from a file or the environment, never from a flag value, so it does
not end up in shell history or in ``ps`` output.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass

from rackcells.cli.errors import UsageError
from rackcells.v1 import node_pb2

__all__ = [
    "ENV_BMC_PASSWORD",
    "add_bmc_and_property_arguments",
    "add_update_arguments",
    "build_create_node",
    "build_update",
    "needs_current_node",
    "normalize_mac",
    "parse_key_value",
    "parse_port",
    "positive_int",
    "read_password",
]

ENV_BMC_PASSWORD = "RACKCELLS_BMC_PASSWORD"

_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")

_PROPERTY_FLAGS = (
    ("cpus", "cpus", "number of CPU threads"),
    ("memory_mb", "memory-mb", "memory in MiB"),
    ("local_gb", "local-gb", "root disk size in GiB"),
)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def normalize_mac(text: str) -> str | None:
    """``AA-BB-CC-DD-EE-FF`` / ``aabb.ccdd.eeff`` / ``aabbccddeeff`` → ``aa:bb:cc:dd:ee:ff``.

    The same forms the server accepts, so a file checked here is not rejected there.
    """
    raw = text.strip().lower()
    if "." in raw and len(raw) == 14:
        raw = raw.replace(".", "")
    if not _MAC.match(raw):
        return None
    digits = re.sub(r"[:-]", "", raw)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def parse_port(text: str) -> node_pb2.Port:
    """``MAC`` or ``MAC,nopxe`` → a Port; PXE is on unless switched off.

    The MAC itself is left for the server to check, so that the error names the field
    (``node.ports[0].mac``) exactly as for any other client.
    """
    mac, *options = text.split(",")
    pxe = True
    for option in options:
        if option == "nopxe":
            pxe = False
        elif option != "pxe":
            raise UsageError(f"--mac {text!r}: unknown option {option!r} (only 'nopxe' or 'pxe')")
    if not mac:
        raise UsageError(f"--mac {text!r}: the MAC address is missing")
    return node_pb2.Port(mac=mac, pxe_enabled=pxe)


def parse_key_value(text: str, flag: str) -> tuple[str, str]:
    """``KEY=VALUE`` → ``(KEY, VALUE)``; the value may contain ``=``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"{flag} {text!r}: expected KEY=VALUE")
    return key, value


def read_password(path: str) -> str:
    """The password in ``path`` (``-`` reads stdin), without its trailing newline.

    Errors leave the path out: an operator who typed the password where the path belongs
    must not see it echoed back into a terminal log.
    """
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise UsageError(f"--bmc-password-file: cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError("--bmc-password-file: the file is not UTF-8 text") from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise UsageError("--bmc-password-file: the file is empty")
    return password


class _RefusePlainPassword(argparse.Action):
    """Rejects ``--bmc-password VALUE`` without echoing VALUE.

    Without this option argparse would report "unrecognized arguments: --bmc-password
    VALUE", printing the password it was just handed.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} is not accepted (it would leave the password in shell history "
            f"and the process list): set {ENV_BMC_PASSWORD} or use --bmc-password-file"
        )


def add_bmc_and_property_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by create and update: scheduling class, BMC access and hardware."""
    parser.add_argument(
        "--resource-class", metavar="RC", help="scheduling class (default baremetal)"
    )
    bmc = parser.add_argument_group("BMC")
    bmc.add_argument("--bmc-driver", choices=("ipmi", "fake"), help="power driver (default ipmi)")
    bmc.add_argument("--bmc-address", metavar="A", help="BMC host name or IP address")
    bmc.add_argument("--bmc-port", metavar="P", type=int, help="BMC IPMI UDP port (default 623)")
    bmc.add_argument("--bmc-username", metavar="U", help="BMC user name")
    bmc.add_argument(
        "--bmc-password-file",
        metavar="F",
        help=f"read the BMC password from file F ('-' for stdin); create also reads "
        f"{ENV_BMC_PASSWORD}, update with --bmc-password-from-env. Never shown.",
    )
    bmc.add_argument(
        "--bmc-password", nargs="?", action=_RefusePlainPassword, help=argparse.SUPPRESS
    )
    hw = parser.add_argument_group("hardware properties")
    for dest, flag, text in _PROPERTY_FLAGS:
        hw.add_argument(f"--{flag}", dest=dest, metavar="N", type=int, help=text)
    hw.add_argument("--cpu-arch", metavar="A", help="CPU architecture, e.g. x86_64")


def add_update_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that only make sense on an existing node."""
    parser.add_argument(
        "--bmc-password-from-env",
        action="store_true",
        help=f"set the BMC password from {ENV_BMC_PASSWORD}",
    )
    sched = parser.add_argument_group("traits, extra and ports (read, changed, written back)")
    sched.add_argument("--add-trait", metavar="T", action="append", default=[])
    sched.add_argument("--remove-trait", metavar="T", action="append", default=[])
    sched.add_argument("--set-extra", metavar="K=V", action="append", default=[])
    sched.add_argument("--unset-extra", metavar="K", action="append", default=[])
    sched.add_argument("--add-mac", metavar="MAC[,nopxe]", action="append", default=[])
    sched.add_argument("--remove-mac", metavar="MAC", action="append", default=[])
    maint = parser.add_argument_group("maintenance")
    maint.add_argument("--maintenance", choices=("on", "off"), help="leave the node alone (on)")
    maint.add_argument("--reason", metavar="TEXT", help="why the node is in maintenance")
    inst = parser.add_argument_group("instance")
    inst.add_argument("--image", metavar="URL", help="image URL (http or https)")
    inst.add_argument("--checksum", metavar="sha256:HEX", help="image checksum")
    inst.add_argument("--root-device", metavar="DEV", help="target disk, e.g. /dev/sda")
    parser.add_argument("--etag", metavar="E", help="change only if the node still has this etag")


def _password(args: argparse.Namespace, *, env_default: bool) -> str | None:
    if args.bmc_password_file:
        return read_password(args.bmc_password_file)
    if env_default or getattr(args, "bmc_password_from_env", False):
        password = os.environ.get(ENV_BMC_PASSWORD)
        if password:
            return password
        if not env_default:
            raise UsageError(f"--bmc-password-from-env: {ENV_BMC_PASSWORD} is not set")
    return None


def build_create_node(args: argparse.Namespace) -> node_pb2.Node:
    """The Node of ``node create``: only what was given, the server fills in defaults."""
    node = node_pb2.Node()
    if args.resource_class:
        node.resource_class = args.resource_class
    node.traits.extend(args.trait)
    _apply_bmc_and_properties(args, node, _password(args, env_default=True), paths=None)
    node.ports.extend(parse_port(text) for text in args.mac)
    for text in args.extra:
        key, value = parse_key_value(text, "--extra")
        node.extra[key] = value
    return node


def _apply_bmc_and_properties(
    args: argparse.Namespace, node: node_pb2.Node, password: str | None, paths: list[str] | None
) -> None:
    def mark(path: str) -> None:
        if paths is not None:
            paths.append(path)

    for attr in ("driver", "address", "port", "username"):
        value = getattr(args, f"bmc_{attr}")
        if value is not None:
            setattr(node.bmc, attr, value)
            mark(f"bmc.{attr}")
    if password is not None:
        node.bmc.password = password
        mark("bmc.password")
    for attr in ("cpus", "memory_mb", "local_gb", "cpu_arch"):
        value = getattr(args, attr)
        if value is not None:
            setattr(node.properties, attr, value)
            mark(f"properties.{attr}")


def needs_current_node(args: argparse.Namespace) -> bool:
    """Whether the update changes a list or map, and so must read the node first."""
    return bool(
        args.add_trait
        or args.remove_trait
        or args.set_extra
        or args.unset_extra
        or args.add_mac
        or args.remove_mac
    )


@dataclass
class Update:
    """The Node and the update-mask paths of ``node update``."""

    node: node_pb2.Node
    paths: list[str]


def _new_traits(args: argparse.Namespace, current: node_pb2.Node) -> list[str]:
    removed = set(args.remove_trait)
    traits = [t for t in current.traits if t not in removed]
    for trait in args.add_trait:
        if trait not in traits:
            traits.append(trait)
    return traits


def _new_extra(args: argparse.Namespace, current: node_pb2.Node) -> dict[str, str]:
    extra = dict(current.extra)
    for key in args.unset_extra:
        extra.pop(key, None)
    for text in args.set_extra:
        key, value = parse_key_value(text, "--set-extra")
        extra[key] = value
    return extra


def _new_ports(args: argparse.Namespace, current: node_pb2.Node) -> list[node_pb2.Port]:
    removed: set[str] = set()
    for text in args.remove_mac:
        mac = normalize_mac(text)
        if mac is None:
            raise UsageError(f"--remove-mac {text!r} is not a MAC address")
        removed.add(mac)
    ports = [
        node_pb2.Port(mac=p.mac, pxe_enabled=p.pxe_enabled)
        for p in current.ports
        if (normalize_mac(p.mac) or p.mac) not in removed
    ]
    ports.extend(parse_port(text) for text in args.add_mac)
    return ports


def _check_maintenance(args: argparse.Namespace) -> None:
    if args.reason is not None and args.maintenance == "off":
        raise UsageError("--reason only goes with --maintenance on")


def build_update(args: argparse.Namespace, name: str, current: node_pb2.Node | None) -> Update:
    """The Node (with ``name`` and, when given or read, the etag) and the changed paths.

    ``current`` is the node as just read when :func:`needs_current_node` says so; its etag is
    sent unless ``--etag`` overrides it.
    """
    _check_maintenance(args)
    node = node_pb2.Node(name=name)
    paths: list[str] = []
    if args.resource_class is not None:
        node.resource_class = args.resource_class
        paths.append("resource_class")
    _apply_bmc_and_properties(args, node, _password(args, env_default=False), paths)
    if current is not None:
        if args.add_trait or args.remove_trait:
            traits = _new_traits(args, current)
            if traits != list(current.traits):
                node.traits.extend(traits)
                paths.append("traits")
        if args.set_extra or args.unset_extra:
            extra = _new_extra(args, current)
            if extra != dict(current.extra):
                node.extra.update(extra)
                paths.append("extra")
        if args.add_mac or args.remove_mac:
            ports = _new_ports(args, current)
            if ports != list(current.ports):
                node.ports.extend(ports)
                paths.append("ports")
        node.etag = current.etag
    if args.maintenance is not None:
        node.maintenance = args.maintenance == "on"
        paths.append("maintenance")
    if args.reason is not None:
        node.maintenance_reason = args.reason
        paths.append("maintenance_reason")
    for flag, attr in (
        ("image", "image_url"),
        ("checksum", "image_checksum"),
        ("root_device", "root_device"),
    ):
        value = getattr(args, flag)
        if value is not None:
            setattr(node.instance_info, attr, value)
            paths.append(f"instance_info.{attr}")
    if args.etag:
        node.etag = args.etag
    return Update(node, paths)
