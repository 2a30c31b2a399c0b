"""`greenchannel report`: the day's report for the authorities (streams.daily), from the database, proven
by the log with --verify."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, date
from pathlib import Path

__all__ = ["add_arguments", "COMMANDS", "cmd_report"]


def add_arguments(sub) -> None:
    report = sub.add_parser(
        "report",
        help="the day's report for the authorities: passes, rejections, reroutes, dwell, corridors, list changes",
    )
    report.add_argument("--day", required=True, type=_day, metavar="YYYY-MM-DD", help="the calendar day")
    report.add_argument(
        "--utc", action="store_true", help="the day in UTC (default: China Standard Time, UTC+8, 00:00-24:00)"
    )
    report.add_argument("--province", type=_province, metavar="CODE", help="2-digit province code (e.g. 42: Hubei)")
    report.add_argument("--pdf", type=Path, metavar="FILE", help="write the report as PDF")
    report.add_argument("--csv", type=Path, metavar="DIR", help="write one CSV file per table into DIR")
    report.add_argument(
        "--verify",
        action="store_true",
        help="compute the same figures from the log (decisions, statuses, the key-enterprise list) and compare; "
        "exit 1 on any difference",
    )


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _province(text: str) -> str:
    from routing import Gazetteer

    if not re.fullmatch(r"[1-9][0-9]", text) or not Gazetteer.default().names_region(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a province's 2-digit code (e.g. 42 for Hubei)")
    return text


def _names(session):
    from sqlmodel import select

    from models.store.tables import Checkpoint
    from routing import Gazetteer

    from ..daily.view import Names

    checkpoints = dict(session.exec(select(Checkpoint.checkpoint_id, Checkpoint.name)).all())
    return Names(region=Gazetteer.default().region_name, checkpoint=lambda c: checkpoints.get(c, ""))


def _verify(settings, figures, day, province, console) -> tuple[bool, str]:
    """The figures computed again from the log, compared with the database's."""
    import asyncio

    from models.daily import day_figures, differences

    from ..daily.sources import read_log_facts

    facts, records = asyncio.run(read_log_facts(settings))
    found = differences(figures, day_figures(facts, day, province))
    if not found:
        console.print(f"[green]figures proven by the log[/green] ({records:,} records read)")
        return True, f"已核验 proven: the same figures from {records:,} log records"
    console.print(
        f"[red]{len(found)} difference{'' if len(found) == 1 else 's'} between the database and the log:[/red]"
    )
    for line in found:
        console.print(f"  {line}", markup=False)
    return False, f"不一致 {len(found)} differences from the log ({records:,} records)"


def cmd_report(settings, args) -> int:
    from rich.console import Console
    from sqlmodel import Session

    from models.daily import Day, day_figures
    from models.store.db import init_db, make_engine

    from ..daily.sources import database_facts

    console = Console()
    if not (args.pdf or args.csv or args.verify):
        console.print("[red]give --pdf FILE, --csv DIR or --verify[/red]")
        return 2
    day = Day(args.day, UTC) if args.utc else Day(args.day)
    engine = make_engine(settings.database_url)
    try:
        init_db(engine)
        with Session(engine) as session:
            figures = day_figures(database_facts(session, day), day, args.province)
            names = _names(session)
    finally:
        engine.dispose()
    ok, proof = _verify(settings, figures, day, args.province, console) if args.verify else (True, "")
    _write(figures, names, args, settings, proof, console)
    return 0 if ok else 1


def _write(figures, names, args, settings, proof: str, console) -> None:
    from sqlalchemy.engine import make_url

    from ..daily.csvs import write_csv
    from ..daily.pdf import write_pdf

    source = make_url(settings.database_url).render_as_string(hide_password=True)
    where = f"{figures.day.date} ({figures.day.zone})" + (f", province {figures.province}" if figures.province else "")
    console.print(
        f"{where}: {figures.passes_issued} passes issued, {figures.rejected_requests} requests rejected, "
        f"{sum(r.events for r in figures.interventions)} reroutes/suspensions/revocations, "
        f"{sum(r.departures for r in figures.dwell)} departures at {len(figures.dwell)} checkpoints, "
        f"{len(figures.list_changes)} key-enterprise list changes"
    )
    if args.pdf:
        console.print(f"wrote {write_pdf(figures, names, args.pdf, source=source, proof=proof)}")
    if args.csv:
        paths = write_csv(figures, names, args.csv, proof=proof)
        console.print(f"wrote {len(paths)} CSV files into {args.csv}")


COMMANDS = {"report": cmd_report}
