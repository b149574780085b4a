"""``rackcells-sim``: command line of the rack simulator.

One command stands in for a rack of servers: N IPMI 2.0 (lanplus) BMCs on consecutive UDP
ports, each driving a virtual machine, plus an inventory file the leaf cell can enrol and a
control API to watch and break the machines.  See :mod:`rackcells.sim.supervisor` for the
process layout and :mod:`rackcells.sim.faults` for the fault grammar.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from rackcells.sim.faults import FaultSpecError, parse_fault_spec
from rackcells.sim.inventory import rack_label, validate_prefix
from rackcells.sim.supervisor import MAX_PER_WORKER, RackOptions, RackSupervisor

_MAX_IPMI_PASSWORD = 20  # IPMI 2.0 passwords are at most 20 bytes

_FAULT_HELP = """\
fault injection (repeatable --fault KIND[=VALUE][:TARGET[,TARGET...]]):
  kinds:   unreachable          never answer
           slow=SECONDS         answer SECONDS late (default 2.0)
           loss=FRACTION        drop that fraction of received packets (default 0.5)
           bad-credentials[=PW] expect PW (default "not-<password>") instead of the
                                inventory's password
  targets: all (default), a fraction 0.05 or 5% of the rack (picked with --seed),
           a 1-based index 7, an index range 7-9, or a node name r1-n0007
  examples: --fault unreachable:0.05 --fault slow=2.0:r1-n0007 --fault loss=0.3:10%
Faults can be changed at run time: POST /machines/NAME/fault on the control API.

network boot (--boot-url, standing in for the boot server DHCP would announce):
  a machine that POSTs with boot device PXE fetches BOOT_URL/boot/<its MAC> (an iPXE
  script from the leaf cell).  A deploy script runs the deploy agent (rackcells.agent)
  against the machine's virtual disk: a sparse file DIR/<node>.img with --disk-dir, or
  with --disk-sink hash (the default) a sink that only counts and hashes the bytes, with
  --disk-sink count one that only counts them (disk_sha256 stays null).  A
  boot-from-disk script, or boot device disk, boots the installed image.  Phases: pxe,
  pxe_failed (404 or no server; retried on the next power-on), agent, agent_done, booted.
  --disk-writers bounds the agents of one worker that write at once (the rest queue).
  Machine fields: last_boot_script (deploy, disk, unknown, error), agent_runs, deploys,
  deploy_error, disk_bytes, disk_sha256, booted_image, pxe_failures.

control API (HTTP/JSON on 127.0.0.1, --control-port, 0 picks a free port):
  GET /, GET /machines, GET /machines/NAME,
  POST /machines/NAME/fault {"clear", "unreachable", "slow", "loss", "bad_credentials"},
  POST /machines/NAME/power {"on": true|false}   (the physical button, out of band)

