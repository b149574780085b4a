"""``rackcells``: the operator CLI. Argument parsing, dispatch, and the exit-status contract.

Exit status: 0 success, 1 the server (or a file, or a wait) said no, 2 the command line was
wrong. Every expected failure is one ``rackcells: …`` line on stderr; a traceback means a bug.

The global options (``--endpoint``, ``--cell``, ``-o``, ``--timeout``) are accepted both
before and after the command, because operators type ``rackcells node list --cell rack-1``
as often as ``rackcells --cell rack-1 node list``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc

from rackcells.cli import (
    allocations,
    capacity,
    cells,
    node_actions,
    node_import,
    node_watch,
    nodes,
)
from rackcells.cli.client import DEFAULT_ENDPOINT, DEFAULT_TIMEOUT, ENV_CELL, ENV_ENDPOINT, Session
from rackcells.cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, CliError, describe_rpc_error
from rackcells.cli.output import FORMATS

__all__ = ["build_parser", "main"]


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Makes ``parser`` and every parser below it accept only whole option names.

    Abbreviations would make ``--bmc-password SECRET`` mean ``--bmc-password-file SECRET``
    and put a password where a path is expected; exact options are also safer to extend.
    """
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def _global_options() -> argparse.ArgumentParser:
    """The options every command accepts; SUPPRESS keeps a later position from erasing an
    earlier one (argparse would otherwise reset the attribute to its default)."""
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        default=argparse.SUPPRESS,
        help=f"leaf or top cell to talk to (${ENV_ENDPOINT}, default {DEFAULT_ENDPOINT})",
    )
    group.add_argument(
        "--cell",
        metavar="CELL",
        default=argparse.SUPPRESS,
        help=f"cell of bare node and allocation ids, of lists, capacity and allocate "
        f"(${ENV_CELL}); every cell without",
    )
    group.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=argparse.SUPPRESS,
        help="table for people (default), json for programs",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_timeout,
        default=argparse.SUPPRESS,
        help=f"deadline of each call (default {DEFAULT_TIMEOUT:g})",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog="rackcells",
        parents=[common],
        description="Operate rackcells: enrol, inspect, power and provision bare-metal nodes "
        "through a leaf cell or the top cell; see the cells, their capacity, and claim nodes.",
        epilog=f"Environment: {ENV_ENDPOINT}, {ENV_CELL}, RACKCELLS_BMC_PASSWORD.",
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    node = groups.add_parser("node", parents=[common], help="nodes: enrol, list, show, act")
    commands = node.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    nodes.register(commands, [common])
    node_import.register(commands, [common])
    node_actions.register(commands, [common])
    node_watch.register(commands, [common])
    cells.register(groups, [common])
    capacity.register(groups, [common])
    allocations.register(groups, [common])
    _no_abbreviations(parser)
    return parser


def _silence_stdout() -> None:
    # The reader went away (``rackcells node list | head``): send the rest nowhere so the
    # interpreter's final flush does not fail with a second error.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    session = Session.from_settings(
        getattr(args, "endpoint", None),
        getattr(args, "cell", None),
        getattr(args, "timeout", None),
        getattr(args, "output", None),
    )
    try:
        result: int = args.handler(session, args)
        sys.stdout.flush()
        return result
    except CliError as exc:
        print(f"rackcells: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except grpc.RpcError as err:
        print(f"rackcells: {describe_rpc_error(err, session.endpoint)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("rackcells: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILURE
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
