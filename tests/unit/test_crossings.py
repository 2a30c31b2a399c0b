"""The public crossing times: the figures of a window (median, p90, share over the target, vehicles per
hour, the anonymity threshold, the trend) from constructed departures written through the projector's
functions into a database migrated to head (migration 0005's triggers count them), on SQLite and,
when GC_TEST_DATABASE_URL names a server, PostgreSQL; the triggers' keys equal the pure core's; a
rewrite, an update and a delete keep the counts equal to a count over the rows; the migration's
backfill counts the rows written before it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import text
from sqlmodel import Session, select

from models.crossings import MIN_CROSSINGS, Count, dwell_minute, figures, slot_key, trend, windows
from models.store.crossings import counts_between, crossing_figures, latest_crossing
from models.store.db import alembic_config, init_db, make_engine, project_batch
from models.store.tables import CrossingSlot, PassEvent
from tests.support.projections import CP_GZ, CP_SZ, ROUTE_B, decision, status
from tests.unit.test_db import database_url  # noqa: F401  (the fixture: SQLite, and PostgreSQL if named)

AS_OF = datetime(2020, 2, 20, 10, 5, tzinfo=UTC)  # 18:05 in Beijing


def departure(n: int, at: datetime, dwell: float, *, cp: str = CP_SZ, target: float = 900) -> tuple[str, dict]:
    pid = f"440305{n:06d}"
    body = status(pid, "in_transit", at.isoformat(), checkpoint_id=cp, dwell=dwell, exceeded=dwell > target)
    return f"dep-{n}-{cp}-{at.isoformat()}", body


def passes(count: int) -> list[dict]:
    return [decision(f"S-{n:04d}", f"440305{n:06d}", plate=f"粤B{n:05d}", route=ROUTE_B) for n in range(count)]


@pytest.fixture
def engine(database_url):  # noqa: F811
    engine = make_engine(database_url)
    init_db(engine)
    yield engine
    engine.dispose()


def write(engine, statuses) -> None:
    with Session(engine) as s:
        project_batch(s, decisions=passes(40), statuses=statuses)


def by_id(engine, as_of=AS_OF) -> dict:
    with Session(engine) as s:
        found = crossing_figures(s, as_of)
    return {row["checkpoint"].checkpoint_id: row for row in found["checkpoints"]}


def test_a_window_has_the_median_p90_share_and_rate_of_its_departures(engine):
    dwells = [300, 420, 600, 659, 900, 901, 1200, 1500, 1800, 2400]  # minutes 5 7 10 10 15 15 20 25 30 40
    write(engine, [departure(n, AS_OF - timedelta(minutes=5 * n), d) for n, d in enumerate(dwells)])
    sz = by_id(engine)[CP_SZ]
    day = sz["last_day"]
    assert day["crossings"] == 10 and day["vehicles_per_hour"] == round(10 / 24, 1)
    assert day["median_dwell_minutes"] == 15  # the upper median: the 6th smallest, 901 s
    assert day["p90_dwell_minutes"] == 30  # the 9th smallest (⌈0.9 × 10⌉)
    assert day["share_over_target"] == 0.5  # 901, 1200, 1500, 1800, 2400 over 900 s
    assert day["withheld"] is None
    hour = sz["last_hour"]  # the slot of 10:05 and the five before: 09:10 to 10:10, n = 0…10
    assert hour["crossings"] == 10 and hour["vehicles_per_hour"] == 10.0


def test_fewer_than_the_threshold_show_no_figure(engine):
    few = [departure(n, AS_OF - timedelta(minutes=n), 600) for n in range(MIN_CROSSINGS - 1)]
    write(engine, few)
    rows = by_id(engine)
    hour = rows[CP_SZ]["last_hour"]
    assert hour == {
        "crossings": None,
        "vehicles_per_hour": None,
        "median_dwell_minutes": None,
        "p90_dwell_minutes": None,
        "share_over_target": None,
        "withheld": "too_few_crossings",
    }
    assert rows[CP_GZ]["last_hour"]["withheld"] == "no_crossings" and rows[CP_GZ]["last_hour"]["crossings"] == 0
    write(engine, [departure(MIN_CROSSINGS, AS_OF, 600)])  # the fifth
    assert by_id(engine)[CP_SZ]["last_hour"]["median_dwell_minutes"] == 10


def test_the_trend_compares_the_day_with_yesterday_and_a_week_ago_stands_beside(engine):
    today = [departure(n, AS_OF - timedelta(hours=n), 1200) for n in range(6)]
    yesterday = [departure(10 + n, AS_OF - timedelta(days=1, hours=n + 1), 600) for n in range(6)]
    week = [departure(20 + n, AS_OF - timedelta(days=7, hours=n + 1), 1800) for n in range(6)]
    write(engine, today + yesterday + week)
    sz = by_id(engine)[CP_SZ]
    assert sz["last_day"]["median_dwell_minutes"] == 20 and sz["yesterday"]["median_dwell_minutes"] == 10
    assert sz["week_ago"]["median_dwell_minutes"] == 30 and sz["trend"] == "up"
    assert trend({"median_dwell_minutes": 10}, {"median_dwell_minutes": 11}) == "steady"
    assert trend({"median_dwell_minutes": 10}, {"median_dwell_minutes": 12}) == "down"
    assert trend({"median_dwell_minutes": None}, {"median_dwell_minutes": 12}) is None


def test_a_window_ends_with_the_slot_of_as_of_and_counts_nothing_after(engine):
    write(
        engine,
        [departure(n, AS_OF + timedelta(minutes=5 + n), 600) for n in range(6)]  # 10:10 on: after
        + [departure(10 + n, AS_OF - timedelta(minutes=65 + n), 600) for n in range(6)],  # 09:00: before the hour
    )
    sz = by_id(engine)[CP_SZ]
    assert sz["last_hour"]["withheld"] == "no_crossings" and sz["last_day"]["crossings"] == 6
    w = windows(AS_OF)
    assert (w["last_hour"].first, w["last_hour"].last) == ("2020-02-20T09:10Z", "2020-02-20T10:00Z")
    assert (w["week_ago"].first, w["week_ago"].last) == ("2020-02-12T10:10Z", "2020-02-13T10:00Z")


def test_the_triggers_keys_are_the_pure_cores(engine):
    times = [AS_OF + timedelta(minutes=m, seconds=s) for m, s in ((0, 0), (4, 59), (5, 0), (55, 1), (-5, 30))]
    dwells = [0, 59.9, 60, 899.99, 900, 86_399, 86_400, 10**9, -5]
    rows = [departure(i * 10 + j, t, d) for i, t in enumerate(times) for j, d in enumerate(dwells)]
    write(engine, rows)
    with Session(engine) as s:
        stored = sorted((c.slot, c.minute, c.n) for c in s.exec(select(CrossingSlot)))
    expected: dict[tuple[str, int], int] = {}
    for _, body in rows:
        key = (slot_key(datetime.fromisoformat(body["at"])), dwell_minute(body["dwell_seconds"]))
        expected[key] = expected.get(key, 0) + 1
    assert stored == sorted((slot, minute, n) for (slot, minute), n in expected.items())


def recount(engine) -> list[tuple]:
    """The counts as a GROUP BY over the rows (through the pure core's keys) and as the table holds them."""
    with Session(engine) as s:
        events = s.exec(select(PassEvent).where(PassEvent.dwell_seconds != None)).all()  # noqa: E711
        stored = sorted((c.slot, c.checkpoint_id, c.minute, c.n, c.over_target) for c in s.exec(select(CrossingSlot)))
    expected: dict[tuple, list[int]] = {}
    for e in events:
        at = e.at if e.at.tzinfo else e.at.replace(tzinfo=UTC)
        k = expected.setdefault((slot_key(at), e.checkpoint_id, dwell_minute(e.dwell_seconds)), [0, 0])
        k[0], k[1] = k[0] + 1, k[1] + int(e.dwell_exceeded)
    return [stored, sorted((*k, n, o) for k, (n, o) in expected.items())]


def test_redelivery_update_and_delete_keep_the_counts_equal_to_the_rows(engine):
    rows = [departure(n, AS_OF - timedelta(minutes=7 * n), 300 + 97 * n) for n in range(12)]
    write(engine, rows)
    write(engine, rows[:6])  # redelivered: the history keeps each event once, the counts too
    stored, expected = recount(engine)
    assert stored == expected and sum(r[3] for r in stored) == 12
    with Session(engine) as s:
        s.execute(text("UPDATE pass_event SET dwell_seconds = 2000, dwell_exceeded = true WHERE id % 3 = 0"))
        s.execute(text("UPDATE pass_event SET checkpoint_id = :cp WHERE id % 4 = 1"), {"cp": CP_GZ})
        s.execute(text("DELETE FROM pass_event WHERE id % 5 = 2"))
        s.commit()
    stored, expected = recount(engine)
    assert stored == expected


def test_the_migration_counts_the_rows_written_before_it(database_url):  # noqa: F811
    engine = make_engine(database_url)
    config = alembic_config(database_url)
    command.upgrade(config, "0004")
    with Session(engine) as s:
        project_batch(s, decisions=passes(10), statuses=[departure(n, AS_OF, 100 * n) for n in range(10)])
        assert s.exec(text("SELECT count(*) FROM pass_event")).one()[0] == 10
    command.upgrade(config, "head")
    stored, expected = recount(engine)
    assert stored == expected and sum(r[3] for r in stored) == 10
    with Session(engine) as s:
        assert latest_crossing(s) == AS_OF
    command.downgrade(config, "0004")
    command.upgrade(config, "head")
    engine.dispose()


def test_the_channels_clock_is_the_latest_crossing(engine):
    with Session(engine) as s:
        assert latest_crossing(s) is None
    write(engine, [departure(n, AS_OF - timedelta(hours=n, seconds=7), 600) for n in range(3)])
    with Session(engine) as s:
        assert latest_crossing(s) == AS_OF - timedelta(seconds=7)
        assert sum(c.n for c in counts_between(s, "2020-02-20T00:00Z", "2020-02-20T23:50Z")) == 3


def test_figures_of_no_rows_and_of_one_bucket():
    assert figures([], 1)["withheld"] == "no_crossings"
    one = [Count("X", "2020-02-20T10:00Z", 12, 7, 0)]
    f = figures(one, 1)
    assert f["median_dwell_minutes"] == f["p90_dwell_minutes"] == 12 and f["share_over_target"] == 0
    assert figures(one, 1, min_crossings=8)["withheld"] == "too_few_crossings"
