"""The database layer on real databases: migrations, projections and queries (no broker).

Every test runs on SQLite (a file under tmp_path) and on PostgreSQL when GC_TEST_DATABASE_URL
names a server (`bash tests/services/postgres.sh` starts one and prints its URL). On PostgreSQL
each test gets a database of its own, created and dropped here, so parallel runs never meet.
The messages are written out by hand in the shapes of schemas/PassDecision and PassStatus, and
checked against those schemas.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, func, inspect, select
from sqlalchemy.engine import make_url
from sqlmodel import Session, SQLModel

from models.store.db import (
    alembic_config,
    checkpoint_dwell,
    get_pass,
    get_pass_events,
    init_db,
    make_engine,
    project_batch,
    project_decisions,
    project_enterprises,
    project_risks,
    project_statuses,
    upgrade,
)
from models.store.tables import Enterprise, Pass, PassEvent, Region, Shipment
from tests.support.projections import CP_DG, CP_GZ, CP_SZ, ROUTE_A, ROUTE_B, decision, fresh_postgres_database, status

ROOT = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("GC_TEST_DATABASE_URL", "")


def _postgres_skip_reason() -> str:
    if not PG_URL:
        return "GC_TEST_DATABASE_URL is not set (bash tests/services/postgres.sh starts a PostgreSQL and prints one)"
    if make_url(PG_URL).get_backend_name() != "postgresql":
        return f"GC_TEST_DATABASE_URL is not a PostgreSQL URL ({make_url(PG_URL).get_backend_name()})"
    return ""


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=pytest.mark.skipif(bool(_postgres_skip_reason()), reason=_postgres_skip_reason()),
    ),
]


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    """An empty database: a new SQLite file, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'greenchannel.db'}"
        return
    with fresh_postgres_database(PG_URL) as url:
        yield url


