"""`greenchannel replay --rebuild`: the database projections rebuilt from the log into an empty database,
with the projector's own batch shape and writes (`streams.projector.shape`, `write`)."""

from __future__ import annotations

import heapq
import time
from collections import defaultdict

from .reader import Position, Record, Spec, read_log
from .report import progress_bar

__all__ = ["RebuildRefused", "rebuild_database"]


class RebuildRefused(RuntimeError):
    """The target database is not empty."""


def _row_counts(engine, tables) -> dict[str, int]:
    from sqlalchemy import func, select
    from sqlmodel import Session

    with Session(engine) as session:
        return {tb.__tablename__: session.execute(select(func.count()).select_from(tb)).scalar_one() for tb in tables}


async def rebuild_database(
    settings,
    database_url: str,
    *,
    since: Position | None = None,
    until: Position | None = None,
    batch_size: int = 5000,
    progress: bool = False,
) -> dict:
    """Project decisions, statuses, risk and enterprises from the log into an empty database, with
    the projector's own batch shape and writes (`streams.projector.shape`, `write`)."""
    from models.store.db import init_db, make_engine
    from models.store.tables import Checkpoint, Enterprise, Pass, PassEvent, Region, Shipment

    from ..handlers import Topics
    from ..projector import shape, write

    tables = (Shipment, Pass, PassEvent, Region, Enterprise, Checkpoint)
    engine = make_engine(database_url)
    try:
        init_db(engine)
        filled = [name for name, n in _row_counts(engine, tables).items() if n]
        if filled:
            raise RebuildRefused(
                f"{database_url} is not empty (rows in {', '.join(filled)}): rebuild needs an empty database"
            )
        t = Topics.with_prefix(settings.topic_prefix)
        started = time.perf_counter()
        with progress_bar(progress) as bar:
            projected = [t.decisions, t.status, t.risk, t.enterprises]
            read = await read_log(settings, [Spec(x, since, until) for x in projected], progress=bar, label="reading")
            ordered = _in_projector_order(read, projected)
            task = bar.add_task("projecting", total=len(ordered))
            for i in range(0, len(ordered), batch_size):
                chunk = ordered[i : i + batch_size]
                write(engine, shape(t, chunk).items)  # what the projector skips is skipped here too
                bar.advance(task, len(chunk))
        rows = _row_counts(engine, tables)
    finally:
        engine.dispose()
    return {
        "database": database_url,
        "records": len(ordered),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _in_projector_order(read: dict[str, list[Record]], topics: list[str]) -> list[Record]:
    """The projector consumes each partition in offset order; across partitions, by arrival (record
    time, then the topics in the order given, then partition)."""
    rank = {name: n for n, name in enumerate(topics)}
    streams = defaultdict(list)
    for records in read.values():
        for r in records:
            streams[(r.topic, r.partition)].append(r)
    return list(
        heapq.merge(
            *(sorted(s, key=lambda r: r.offset) for s in streams.values()),
            key=lambda r: (r.timestamp_ms, rank[r.topic], r.partition),
        )
    )