Readiness: the inventory file appears (atomically) once every BMC listens, and one line
"rackcells-sim: N BMCs listening on ADDR:FIRST-LAST ..., control URL" goes to stdout.
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rackcells-sim", description="Simulated bare-metal racks with IPMI BMCs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    rack = commands.add_parser(
        "rack",
        help="simulate one rack of servers",
        description="Host N simulated IPMI 2.0 BMCs (one per UDP port) and their machines.",
        epilog=_FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rack.add_argument("--nodes", type=int, required=True, help="number of machines")
    rack.add_argument(
        "--bmc-port-base",
        type=int,
        required=True,
        metavar="PORT",
        help="UDP port of the first BMC; node i listens on PORT+i-1",
    )
    rack.add_argument(
        "--address",
        default="127.0.0.1",
        help="address the BMCs bind and the inventory names (default %(default)s)",
    )
    rack.add_argument(
        "--post-seconds",
        type=float,
        default=5.0,
        metavar="S",
        help="time a machine spends in POST after power-on (default %(default)s)",
    )
    rack.add_argument(
        "--inventory-out",
        type=Path,
        required=True,
        metavar="FILE",
        help="write the node inventory (JSON list) here when ready",
    )
    rack.add_argument("--username", default="admin", help="BMC user (default %(default)s)")
    rack.add_argument(
        "--password", default=None, help="BMC password (default: random, see the inventory)"
    )
    rack.add_argument(
        "--name-prefix", default="r1-n", help="node names are PREFIX0001... (default %(default)s)"
    )
    rack.add_argument(
        "--rack",
        default=None,
        help="rack label for the CUSTOM_RACK_ trait (default: from the prefix)",
    )
    rack.add_argument(
        "--control-port",
        type=int,
        default=0,
        help="control API TCP port on 127.0.0.1 (default 0: any free port)",
    )
    rack.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help="inject a fault, see below"
    )
    rack.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for fraction targets and packet loss (default %(default)s)",
    )
    rack.add_argument(
        "--per-worker",
        type=int,
        default=MAX_PER_WORKER,
        help=f"BMCs per worker process, 1..{MAX_PER_WORKER} (default %(default)s)",
    )
    rack.add_argument(
        "--boot-url",
        default=None,
        metavar="URL",
        help="boot server of PXE boots, http://HOST:PORT (default: PXE boots need no server)",
    )
    disks = rack.add_mutually_exclusive_group()
    disks.add_argument(
        "--disk-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep each machine's disk as a sparse file DIR/<node>.img",
    )
    disks.add_argument(
        "--disk-sink",
        choices=["hash", "count"],
        default=None,
        help="disks keep nothing: 'hash' (the default) counts and hashes what the agent "
        "writes, 'count' only counts it, so a benchmark charges the host no disk-side "
        "hashing a real disk would not do",
    )
    rack.add_argument(
        "--disk-writers",
        type=int,
        default=8,
        metavar="N",
        help="agents per worker process that write their disk at once; the others wait "
        "for a turn (default %(default)s)",
    )
    rack.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser


def parse_rack_options(argv: Sequence[str]) -> RackOptions:
    """Parse and validate a ``rack`` command line; exits with status 2 on bad input."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        faults = tuple(parse_fault_spec(spec) for spec in args.fault)
        validate_prefix(args.name_prefix)
    except (FaultSpecError, ValueError) as err:
        parser.error(str(err))
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if not 1 <= args.per_worker <= MAX_PER_WORKER:
        parser.error(f"--per-worker must be 1..{MAX_PER_WORKER}")
    if args.post_seconds < 0:
        parser.error("--post-seconds must not be negative")
    if not 0 <= args.control_port <= 65535:
        parser.error("--control-port must be 0..65535")
    if args.boot_url is not None and not _is_http_url(args.boot_url):
        parser.error("--boot-url must be http://HOST[:PORT][/PATH]")
    if (args.disk_dir or args.disk_sink) and args.boot_url is None:
        parser.error("--disk-dir and --disk-sink need --boot-url")
    if args.disk_writers < 1:
        parser.error("--disk-writers must be at least 1")
    password = args.password if args.password is not None else secrets.token_urlsafe(12)
    if not password or len(password.encode()) > _MAX_IPMI_PASSWORD:
        parser.error(f"--password must be 1..{_MAX_IPMI_PASSWORD} bytes")
    return RackOptions(
        nodes=args.nodes,
        port_base=args.bmc_port_base,
        address=args.address,
        post_seconds=args.post_seconds,
        inventory_out=args.inventory_out,
        username=args.username,
        password=password,
        name_prefix=args.name_prefix,
        rack=args.rack or rack_label(args.name_prefix),
        control_port=args.control_port,
        faults=faults,
        seed=args.seed,
        per_worker=args.per_worker,
        log_level=getattr(logging, args.log_level),
        boot_url=args.boot_url.rstrip("/") if args.boot_url else None,
        disk_dir=args.disk_dir.resolve() if args.disk_dir else None,
        disk_hash=args.disk_sink != "count",
        disk_writers=args.disk_writers,
    )


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    options = parse_rack_options(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=options.log_level, format="rackcells-sim %(levelname)s %(name)s: %(message)s"
    )
    try:
        return RackSupervisor(options).run()
    except (OSError, ValueError) as err:
        print(f"rackcells-sim: {err}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
