"""The `greenchannel` command: broker, worker, projector, topics, checkpoint, demo, pass, replay, db, keys,
risk, enterprises, request, dashboard, gateway, firms, report.

Each command group has its module here, with its parser (`add_arguments`) and its handlers (`COMMANDS`).
"""

from __future__ import annotations

import argparse
import sys

from . import audit, broker, dashboard, db, demo, gateway, operators, passes, report, station, worker

__all__ = ["main", "build_parser"]

# The groups in the order `greenchannel --help` lists their commands.
GROUPS = (broker, worker, station, demo, passes, audit, report, db, operators, dashboard, gateway)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greenchannel", description="Green logistics channel coordination")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..connection import ConnectionSettingsError
    from ..settings import get_settings

    try:
        return run(args, get_settings())
    except ConnectionSettingsError as exc:  # a missing password, an unreadable CA or password file
        print(f"greenchannel: {exc}", file=sys.stderr)
        return 2


def run(args, settings) -> int:
    """Hand the parsed command to its group's handler."""
    for group in GROUPS:
        handler = group.COMMANDS.get(args.command)
        if handler is not None:
            return handler(settings, args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
