"""`greenchannel report --verify` through the broker: the day's figures from the database the projector wrote,
proven by the log the worker wrote, and a row the database lost found (without a broker:
tests/unit/test_daily_report.py)."""

from __future__ import annotations

import asyncio
import csv
import random
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlmodel import Session, col

from models.daily import Day
from models.records import format_time, parse_time
from models.store.db import make_engine
from models.store.tables import EnterpriseChange, PassEvent, Shipment
from streams.dev.simulator import Scenario, scans_for
from tests.support.factories import load_key_enterprises, publish, wuhan_to_hangzhou_probe
from tests.support.projections import FIRM_A

START = datetime(2020, 4, 20, 1, 0, tzinfo=UTC)  # 09:00 in Beijing
DAY = Day(START.date())  # China Standard Time


async def drive(system, decision: dict, seed: int) -> None:
    """A truck along its route: every scan, then wait for an answer to each."""
    pass_id = decision["pass"]["pass_id"]
    scans = scans_for(decision, random.Random(seed))
    for scan in scans:
        await system.send(system.topics.scans, scan, key=pass_id)
    await system.tap.wait_for(system.topics.status, lambda m: m.key == pass_id.encode(), 1 + len(scans), timeout=120)


def counts(url: str) -> tuple[int, int, int]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return tuple(  # type: ignore[return-value]
                session.scalar(select(func.count()).select_from(t)) for t in (Shipment, PassEvent, EnterpriseChange)
            )
    finally:
        engine.dispose()


async def projected(system, timeout: float = 120) -> None:
    """Wait until the database holds every decision, status event and list entry the tap read."""
    await system.tap.caught_up()
    t = system.topics
    expected = (
        len({m.key for m in system.tap.where(t.decisions)}),
        len({m.headers.get("ce_id") for m in system.tap.where(t.status)}),
        len(
            {
                (m.json["credit_code"], parse_time(m.json["effective_at"]), m.json["action"])
                for m in system.tap.where(t.enterprises)
            }
        ),
    )
    deadline = time.monotonic() + timeout
    while (found := counts(system.env["GC_DATABASE_URL"])) != expected:
        assert time.monotonic() < deadline, f"projected {found}, the log holds {expected}"
        await asyncio.sleep(0.2)  # polling a condition with a deadline


def rows(path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


async def test_the_days_figures_are_proven_by_the_log_and_a_lost_row_is_found(own_system, tmp_path):
    s = own_system
    base = Scenario(seed=2700, start=START)
    await load_key_enterprises(s, base, wuhan_to_hangzhou_probe(base))  # effective the day before
    for action, hours in (("add", 2), ("remove", 6)):  # a firm listed and delisted within the day
        entry = {
            "credit_code": FIRM_A,
            "name": "杭州冷链",
            "action": action,
            "effective_at": format_time(START + timedelta(hours=hours)),
        }
        await s.send(s.topics.enterprises, entry, key=FIRM_A)
    decided = await publish(s, [base.request(n) for n in range(100, 130)])
    for i, d in enumerate([d for d in decided.values() if d["pass"] and d["pass"]["trip"] == "single"][:4]):
        await drive(s, d, seed=i)
    await projected(s)

    out = tmp_path / "csv"
    result = s.cli(
        "report", "--day", DAY.date.isoformat(), "--verify", "--csv", str(out), "--pdf", str(tmp_path / "day.pdf")
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "figures proven by the log" in result.stdout
    assert (tmp_path / "day.pdf").read_bytes().startswith(b"%PDF")

    # The figures against what the tap read, counted here without the report's code.
    decisions = [m.json for m in s.tap.where(s.topics.decisions)]
    approved = {d["shipment_id"] for d in decisions if d["pass"] and DAY.holds(parse_time(d["decided_at"]))}
    assert sum(int(r["total"]) for r in rows(out / "passes_issued.csv")) == len(approved) > 20
    departures = {
        m.headers.get("ce_id")
        for m in s.tap.where(s.topics.status)
        if m.json["dwell_seconds"] is not None and DAY.holds(parse_time(m.json["at"]))
    }
    assert sum(int(r["departures"]) for r in rows(out / "dwell.csv")) == len(departures) > 0
    assert [(r["action"], r["credit_code"]) for r in rows(out / "list_changes.csv")] == [
        ("add", FIRM_A),
        ("remove", FIRM_A),
    ]
    assert {r["key"]: r["value"] for r in rows(out / "summary.csv")}["verified"].startswith("已核验 proven")

    # A departure the database lost: the verify names the checkpoint's figures that differ.
    engine = make_engine(s.env["GC_DATABASE_URL"])
    try:
        with Session(engine) as session:
            lost = session.scalars(
                select(PassEvent).where(col(PassEvent.dwell_seconds).is_not(None), col(PassEvent.at) >= DAY.start)
            ).first()
            session.execute(delete(PassEvent).where(col(PassEvent.event_id) == lost.event_id))
            session.commit()
    finally:
        engine.dispose()
    result = s.cli("report", "--day", DAY.date.isoformat(), "--verify")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "between the database and the log" in result.stdout
    assert (
        f"dwell: log DwellRow(checkpoint_id='{lost.checkpoint_id}'" in result.stdout
    )  # the log's row, not the database's
