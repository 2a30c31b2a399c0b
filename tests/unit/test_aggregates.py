"""The dashboard's aggregates (migration 0002's tables and triggers) against a fresh GROUP BY over
the rows, after every batch of a sequence of decisions and status changes (issue, scans with and
without dwell, hold, reroute, suspend, expire, revoke, delivery), with batches redelivered, a
status before its decision, a shipment decided again, and more departures than the board keeps;
on SQLite and, when GC_TEST_DATABASE_URL names a server, PostgreSQL (tests/unit/test_db.py)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

from alembic import command
from sqlmodel import Session, select

from models.passes import ACTIVE
from models.store.db import (
    active_pass_places,
    alembic_config,
    checkpoint_board,
    count_by,
    counted_board,
    counted_hours,
    counted_places,
    counted_rejections,
    counted_statuses,
    decisions_per_hour,
    init_db,
    make_engine,
    project_batch,
    project_decisions,
    project_statuses,
    rejections_by_reason,
    upgrade,
)
from models.store.tables import RECENT_DWELLS, Pass, PassCount, RecentDwell
from tests.support.projections import CP_DG, CP_GZ, CP_SZ, ROUTE_B, decision, status
from tests.unit.test_db import database_url  # noqa: F401  (the fixture: SQLite, and PostgreSQL if named)

ISSUERS = ("440305", "440106", "441900", "420102")


def pid(n: int) -> str:
    return f"{ISSUERS[n % len(ISSUERS)]}{n:06d}"


def approved(n: int, *, hour: int = 8) -> dict:
    d = decision(f"S-{n:04d}", pid(n), priority=f"P{n % 4}")
    d["decided_at"] = f"2020-02-20T{hour:02d}:{n % 60:02d}:00+08:00"
    return d


def rejected(n: int, *codes: str) -> dict:
    d = decision(f"R-{n:04d}", None)
    d["reasons"] = [{"code": c, "text": c} for c in codes]
    return d


def st(n: int, state: str, minute: int, **kw) -> tuple[str, dict]:
    at = f"2020-02-20T{9 + minute // 60:02d}:{minute % 60:02d}:00+08:00"
    return f"{pid(n)}/{state}/{minute}/{kw.get('checkpoint_id')}", status(pid(n), state, at, **kw)


def figures(session: Session) -> dict:
    """What the dashboard showed before migration 0002: GROUP BY over every row."""
    return {
        "statuses": count_by(session, Pass.status),
        "places": sorted(active_pass_places(session, ACTIVE), key=repr),
        "board": checkpoint_board(session, window=RECENT_DWELLS),
        "hours": sorted(decisions_per_hour(session)),
        "rejections": rejections_by_reason(session),
    }


def counted(session: Session) -> dict:
    return {
        "statuses": counted_statuses(session),
        "places": sorted(counted_places(session, ACTIVE), key=repr),
        "board": counted_board(session),
        "hours": sorted(counted_hours(session)),
        "rejections": counted_rejections(session),
    }


def batches() -> list[dict]:
    """A day of a dozen passes, as the projector would get it, redeliveries included."""
    first = {
        "decisions": [approved(n) for n in range(1, 9)] + [rejected(1, "not_essential"), rejected(2, "a", "b", "a")],
        "statuses": [st(9, "issued", 0)],  # its decision comes later
    }
    issue = {"statuses": [st(n, "issued", 0) for n in range(1, 9)]}
    scans = {
        "statuses": [st(n, "at_checkpoint", 5, checkpoint_id=CP_SZ) for n in (1, 2, 3)]
        + [st(4, "held", 6, checkpoint_id=CP_DG), st(9, "at_checkpoint", 7, checkpoint_id="XX-unknown")]
    }
    moves = {
        "statuses": [
            st(1, "in_transit", 10, checkpoint_id=CP_SZ, dwell=300.0),
            st(2, "in_transit", 25, checkpoint_id=CP_SZ, dwell=1200.0, exceeded=True),
            st(3, "rerouted", 26, route=ROUTE_B, token="Y2xhaW1zQg.c2lnQg", reason="risk"),
            st(5, "suspended", 27, reason="risk"),
            st(6, "expired", 28),
            st(7, "revoked", 29, reason="operator"),
            st(8, "delivered", 30, checkpoint_id=CP_GZ),
            st(12, "in_transit", 31, checkpoint_id=CP_DG, dwell=1500.0, exceeded=True),
        ]
    }
    late = {"decisions": [approved(9, hour=9), approved(1), rejected(1, "not_essential", "high_risk")]}
    rng = random.Random(25)
    queue = {  # more departures at one checkpoint than the board keeps, out of time order
        "statuses": [
            st(
                10 + i % 3,
                "in_transit",
                rng.randrange(0, 600),
                checkpoint_id=CP_GZ,
                dwell=float(rng.randrange(60, 2000)),
            )
            for i in range(RECENT_DWELLS + 25)
        ]
    }
    decided_again = {"decisions": [approved(2, hour=11), rejected(3, "x")]}
    return [first, issue, scans, issue, moves, scans, moves, late, queue, queue, first, late, decided_again]


def project(engine, batch: dict) -> None:
    with Session(engine) as session:
        project_batch(session, decisions=batch.get("decisions", ()), statuses=batch.get("statuses", ()))


def assert_counted_is_grouped(engine) -> dict:
    with Session(engine) as session:
        grouped = figures(session)
        assert counted(session) == grouped
        return grouped


def test_the_aggregates_equal_a_group_by_after_every_batch(database_url):  # noqa: F811
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        for batch in batches():
            project(engine, batch)
            assert_counted_is_grouped(engine)
        final = assert_counted_is_grouped(engine)
        with Session(engine) as session:  # what the sequence was meant to exercise did happen
            assert {"in_transit", "held", "rerouted", "suspended", "expired", "revoked", "delivered"} <= set(
                final["statuses"]
            )
            assert [r["recent_departures"] for r in final["board"] if r["checkpoint_id"] == CP_GZ] == [RECENT_DWELLS]
            assert len(session.exec(select(RecentDwell)).all()) == RECENT_DWELLS + 3  # CP_GZ's 50, CP_SZ's 2, CP_DG's 1
            assert final["rejections"] == {"not_essential": 1, "high_risk": 1, "a": 1, "b": 1, "x": 1}
            assert all(row.n > 0 for row in session.exec(select(PassCount)))
    finally:
        engine.dispose()


def test_random_batches_with_redeliveries_keep_the_aggregates_exact(database_url):  # noqa: F811
    upgrade(database_url)
    engine = make_engine(database_url)
    rng = random.Random(7)
    states = ("issued", "at_checkpoint", "in_transit", "held", "rerouted", "suspended", "expired", "revoked")
    checkpoints = (CP_SZ, CP_DG, CP_GZ, None)
    sent: list[dict] = []
    try:
        for _ in range(40):
            if sent and rng.random() < 0.3:  # a batch read again, after later ones were written
                batch = rng.choice(sent)
            else:
                batch = {
                    "decisions": [approved(rng.randrange(40), hour=rng.randrange(24)) for _ in range(rng.randrange(4))]
                    + [rejected(rng.randrange(5), *rng.sample(["a", "b", "c"], rng.randrange(1, 3)))],
                    "statuses": [
                        st(
                            rng.randrange(40),
                            rng.choice(states),
                            rng.randrange(600),
                            checkpoint_id=(c := rng.choice(checkpoints)),
                            dwell=float(rng.randrange(1, 3000)) if c and rng.random() < 0.5 else None,
                        )
                        for _ in range(rng.randrange(1, 30))
                    ],
                }
                sent.append(batch)
            project(engine, batch)
            assert_counted_is_grouped(engine)
    finally:
        engine.dispose()


def test_the_migration_backfills_the_aggregates_from_the_rows_there(database_url):  # noqa: F811
    """A database at revision 0001 (before the aggregates) with its rows: the upgrade counts them."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection=connection), "0001")
        for batch in batches()[:9]:
            project(engine, batch)
        init_db(engine)
        assert_counted_is_grouped(engine)
        for batch in batches()[9:]:  # and the triggers count on from there
            project(engine, batch)
            assert_counted_is_grouped(engine)
    finally:
        engine.dispose()


