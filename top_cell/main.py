"""``rackcells-top``: the top cell server, the federation's public API."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from common.config import ConfigError, add_arguments, from_namespace
from top_cell.config import ENV_PREFIX, TopConfig

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rackcells-top",
        description="rackcells top cell: routes the public API to the leaf cells",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the top cell's gRPC server")
    add_arguments(serve, TopConfig, ENV_PREFIX)
    args = parser.parse_args(argv)
    try:
        config = from_namespace(TopConfig, args, ENV_PREFIX)
    except (ConfigError, OSError) as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from top_cell.server import run

    try:
        asyncio.run(run(config))
    except (OSError, ConfigError) as exc:
        print(f"rackcells-top: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
