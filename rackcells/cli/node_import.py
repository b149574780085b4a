"""``rackcells node import FILE``: enrol a rack's worth of nodes from one JSON file.

The whole file is checked before the first call, so a typo in entry 731 does not leave a rack
half enrolled. Enrolment then sends the nodes of each cell in batches (BatchCreateNodes, one
transaction per batch on the server), several at once: per-node calls spend most of their time
on round trips and per-call overhead. A batch is all or nothing, so when one is refused (a node
that already exists, a MAC taken elsewhere) its nodes are enrolled again one by one, and each
gets its own outcome. Running an import again is therefore safe: a node that already exists is
reported as such, not as a failure, so a partly failed import can simply be repeated.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format

from rackcells.cli.client import Session
from rackcells.cli.errors import CliError, UsageError, describe_failure, rpc_failure
from rackcells.cli.names import NodeRef, node_ref
from rackcells.cli.node_fields import normalize_mac, positive_int
from rackcells.cli.output import StatusLine, print_json
from rackcells.v1 import node_pb2, node_service_pb2

__all__ = [
    "DEFAULT_CONCURRENCY",
    "ImportEntry",
    "ImportReport",
    "cmd_import",
    "enrol",
    "load_import_file",
    "parse_entries",
    "register",
]

DEFAULT_CONCURRENCY = 16
BATCH_SIZE = 200  # nodes per BatchCreateNodes call (the server takes up to 1,000)
_PROGRESS_EVERY = 0.1  # seconds between redraws of the progress line


@dataclass(frozen=True)
class ImportEntry:
    """One node of the file: its position (for messages), where it goes, and what it is."""

    index: int
    ref: NodeRef
    node: node_pb2.Node


@dataclass
class ImportReport:
    """What happened to each node, by outcome."""

    created: list[str] = field(default_factory=list)
    exists: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every node is enrolled now (created or already there)."""
        return not self.failed and not self.skipped


class ImportFileError(CliError):
    """The file cannot be imported as it is; nothing was sent."""


def _redact(message: str, obj: dict[str, Any]) -> str:
    # protobuf's parse errors may quote a value; never let that be the BMC password.
    bmc = obj.get("bmc")
    password = bmc.get("password") if isinstance(bmc, dict) else None
    if password not in (None, ""):
        message = message.replace(str(password), "***")
    return message


