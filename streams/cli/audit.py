"""The audit's commands: `greenchannel replay` (re-decide the logged inputs and prove every recorded
decision; its options and its run) and `greenchannel pass history` (a pass's story from the log)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson

from models.keyring import SigningKeyMissing

from ..audit.history import pass_history, print_pass_history
from ..audit.reader import parse_position
from ..audit.rebuild import RebuildRefused, rebuild_database
from ..audit.report import print_report, report_html, report_json
from ..audit.run import run_replay

__all__ = ["add_arguments", "COMMANDS", "cmd_replay", "cmd_pass_history"]


def add_arguments(sub) -> None:
    replay = sub.add_parser("replay", help="re-decide the logged inputs and prove every recorded decision")
    add_replay_options(replay)


def add_replay_options(parser: argparse.ArgumentParser) -> None:
    """The options of `greenchannel replay`."""
    parser.add_argument(
        "--since",
        metavar="POS",
        help="start of the window: RFC 3339 time (record timestamp) or offset:N (default: beginning)",
    )
    parser.add_argument(
        "--until",
        metavar="POS",
        help="end of the window, inclusive: RFC 3339 time or offset:N (default: end of the log now)",
    )
    parser.add_argument(
        "--pass",
        dest="pass_ids",
        metavar="PASS_ID",
        action="append",
        default=[],
        help="add this pass's timeline (replayed and recorded) to the report; repeatable",
    )
    parser.add_argument("--json", metavar="FILE", help="write the audit report as JSON to FILE ('-' for stdout)")
    parser.add_argument("--html", metavar="FILE", help="write a static HTML report with a timeline per pass")
    parser.add_argument(
        "--rebuild",
        metavar="DATABASE_URL",
        help="instead of auditing, rebuild the database projections from the log into this empty database",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def cmd_replay(settings, args) -> int:
    """`greenchannel replay`: the audit (exit 1 on any mismatch), or with --rebuild the database rebuild."""
    from rich.console import Console

    err = Console(stderr=True)
    try:
        since, until = parse_position(args.since), parse_position(args.until)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        return 2
    console = Console(stderr=True) if args.json == "-" else Console()
    if args.rebuild:
        try:
            result = asyncio.run(
                rebuild_database(settings, args.rebuild, since=since, until=until, progress=not args.no_progress)
            )
        except RebuildRefused as exc:
            err.print(f"[red]{exc}[/red]")
            return 2
        console.print(
            f"rebuilt {result['database']} from {result['records']:,} records in {result['seconds']} s: "
            + ", ".join(f"{k} {v}" for k, v in result["rows"].items())
        )
        if args.json:
            _write(args.json, orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    try:
        report = asyncio.run(
            run_replay(settings, since=since, until=until, passes=args.pass_ids, progress=not args.no_progress)
        )
    except SigningKeyMissing as exc:
        err.print(
            f"[red]{exc} ({settings.keys_path}): the replay signs what the worker signed, with the same "
            "keys; give it GC_KEY_DIR with every private key of the ring[/red]"
        )
        return 2
    if args.json:
        _write(args.json, report_json(report))
    if args.html:
        Path(args.html).write_text(report_html(report), encoding="utf-8")
    print_report(console, report)
    return 0 if report["ok"] else 1


def cmd_pass_history(settings, args) -> int:
    """`greenchannel pass history PASS_ID`."""
    from rich.console import Console

    story = asyncio.run(pass_history(settings, args.pass_id))
    console = Console(stderr=True) if getattr(args, "json", None) == "-" else Console()
    if story is None:
        console.print(f"[red]no pass {args.pass_id} in the log[/red]")
        return 1
    if getattr(args, "json", None):
        _write(args.json, orjson.dumps(story, option=orjson.OPT_INDENT_2) + b"\n")
    print_pass_history(console, story)
    return 0


def _write(target: str, data: bytes) -> None:
    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        Path(target).write_bytes(data)


COMMANDS = {"replay": cmd_replay}
