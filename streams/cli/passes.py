"""`greenchannel pass show|print|history`: a pass from the database, printed for its driver, or told
from the log."""

from __future__ import annotations

from pathlib import Path

__all__ = ["add_arguments", "COMMANDS"]


def add_arguments(sub) -> None:
    passes = sub.add_parser("pass", help="look at passes in the database")
    pass_sub = passes.add_subparsers(dest="pass_command", required=True)
    show = pass_sub.add_parser("show", help="a pass with its history")
    show.add_argument("pass_id")
    printed = pass_sub.add_parser("print", help="the driver's pass: a printable PNG or PDF with its QR code")
    printed.add_argument("pass_id")
    out = printed.add_mutually_exclusive_group()
    out.add_argument("--png", metavar="FILE", type=Path)
    out.add_argument("--pdf", metavar="FILE", type=Path)
    printed.add_argument(
        "--from-decision",
        metavar="FILE",
        type=Path,
        help="read the pass from this decision JSON instead of the database",
    )
    history = pass_sub.add_parser("history", help="a pass's full story from the log (not the database)")
    history.add_argument("pass_id")
    history.add_argument("--json", metavar="FILE", help="also write the story as JSON (FILE or '-')")


def cmd_pass(settings, args) -> int:
    if args.pass_command == "print":
        from ..pass_print import cmd_pass_print

        return cmd_pass_print(settings, args)
    if args.pass_command == "history":
        from .audit import cmd_pass_history

        return cmd_pass_history(settings, args)
    return cmd_pass_show(settings, args.pass_id)


def cmd_pass_show(settings, pass_id: str) -> int:
    from rich.console import Console
    from rich.table import Table
    from sqlmodel import Session

    from models.store.db import get_pass, get_pass_events, make_engine

    console = Console()
    with Session(make_engine(settings.database_url)) as session:
        found = get_pass(session, pass_id=pass_id)
        if found is None:
            console.print(f"[red]no pass {pass_id} in {settings.database_url}[/red]")
            return 1
        console.print(
            f"[bold]Pass {found.pass_id}[/bold]  shipment {found.shipment_id}  plate {found.plate}  "
            f"priority {found.priority}  status [bold]{found.status}[/bold]"
        )
        console.print(
            f"valid {found.valid_from} → {found.valid_until}  trip {found.trip}  toll exempt {found.toll_exempt}"
        )
        if found.route:
            console.print("route: " + " → ".join(found.route["adcodes"]) + f"  ({found.route['distance_km']} km)")
        table = Table("at", "status", "checkpoint", "reason", "dwell s")
        for e in get_pass_events(session, pass_id=pass_id):
            dwell = "" if e.dwell_seconds is None else f"{e.dwell_seconds:.0f}" + (" ⚠" if e.dwell_exceeded else "")
            table.add_row(str(e.at), e.status, e.checkpoint_id or "", e.reason or "", dwell)
        console.print(table)
    return 0


COMMANDS = {"pass": cmd_pass}
