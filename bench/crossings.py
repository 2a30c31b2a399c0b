"""`python -m bench.crossings`: the public crossing times with many departures in the database.

For each `--passes` N (default 1,000 and 1,000,000): a fresh database at head (SQLite under a
temporary directory, or `--url` a PostgreSQL server's, a fresh database there each time) with the
checkpoints of `--checkpoints-from` (a demo's database: its real names and places) or 200 made on the
gazetteer's counties, and N departures with a dwell time (pass_event rows, written in batches of
2,000 as the projector writes them, so migration 0004's triggers count each) spread over `--days`
days (or at `--per-day` a day) up to a fixed end, dwells log-normal around 7 minutes (15 at a sixth
of the checkpoints, congested). Measured:
- the fill's rate and a batch of 2,000 departures with the triggers and without them (their cost);
- the feed's computation (`PublicCrossings.feed`, the channel's clock): the first and the median of 5.
`--keep FILE` keeps the last SQLite database (the README's screenshot is of one). Results: `--out`.
Not part of `make bench`; no test asserts its timings.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text
from sqlmodel import Session, select

from models.store.db import init_db, make_engine
from models.store.tables import Checkpoint, PassEvent

END = datetime(2020, 2, 26, 10, 0, tzinfo=UTC)  # 18:00 in Beijing, the demo's week
BATCH = 2_000


def checkpoints(source: str | None, n: int, rng: random.Random) -> list[dict]:
    if source:
        engine = make_engine(f"sqlite:///{source}")
        with Session(engine) as s:
            rows = [c.model_dump() for c in s.exec(select(Checkpoint))]
        engine.dispose()
        return rows
    from routing import Gazetteer

    g = Gazetteer.default()
    counties = [p for p in g.places() if g.is_finest(p)]
    return [
        {
            "checkpoint_id": f"BX-{p.adcode}",
            "name": f"{g.name(p.adcode)} 检查站",
            "adcode": p.adcode,
            "lat": p.lat,
            "lon": p.lon,
        }
        for p in rng.sample(counties, n)
    ]


def departures(n: int, cps: list[dict], days: float, rng: random.Random, start: int = 0):
    """N departure rows: times uniform over `days` before END, busier checkpoints first, a few congested."""
    ids = [c["checkpoint_id"] for c in cps]
    weights = [1 / (i + 1) ** 0.7 for i in range(len(ids))]
    slow = set(ids[:: max(1, len(ids) // 6)])
    for i in range(start, start + n):
        cp = rng.choices(ids, weights)[0]
        dwell = min(6 * 3600.0, rng.lognormvariate(math.log(900 if cp in slow else 420), 0.55))
        at = END - timedelta(seconds=rng.uniform(0, days * 86400))
        yield {
            "event_id": f"bench-{i}",
            "pass_id": f"{i % 999999:012d}"[-12:],
            "status": "in_transit",
            "at": at,
            "checkpoint_id": cp,
            "reason": None,
            "dwell_seconds": round(dwell, 1),
            "dwell_exceeded": dwell > 900,
        }


def write(engine, rows: list[dict]) -> float:
    started = time.perf_counter()
    with Session(engine) as s:
        s.execute(insert(PassEvent), rows)
        s.commit()
    return time.perf_counter() - started


def one_size(url: str, passes: int, args, rng: random.Random) -> dict:
    engine = make_engine(url)
    init_db(engine)
    cps = checkpoints(args.checkpoints_from, args.checkpoints, rng)
    with Session(engine) as s:
        s.execute(insert(Checkpoint), cps)
        s.commit()
    days = passes / args.per_day if args.per_day else args.days
    started, rows = time.perf_counter(), departures(passes, cps, days, rng)
    while chunk := [r for _, r in zip(range(BATCH), rows, strict=False)]:
        write(engine, chunk)
    fill = time.perf_counter() - started
    from streams.gateway.crossings import PublicCrossings

    feed = PublicCrossings(engine, clock="channel")
    timings = []
    for _ in range(6):
        t0 = time.perf_counter()
        body = feed.feed()
        timings.append(time.perf_counter() - t0)
    shown = sum(1 for c in body.checkpoints if c.last_day.median_dwell_minutes is not None)
    with_triggers = statistics.median(
        write(engine, list(departures(BATCH, cps, 1, rng, 10**8 + k * BATCH))) for k in range(3)
    )
    without = _without_triggers(engine, cps, rng)
    engine.dispose()
    return {
        "passes": passes,
        "days": round(days, 1),
        "checkpoints": len(cps),
        "fill_rows_per_s": round(passes / fill),
        "batch_2000_with_triggers_ms": round(with_triggers * 1000, 1),
        "batch_2000_without_triggers_ms": round(without * 1000, 1),
        "feed_first_ms": round(timings[0] * 1000, 1),
        "feed_median_ms": round(statistics.median(timings[1:]) * 1000, 1),
        "checkpoints_with_a_day_figure": shown,
        "as_of": body.as_of,
    }


def _without_triggers(engine, cps, rng) -> float:
    """A batch of 2,000 departures written with the crossing triggers dropped (then made again)."""
    import importlib

    m = importlib.import_module("models.store.migrations.versions.0004_crossings")
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as c:
        if sqlite:
            for name in ("gc_crossing_slot_insert", "gc_crossing_slot_update", "gc_crossing_slot_delete"):
                c.execute(text(f"DROP TRIGGER {name}"))
        else:
            c.execute(text("ALTER TABLE pass_event DISABLE TRIGGER gc_crossing_slot_insert"))
    took = statistics.median(
        write(engine, list(departures(BATCH, cps, 1, rng, 2 * 10**8 + k * BATCH))) for k in range(3)
    )
    with engine.begin() as c:
        if sqlite:
            for statement in m.sqlite_triggers():
                c.exec_driver_sql(statement)
        else:
            c.execute(text("ALTER TABLE pass_event ENABLE TRIGGER gc_crossing_slot_insert"))
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passes", type=int, nargs="+", default=[1_000, 1_000_000])
    p.add_argument("--checkpoints", type=int, default=200)
    p.add_argument("--checkpoints-from", help="a demo's SQLite database: its checkpoints")
    p.add_argument("--days", type=float, default=30.0)
    p.add_argument("--per-day", type=float, help="departures a day (the days then follow from --passes)")
    p.add_argument("--url", help="a PostgreSQL server (postgresql+psycopg://…/db): a fresh database per size")
    p.add_argument("--keep", type=Path, help="keep the last SQLite database here")
    p.add_argument("--out", type=Path, default=Path("bench/out/crossings.json"))
    args = p.parse_args()
    rng = random.Random(2020)
    results = []
    for n in args.passes:
        work = Path(tempfile.mkdtemp(prefix="gc-crossings-"))
        try:
            if args.url:
                from tests.support.projections import fresh_postgres_database

                with fresh_postgres_database(args.url) as url:
                    results.append(one_size(url, n, args, rng))
            else:
                results.append(one_size(f"sqlite:///{work / 'gc.db'}", n, args, rng))
                if args.keep:
                    shutil.copy(work / "gc.db", args.keep)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(results[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(uuid.uuid4()), "results": results}, indent=2))


if __name__ == "__main__":
    main()