def test_rows_rolled_back_take_their_counts_with_them(database_url):  # noqa: F811
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        project(engine, batches()[0])
        before = assert_counted_is_grouped(engine)
        with Session(engine) as session:
            project_decisions(session, [approved(n) for n in range(20, 30)])
            project_statuses(session, [st(n, "in_transit", 3, checkpoint_id=CP_SZ, dwell=9.0) for n in range(1, 9)])
            assert counted(session) == figures(session) != before  # seen inside the transaction
            session.rollback()
        assert assert_counted_is_grouped(engine) == before
    finally:
        engine.dispose()


def test_two_projectors_writing_at_once_keep_the_aggregates_exact(database_url):  # noqa: F811
    """Two projectors at once: one projecting new passes of counties A then B, the other the issue
    of passes already decided, of counties B then A: their batches reach the same counters (passes
    of no status, by county) in opposite orders. Every batch commits (none deadlocks) and the
    counts stay exact."""
    upgrade(database_url)
    engine = make_engine(database_url)
    rounds, size = 8, 200
    issued = [k for k in range(rounds * size) if k % 4 in (0, 1)]  # two counties (ISSUERS[0] and [1])
    project(engine, {"decisions": [approved(k) for k in issued]})  # decided, not yet issued: no status
    new = [[k + 10_000 for k in range(r * size, (r + 1) * size) if k % 4 in (0, 1)] for r in range(rounds)]
    old = [sorted(issued[r::rounds], key=lambda k: -(k % 4)) for r in range(rounds)]  # county B first
    try:
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(lambda: [project(engine, {"decisions": [approved(k) for k in ks]}) for ks in new])
            b = pool.submit(lambda: [project(engine, {"statuses": [st(k, "issued", 0) for k in ks]}) for ks in old])
            a.result()
            b.result()
        final = assert_counted_is_grouped(engine)
        assert final["statuses"] == {"issued": len(issued), None: len(issued)}
    finally:
        engine.dispose()
