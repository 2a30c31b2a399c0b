"""The public crossing times over a real demo's database: `greenchannel demo` runs (its embedded broker,
worker, projector, simulated firms and checkpoints) into a data directory of this test's own; then
the feed, as the gateway serves it and with the anonymity threshold lowered to one vehicle (so that
every checkpoint with a crossing shows its figures), holds no plate, pass number, shipment id, token,
event id or firm of that database, and its checkpoints' figures are those of the demo's crossings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from models.store.db import make_engine
from streams.gateway.app import Gateway, create_gateway
from streams.gateway.crossings import PublicCrossings
from tests.support.system import ROOT

SHIPMENTS = 120


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    data = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GC_")} | {"GC_DATA_DIR": str(data)}
    run = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--shipments", str(SHIPMENTS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return data / "demo" / "greenchannel.db"


def personal_data(engine) -> set[str]:
    """Every plate, pass number, shipment id, token, event id and firm the demo's database holds."""
    queries = (
        "SELECT plate FROM pass",
        "SELECT pass_id FROM pass",
        "SELECT token FROM pass",
        "SELECT shipment_id FROM shipment",
        "SELECT event_id FROM pass_event",
        "SELECT firm_id FROM firm",
        "SELECT name FROM firm",
        "SELECT credit_code FROM firm",
        "SELECT credit_code FROM enterprise",
    )
    found: set[str] = set()
    with Session(engine) as s:
        for q in queries:
            found |= {str(v) for (v,) in s.execute(text(q)) if v}
    plates = {p for p in found if len(p) in (7, 8) and not p.isascii()}
    return found | {p[1:] for p in plates}  # a plate without its province character too


@pytest.mark.timeout(600)
def test_the_feed_over_a_demo_holds_no_plate_or_pass_number(demo_db):
    engine = make_engine(f"sqlite:///{demo_db}")
    personal = personal_data(engine)
    with Session(engine) as s:
        crossed = {cp for (cp,) in s.execute(text("SELECT DISTINCT checkpoint_id FROM crossing_slot"))}
        departures = s.execute(text("SELECT count(*) FROM pass_event WHERE dwell_seconds IS NOT NULL")).one()[0]
        plates = s.execute(text("SELECT count(*) FROM pass WHERE plate IS NOT NULL")).one()[0]
    assert departures > 0 and plates > 0 and crossed  # the demo's trucks crossed: something to look in

    app = create_gateway(Gateway(engine=engine, publisher=object()))
    served = TestClient(app).get("/public/v1/crossings")
    assert served.status_code == 200
    everyone = PublicCrossings(engine, clock="channel", min_crossings=1).feed()
    bodies = {"served": served.text, "threshold 1": everyone.model_dump_json()}
    for name, body in bodies.items():
        leaked = sorted(v for v in personal if v in body)
        assert leaked == [], (name, leaked[:10])
    shown = {c.checkpoint_id for c in everyone.checkpoints if c.last_day.crossings or c.yesterday.crossings}
    assert shown and shown <= crossed
    engine.dispose()