def _parse_one(
    index: int, obj: object, cell: str | None, where: str
) -> tuple[ImportEntry | None, str | None]:
    at = f"{where}[{index}]"
    if not isinstance(obj, dict):
        return None, f"{at}: expected a node object, got {type(obj).__name__}"
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None, f"{at}.name: is required (a node id or cells/CELL/nodes/NODE)"
    at = f"{at} ({name})"
    try:
        ref = node_ref(name, cell)
    except UsageError as exc:
        return None, f"{at}: field name: {exc.message}"
    node = node_pb2.Node()
    try:
        json_format.ParseDict(obj, node, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        text = " ".join(_redact(str(exc), obj).split()).rstrip(".")
        return None, f"{at}: {text}"
    for i, port in enumerate(node.ports):
        if normalize_mac(port.mac) is None:
            return None, f"{at}: field ports[{i}].mac: {port.mac!r} is not a MAC address"
    node.ClearField("name")  # CreateNode takes the id separately
    return ImportEntry(index, ref, node), None


def parse_entries(data: object, cell: str | None, where: str = "FILE") -> list[ImportEntry]:
    """Checks every entry of a decoded import file; raises naming the first bad entry.

    Besides protobuf's own checks (unknown fields, wrong types), names and MAC addresses are
    checked here, and duplicates within the file are caught: those would otherwise fail half
    way through, after other nodes were already enrolled.
    """
    if not isinstance(data, list):
        raise ImportFileError(
            f"{where}: expected a JSON list of node objects, got {type(data).__name__}"
        )
    entries: list[ImportEntry] = []
    problems: list[str] = []
    seen_names: dict[str, int] = {}
    seen_macs: dict[str, int] = {}
    for index, obj in enumerate(data):
        entry, problem = _parse_one(index, obj, cell, where)
        if entry is None:
            problems.append(problem or f"{where}[{index}]: invalid")
            continue
        at = f"{where}[{index}] ({entry.ref.node})"
        first = seen_names.setdefault(str(entry.ref), index)
        if first != index:
            problems.append(f"{at}: field name: {entry.ref} is also entry {first}")
        for i, port in enumerate(entry.node.ports):
            mac = normalize_mac(port.mac) or port.mac
            owner = seen_macs.setdefault(mac, index)
            if owner != index:
                problems.append(f"{at}: field ports[{i}].mac: {mac} is also in entry {owner}")
        entries.append(entry)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ImportFileError(f"{problems[0]}{more}; nothing was enrolled")
    return entries


def load_import_file(path: str, cell: str | None) -> list[ImportEntry]:
    """Reads and checks ``path``; raises :class:`ImportFileError` before anything is sent."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ImportFileError(f"{path} is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFileError(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    return parse_entries(data, cell, path)


def _already_there(session: Session, ref: NodeRef, err: grpc.RpcError) -> tuple[bool, str]:
    """Whether an ALREADY_EXISTS is about this very node (fine) or a clash (a failure)."""
    failure = rpc_failure(err)
    message = describe_failure(failure, session.endpoint)
    if failure.code != grpc.StatusCode.ALREADY_EXISTS or "mac" in failure.metadata:
        return False, message
    if failure.metadata.get("node") == str(ref):
        return True, message
    # No machine-readable detail (or a concurrent-enrolment race): ask.
    try:
        session.nodes.GetNode(
            node_service_pb2.GetNodeRequest(name=str(ref)), timeout=session.timeout
        )
    except grpc.RpcError:
        return False, message
    return True, message


def enrol(
    session: Session,
    entries: Sequence[ImportEntry],
    concurrency: int,
    status: StatusLine,
) -> ImportReport:
    """Creates every entry with at most ``concurrency`` calls in flight.

    When the endpoint cannot be reached at all, the remaining entries are skipped rather
    than each waiting for its own connection failure.
    """
    report = ImportReport()
    stop = threading.Event()

    def one(entry: ImportEntry) -> tuple[str, str]:
        if stop.is_set():
            return "skipped", ""
        request = node_service_pb2.CreateNodeRequest(
            parent=entry.ref.parent, node_id=entry.ref.node, node=entry.node
        )
        try:
            session.nodes.CreateNode(request, timeout=session.timeout)
        except grpc.RpcError as err:
            failure = rpc_failure(err)
            if failure.code == grpc.StatusCode.UNAVAILABLE and not failure.from_server:
                stop.set()
            exists, message = _already_there(session, entry.ref, err)
            return ("exists", "") if exists else ("failed", message)
        return "created", ""

    def batch(entries: list[ImportEntry]) -> list[tuple[ImportEntry, str, str]]:
        if stop.is_set():
            return [(e, "skipped", "") for e in entries]
        request = node_service_pb2.BatchCreateNodesRequest(
            parent=entries[0].ref.parent,
            requests=[
                node_service_pb2.CreateNodeRequest(node_id=e.ref.node, node=e.node) for e in entries
            ],
        )
        try:
            session.nodes.BatchCreateNodes(request, timeout=session.timeout)
        except grpc.RpcError as err:
            failure = rpc_failure(err)
            if failure.code == grpc.StatusCode.UNAVAILABLE and not failure.from_server:
                stop.set()  # the first node carries the reason; the rest were not attempted
                reason = describe_failure(failure, session.endpoint)
                return [(entries[0], "failed", reason)] + [(e, "skipped", "") for e in entries[1:]]
            # Refused as a whole: one by one, each node gets its own outcome.
            return [(e, *one(e)) for e in entries]
        return [(e, "created", "") for e in entries]

    by_cell: dict[str, list[ImportEntry]] = {}
    for entry in entries:
        by_cell.setdefault(entry.ref.parent, []).append(entry)
    batches = [
        cell[i : i + BATCH_SIZE]
        for cell in by_cell.values()
        for i in range(0, len(cell), BATCH_SIZE)
    ]
    total = len(entries)
    done = 0
    last_draw = 0.0
    status.show(f"enrolled 0/{total}")
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="import") as pool:
        for future in as_completed([pool.submit(batch, b) for b in batches]):
            for entry, outcome, message in future.result():
                name = str(entry.ref)
                if outcome == "created":
                    report.created.append(name)
                elif outcome == "exists":
                    report.exists.append(name)
                elif outcome == "skipped":
                    report.skipped.append(name)
                else:
                    report.failed.append((name, message))
            done += len(future.result())
            now = time.monotonic()
            if now - last_draw >= _PROGRESS_EVERY or done == total:
                status.show(f"enrolled {done}/{total}")
                last_draw = now
    status.clear()
    order = {str(e.ref): e.index for e in entries}
    for names in (report.created, report.exists, report.skipped):
        names.sort(key=order.__getitem__)
    report.failed.sort(key=lambda item: order[item[0]])
    return report


def _print_report(report: ImportReport) -> None:
    summary = (
        f"created {len(report.created)}, already existed {len(report.exists)}, "
        f"failed {len(report.failed)}"
    )
    if report.skipped:
        summary += f", not attempted {len(report.skipped)} (the endpoint stopped answering)"
    print(summary)
    for name, reason in report.failed:
        print(f"  failed {name}: {reason}")


def cmd_import(session: Session, args: argparse.Namespace) -> int:
    """Checks the whole file, then enrols its nodes concurrently and reports per node."""
    entries = load_import_file(args.file, session.cell)
    report = enrol(session, entries, args.concurrency, StatusLine(session.interactive))
    if session.json:
        print_json(
            {
                "created": report.created,
                "exists": report.exists,
                "failed": [{"name": n, "error": e} for n, e in report.failed],
                "skipped": report.skipped,
            }
        )
    else:
        _print_report(report)
    return 0 if report.ok else 1


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    """Adds ``node import``."""
    cmd = commands.add_parser(
        "import",
        parents=parents,
        help="enrol nodes from a JSON file",
        description="Enrol nodes from FILE, a JSON list of nodes in protobuf JSON form "
        '(e.g. [{"name": "r1-n0001", "bmc": {"address": "10.0.0.1"}, '
        '"ports": [{"mac": "52:54:00:aa:bb:01", "pxe_enabled": true}]}]). '
        "The whole file is checked first; nodes that already exist are reported, not failed.",
    )
    cmd.add_argument("file", metavar="FILE")
    cmd.add_argument(
        "--concurrency",
        metavar="N",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"calls in flight (default {DEFAULT_CONCURRENCY})",
    )
    cmd.set_defaults(handler=cmd_import)