@pytest.fixture
def engine(database_url):
    upgrade(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def utc(value: datetime | None) -> datetime | None:
    """As UTC: SQLite gives back naive datetimes (UTC, as written), PostgreSQL aware ones."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def snapshot(engine) -> dict[str, list[tuple]]:
    """Every row of every table, in primary-key order."""
    with engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]
            for t in SQLModel.metadata.sorted_tables
        }


def project(engine, fn, batch) -> None:
    """One batch in one transaction, as the worker does."""
    with Session(engine) as session:
        fn(session, batch)
        session.commit()


# --- migrations -------------------------------------------------------------------------------


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def assert_schema_is_the_models(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert context.get_current_revision() == head_revision()
            assert compare_metadata(context, SQLModel.metadata) == []
            assert set(inspect(conn).get_table_names()) == set(SQLModel.metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()


def test_migrations_make_exactly_the_models_on_an_empty_database(database_url):
    upgrade(database_url)
    assert_schema_is_the_models(database_url)
    upgrade(database_url)  # at head already: nothing to do
    assert_schema_is_the_models(database_url)


def test_init_db_adopts_a_schema_made_by_create_all(database_url):
    """Databases made before migrations (create_all, no alembic_version) keep their rows."""
    engine = make_engine(database_url)
    try:
        # What create_all made then: the tables of the baseline revision (later ones come by migration).
        baseline = [
            SQLModel.metadata.tables[n]
            for n in ("checkpoint", "enterprise", "pass", "pass_event", "region", "shipment")
        ]
        SQLModel.metadata.create_all(engine, tables=baseline)
        project(engine, project_risks, [{"adcode": "4403", "level": "high", "effective_at": "2020-02-20T00:00:00Z"}])
        init_db(engine)
        with Session(engine) as session:
            assert [r.level for r in session.scalars(select(Region))] == ["high"]
    finally:
        engine.dispose()
    assert_schema_is_the_models(database_url)


def test_concurrent_upgrades_of_one_database_all_succeed(database_url):
    """Worker replicas and the migrate job start together: each runs the upgrade; one does it."""
    code = (
        "import sys\n"
        "from models.store.db import upgrade\n"
        "upgrade(sys.argv[1])\n"
        "assert 'faust' not in sys.modules, 'the migrations imported Faust'\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, database_url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(errors)
    assert_schema_is_the_models(database_url)


# --- projections ------------------------------------------------------------------------------


def test_project_decisions_is_idempotent(engine):
    first = decision("S-1", "440305000001")
    batch = [
        first,
        decision("S-2", None),
        decision("S-3", "440305000002", plate="粤B54321", route=ROUTE_B),
        first,
    ]  # redelivered inside the same batch
    project(engine, project_decisions, batch)
    once = snapshot(engine)
    project(engine, project_decisions, batch)
    assert snapshot(engine) == once
    assert [r[0] for r in once["shipment"]] == ["S-1", "S-2", "S-3"]
    assert [r[0] for r in once["pass"]] == ["440305000001", "440305000002"]
    assert [r[0] for r in once["checkpoint"]] == sorted({CP_SZ, CP_DG, CP_GZ})
    with Session(engine) as session:
        rejected = session.get(Shipment, "S-2")
        assert (rejected.decision, rejected.pass_id, rejected.priority) == ("rejected", None, None)
        assert rejected.reasons == [
            {"code": "not_essential", "text": "cargo is not on the essential list", "field": "cargo"}
        ]
        p = get_pass(session, pass_id="440305000001")
        assert (p.shipment_id, p.plate, p.issuer, p.trip, p.toll_exempt, p.route, p.token) == (
            "S-1",
            "粤B12345",
            "440305",
            "single",
            True,
            ROUTE_A,
            "Y2xhaW1zQQ.c2lnQQ",
        )
        assert utc(p.valid_until) == datetime(2020, 2, 27, 0, 0, tzinfo=UTC)


def test_project_statuses_is_idempotent(engine):
    pid = "440305000001"
    batch = [
        ("ev-1", status(pid, "issued", "2020-02-20T08:00:00+08:00")),
        ("ev-2", status(pid, "at_checkpoint", "2020-02-20T09:00:00+08:00", checkpoint_id=CP_SZ)),
        ("ev-2", status(pid, "at_checkpoint", "2020-02-20T09:00:00+08:00", checkpoint_id=CP_SZ)),
        ("ev-3", status(pid, "in_transit", "2020-02-20T09:12:00+08:00", checkpoint_id=CP_SZ, dwell=720.0)),
    ]
    project(engine, project_statuses, batch)
    once = snapshot(engine)
    project(engine, project_statuses, batch)
    assert snapshot(engine) == once
    assert len(once["pass_event"]) == 3
    with Session(engine) as session:
        p = get_pass(session, pass_id=pid)
        assert (p.status, p.checkpoint_id, utc(p.status_at)) == (
            "in_transit",
            CP_SZ,
            datetime(2020, 2, 20, 1, 12, tzinfo=UTC),
        )


def test_project_risks_and_enterprises_are_idempotent(engine):
    risks = [
        {"adcode": "4403", "level": "medium", "effective_at": "2020-02-20T00:00:00+08:00"},
        {"adcode": "42", "level": "high", "effective_at": "2020-02-20T00:00:00+08:00"},
        {"adcode": "4403", "level": "low", "effective_at": "2020-02-21T00:00:00+08:00"},
    ]  # later in the batch wins
    firms = [
        {
            "credit_code": "91330100799655058B",
            "name": "Alibaba",
            "action": "add",
            "effective_at": "2020-02-20T00:00:00Z",
        },
        {
            "credit_code": "9144030071526726XG",
            "name": "Tencent",
            "action": "add",
            "effective_at": "2020-02-20T00:00:00Z",
        },
        {
            "credit_code": "9144030071526726XG",
            "name": "Tencent",
            "action": "remove",
            "effective_at": "2020-02-21T00:00:00Z",
        },
    ]
    for _ in range(2):
        project(engine, project_risks, risks)
        project(engine, project_enterprises, firms)
        with Session(engine) as session:
            regions = {r.adcode: (r.level, utc(r.effective_at)) for r in session.scalars(select(Region))}
            listed = {e.credit_code: (e.name, e.listed) for e in session.scalars(select(Enterprise))}
        assert regions == {
            "4403": ("low", datetime(2020, 2, 20, 16, 0, tzinfo=UTC)),
            "42": ("high", datetime(2020, 2, 19, 16, 0, tzinfo=UTC)),
        }
        assert listed == {"91330100799655058B": ("Alibaba", True), "9144030071526726XG": ("Tencent", False)}


def test_a_status_before_its_decision_still_ends_with_a_full_pass(engine):
    pid = "440305000007"
    project(
        engine,
        project_statuses,
        [("ev-1", status(pid, "at_checkpoint", "2020-02-20T09:00:00+08:00", checkpoint_id=CP_SZ))],
    )
    project(engine, project_decisions, [decision("S-7", pid, priority="P0")])
    with Session(engine) as session:
        p = get_pass(session, pass_id=pid)
        assert (p.shipment_id, p.plate, p.priority, p.issuer, p.trip, p.toll_exempt) == (
            "S-7",
            "粤B12345",
            "P0",
            "440305",
            "single",
            True,
        )
        assert (utc(p.valid_from), utc(p.valid_until)) == (
            datetime(2020, 2, 20, 0, 0, tzinfo=UTC),
            datetime(2020, 2, 27, 0, 0, tzinfo=UTC),
        )
        assert (p.route, p.token) == (ROUTE_A, "Y2xhaW1zQQ.c2lnQQ")
        # ... and the decision did not undo the status that came first.
        assert (p.status, p.checkpoint_id, utc(p.status_at)) == (
            "at_checkpoint",
            CP_SZ,
            datetime(2020, 2, 20, 1, 0, tzinfo=UTC),
        )


@pytest.mark.parametrize("reroute_first", [False, True], ids=["decision-first", "reroute-first"])
def test_a_reroute_is_not_overwritten_by_a_late_decision(engine, reroute_first):
    pid = "440305000009"
    first = decision("S-9", pid, route=ROUTE_A, token="Y2xhaW1zQQ.c2lnQQ")
    reroute = (
        "ev-r",
        status(
            pid,
            "rerouted",
            "2020-02-20T10:00:00+08:00",
            route=ROUTE_B,
            token="Y2xhaW1zQg.c2lnQg",
            reason="441900 risk raised",
        ),
    )
    if reroute_first:
        project(engine, project_statuses, [reroute])
    else:
        project(engine, project_decisions, [first])
        project(engine, project_statuses, [reroute])
    # The decision again (redelivered, or first seen now), with the plate corrected meanwhile.
    project(
        engine, project_decisions, [decision("S-9", pid, route=ROUTE_A, token="Y2xhaW1zQQ.c2lnQQ", plate="粤B99999")]
    )
    with Session(engine) as session:
        p = get_pass(session, pass_id=pid)
        assert (p.route, p.token) == (ROUTE_B, "Y2xhaW1zQg.c2lnQg")
        assert (p.status, p.plate, p.shipment_id) == ("rerouted", "粤B99999", "S-9")


def test_a_batch_is_one_executemany_per_table_whatever_its_size(engine):
    """6,000 passes are 66,000 bind parameters as one multi-row VALUES, over PostgreSQL's 65,535:
    the upserts are executemany, one statement per table, whatever the batch size."""
    one, first = decision("S-0", "440305000000"), status("440305000000", "issued", "2020-02-20T08:00:00+08:00")
    decisions, statuses = [], []
    for i in range(6000):
        pid = f"440305{i:06d}"
        decisions.append({**one, "shipment_id": f"S-{i}", "pass": {**one["pass"], "pass_id": pid}})
        statuses.append((f"ev-{i}", {**first, "pass_id": pid}))
    inserts = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT"):
            inserts.append((statement.split()[2].strip('"'), executemany, len(parameters)))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with Session(engine) as session:
            project_batch(session, decisions=decisions, statuses=statuses)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert inserts == [
        ("shipment", True, 6000),
        ("pass", True, 6000),
        ("checkpoint", True, 2),
        ("pass_event", True, 6000),
        ("pass", True, 6000),
    ]
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Shipment)) == 6000
        assert session.scalar(select(func.count()).select_from(PassEvent)) == 6000
        assert set(session.scalars(select(Pass.status))) == {"issued"}


# --- queries ----------------------------------------------------------------------------------


def test_get_pass_events_orders_the_history(engine):
    pid, other = "440305000011", "440305000012"
    # Fed out of order, over two batches, with offsets that disagree with the text order:
    # 09:30+08:00 is 01:30Z, before 02:00Z.
    project(
        engine,
        project_statuses,
        [
            (
                "ev-c",
                status(pid, "in_transit", "2020-02-20T02:00:00Z", checkpoint_id=CP_SZ, dwell=1800.0, exceeded=True),
            ),
            ("ev-x", status(other, "issued", "2020-02-20T00:30:00Z")),
            ("ev-a", status(pid, "issued", "2020-02-20T08:00:00+08:00")),
        ],
    )
    project(
        engine,
        project_statuses,
        [
            # The same instant as ev-c, stored later: after it.
            ("ev-d", status(pid, "held", "2020-02-20T02:00:00Z", checkpoint_id=CP_SZ, reason="inspection")),
            ("ev-b", status(pid, "at_checkpoint", "2020-02-20T09:30:00+08:00", checkpoint_id=CP_SZ)),
        ],
    )
    with Session(engine) as session:
        events = get_pass_events(session, pass_id=pid)
    assert [(e.event_id, e.status, utc(e.at)) for e in events] == [
        ("ev-a", "issued", datetime(2020, 2, 20, 0, 0, tzinfo=UTC)),
        ("ev-b", "at_checkpoint", datetime(2020, 2, 20, 1, 30, tzinfo=UTC)),
        ("ev-c", "in_transit", datetime(2020, 2, 20, 2, 0, tzinfo=UTC)),
        ("ev-d", "held", datetime(2020, 2, 20, 2, 0, tzinfo=UTC)),
    ]
    assert (events[2].dwell_seconds, events[2].dwell_exceeded, events[3].reason) == (1800.0, True, "inspection")


def test_checkpoint_dwell_means_per_checkpoint(engine):
    p1, p2, p3 = "440305000021", "440305000022", "440305000023"
    at = "2020-02-20T09:00:00+08:00"
    project(
        engine,
        project_statuses,
        [
            ("a1", status(p1, "at_checkpoint", at, checkpoint_id=CP_SZ)),  # no dwell: not a departure
            ("d1", status(p1, "in_transit", at, checkpoint_id=CP_SZ, dwell=600.0)),
            ("d2", status(p2, "in_transit", at, checkpoint_id=CP_SZ, dwell=1250.0, exceeded=True)),
            ("d3", status(p3, "in_transit", at, checkpoint_id=CP_SZ, dwell=1500.0, exceeded=True)),
            ("d4", status(p1, "in_transit", at, checkpoint_id=CP_DG, dwell=300.0)),
            ("i1", status(p2, "issued", at)),
        ],
    )
    project(
        engine,
        project_statuses,
        [("d2", status(p2, "in_transit", at, checkpoint_id=CP_SZ, dwell=1250.0, exceeded=True))],
    )  # redelivered: counted once
    with Session(engine) as session:
        dwell = checkpoint_dwell(session)
    # By hand: CP_DG has one departure of 300 s; CP_SZ three, (600 + 1250 + 1500) / 3 = 1116.67 s, two over target.
    # In checkpoint order: "BX-4403-0001" before "BX-4419-0002".
    assert dwell == [(CP_SZ, 3, pytest.approx(3350 / 3), 2), (CP_DG, 1, pytest.approx(300.0), 0)]
