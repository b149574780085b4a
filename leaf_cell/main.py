"""``rackcells-leaf``: the per-rack leaf cell server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from common.config import ConfigError, add_arguments, from_namespace
from leaf_cell.config import ENV_PREFIX, LeafConfig

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rackcells-leaf", description="rackcells leaf cell: one rack's provisioning controller"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the leaf cell's gRPC server")
    add_arguments(serve, LeafConfig, ENV_PREFIX)
    args = parser.parse_args(argv)
    try:
        config = from_namespace(LeafConfig, args, ENV_PREFIX)
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from leaf_cell.registration import RegistrationError
    from leaf_cell.server import run

    try:
        asyncio.run(run(config))
    except (OSError, ValueError, RegistrationError) as exc:
        print(f"rackcells-leaf: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
