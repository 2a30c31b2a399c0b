"""Database access: the engine, idempotent batch upserts of projections, and plain queries.

Works on SQLite (the default file) and PostgreSQL; the upsert is the dialect's own
`INSERT ... ON CONFLICT`, so a batch is one statement per table whatever its size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, and_, case, func, inspect, or_, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, create_engine, select

from ..records import parse_time
from .tables import (
    RECENT_DWELLS,
    Checkpoint,
    DecisionHour,
    Enterprise,
    EnterpriseChange,
    Pass,
    PassCount,
    PassEvent,
    RecentDwell,
    Region,
    RejectionCount,
    Shipment,
)

__all__ = [
    "make_engine",
    "init_db",
    "upgrade",
    "alembic_config",
    "project_decisions",
    "project_statuses",
    "history_row",
    "project_risks",
    "project_enterprises",
    "project_batch",
    "get_pass",
    "get_pass_events",
    "checkpoint_dwell",
    "count_by",
    "checkpoint_board",
    "decisions_per_hour",
    "rejections_by_reason",
    "active_pass_places",
    "find_passes",
    "PRESENT",
    "counted_statuses",
    "counted_places",
    "counted_board",
    "counted_hours",
    "counted_rejections",
    "recent_waits",
    "latest_event_time",
]

# The statuses of a vehicle standing at its last checkpoint: the board's queue.
PRESENT = ("at_checkpoint", "held")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})


MIGRATIONS = Path(__file__).with_name("migrations")
# The revision whose schema `SQLModel.metadata.create_all` made before there were migrations.
BASELINE = "0001"
# pg_advisory_xact_lock key serializing schema upgrades in a database ("gcmi").
MIGRATION_LOCK = 0x67636D69
# pg_advisory_xact_lock key serializing projector batches, for the aggregates they update ("gcag").
AGGREGATES_LOCK = 0x67636167


def alembic_config(url: str | None = None, *, connection: Connection | None = None) -> Config:
    """The Alembic configuration of models/store/migrations (there is no alembic.ini)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the database's migration lock until it commits.

    PostgreSQL: a transaction-scoped advisory lock (DDL is transactional there, so the whole
    upgrade commits at once and the lock goes with the commit). SQLite: `BEGIN IMMEDIATE`, the
    database's write lock, waited for up to the busy timeout (30 s from make_engine); the upgrade
    is one transaction there too.
    """
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            # Autocommit on the driver, so that our BEGIN is the only transaction control.
            connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                dbapi = connection.connection.dbapi_connection
                if dbapi is not None and dbapi.in_transaction:  # some errors end it already
                    connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")
        return
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        yield connection


def init_db(engine: Engine) -> None:
    """Bring the schema up to date (`alembic upgrade head`); safe to run from several processes at once.

    The first process to take the migration lock upgrades; the others wait for it, then find the
    schema at head and do nothing. A database made by create_all before migrations existed (tables,
    no alembic_version) is stamped as the baseline revision first.
    """
    with _migration_lock(engine) as connection:
        config = alembic_config(connection=connection)
        if (
            MigrationContext.configure(connection).get_current_revision() is None
            # sqlmodel types __tablename__ str | Callable (a declared_attr); on a table class it is the str.
            and inspect(connection).has_table(Shipment.__tablename__)  # type: ignore[arg-type]
        ):
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")


def upgrade(url: str) -> None:
    """`alembic upgrade head` on the database at `url` (what `greenchannel db upgrade` runs)."""
    engine = make_engine(url)
    try:
        init_db(engine)
    finally:
        engine.dispose()


def _upsert(
    session: Session,
    table,
    rows: Sequence[dict],
    *,
    keys: list[str],
    update: Sequence[str] | None,
    keep: Sequence[str] = (),
    only_if=None,
) -> None:
    """Insert rows; on a key conflict overwrite `update` columns and fill `keep` columns only if empty.

    One statement, executed once per row by the driver (executemany: sqlite3's, psycopg's pipeline),
    on the Core table: no ORM unit of work, no bind-parameter limit whatever the batch size (a
    multi-row VALUES would need 11 parameters per pass, and PostgreSQL allows 65,535 per statement).
    Every row must have the same keys. `only_if(excluded, columns)`, when given, is the condition
    under which a conflict updates."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table.__table__)
    if update or keep:
        columns = table.__table__.c
        set_: dict[str, Any] = {c: stmt.excluded[c] for c in update or ()}
        set_.update({c: func.coalesce(columns[c], stmt.excluded[c]) for c in keep})
        where = only_if(stmt.excluded, columns) if only_if is not None else None
        stmt = stmt.on_conflict_do_update(index_elements=keys, set_=set_, where=where)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    session.connection().execute(stmt, list(rows))


def _last_per_key(rows: Iterable[dict], key: str) -> list[dict]:
    """One row per key, the latest: a batch may hold several updates of the same row."""
    return list({row[key]: row for row in rows}.values())


def _shipment_row(d: dict) -> dict:
    the_pass = d.get("pass")
    return {
        "shipment_id": d["shipment_id"],
        "decision": d["decision"],
        "priority": d.get("priority"),
        "rules_version": d["rules_version"],
        "decided_at": parse_time(d["decided_at"]),
        "pass_id": the_pass["pass_id"] if the_pass else None,
        "reasons": d["reasons"],
    }


def _pass_row(shipment_id: str, the_pass: dict) -> dict:
    return {
        "pass_id": the_pass["pass_id"],
        "shipment_id": shipment_id,
        "plate": the_pass["plate"],
        "priority": the_pass["priority"],
        "issuer": the_pass["issuer"],
        "valid_from": parse_time(the_pass["valid_from"]),
        "valid_until": parse_time(the_pass["valid_until"]),
        "trip": the_pass["trip"],
        "toll_exempt": the_pass["toll_exempt"],
        "route": the_pass["route"],
        "token": the_pass["token"],
    }


def _route_checkpoint_rows(the_pass: dict) -> list[dict]:
    return [
        {k: c[k] for k in ("checkpoint_id", "name", "adcode", "lat", "lon")} for c in the_pass["route"]["checkpoints"]
    ]


def _first_entry_per_checkpoint(checkpoints: Iterable[dict]) -> list[dict]:
    """A border checkpoint has one id for both directions but a route entry (name, adcode) per
    direction: keep the entry that sorts first, so the row does not depend on the order in
    which decisions are projected (the live projector's batches, a rebuild from the log)."""
    first: dict[str, dict] = {}
    for c in checkpoints:
        seen = first.get(c["checkpoint_id"])
        if seen is None or (c["adcode"], c["name"]) < (seen["adcode"], seen["name"]):
            first[c["checkpoint_id"]] = c
    return list(first.values())


def project_decisions(session: Session, decisions: Iterable[dict]) -> None:
    shipments: list[dict] = []
    passes: list[dict] = []
    checkpoints: list[dict] = []
    for d in decisions:
        shipments.append(_shipment_row(d))
        if the_pass := d.get("pass"):
            passes.append(_pass_row(d["shipment_id"], the_pass))
            checkpoints.extend(_route_checkpoint_rows(the_pass))
    _upsert(
        session,
        Shipment,
        _last_per_key(shipments, "shipment_id"),
        keys=["shipment_id"],
        update=["decision", "priority", "rules_version", "decided_at", "pass_id", "reasons"],
    )
    # The status columns belong to the status stream, which may have been projected first;
    # so does a rerouted route and its token, which the decision's must not overwrite.
    _upsert(
        session,
        Pass,
        _last_per_key(passes, "pass_id"),
        keys=["pass_id"],
        update=["shipment_id", "plate", "priority", "issuer", "valid_from", "valid_until", "trip", "toll_exempt"],
        keep=["route", "token"],
    )
    _upsert(
        session,
        Checkpoint,
        _first_entry_per_checkpoint(checkpoints),
        keys=["checkpoint_id"],
        update=["name", "adcode", "lat", "lon"],
        only_if=lambda new, old: or_(new.adcode < old.adcode, and_(new.adcode == old.adcode, new.name < old.name)),
    )


def history_row(event_id: str, e: dict) -> dict:
    """The `pass_event` row of a PassStatus event `e` whose CloudEvents id is `event_id`."""
    return {
        "event_id": event_id,
        "pass_id": e["pass_id"],
        "status": e["status"],
        "at": parse_time(e["at"]),
        "checkpoint_id": e.get("checkpoint_id"),
        "reason": e.get("reason"),
        "dwell_seconds": e.get("dwell_seconds"),
        "dwell_exceeded": bool(e.get("dwell_exceeded")),
    }


def project_statuses(session: Session, events: Iterable[tuple[str, dict]]) -> None:
    """`events` are (event id, PassStatus); the history keeps each event once."""
    history, current = [], []
    for event_id, e in events:
        history.append(history_row(event_id, e))
        at = history[-1]["at"]
        row = {"pass_id": e["pass_id"], "status": e["status"], "status_at": at, "checkpoint_id": e.get("checkpoint_id")}
        if e.get("route"):
            row["route"], row["token"] = e["route"], e["token"]
        current.append(row)
    _upsert(session, PassEvent, history, keys=["event_id"], update=None)
    rerouted = _last_per_key((r for r in current if "route" in r), "pass_id")
    plain = _last_per_key(
        ({k: r[k] for k in ("pass_id", "status", "status_at", "checkpoint_id")} for r in current), "pass_id"
    )
    _upsert(session, Pass, plain, keys=["pass_id"], update=["status", "status_at", "checkpoint_id"])
    _upsert(
        session,
        Pass,
        [{"pass_id": r["pass_id"], "route": r["route"], "token": r["token"]} for r in rerouted],
        keys=["pass_id"],
        update=["route", "token"],
    )


def project_batch(
    session: Session,
    *,
    decisions: Iterable[dict] = (),
    statuses: Iterable[tuple[str, dict]] = (),
    risks: Iterable[dict] = (),
    enterprises: Iterable[dict] = (),
) -> None:
    """One projector batch in one transaction: decisions before the statuses that follow them.

    On PostgreSQL the batches of several projectors take turns (a transaction-scoped advisory
    lock): each updates the same few rows of the dashboard's aggregates (migration 0002's
    triggers), which would make them wait for each other row by row anyway, and deadlock when two
    batches reach two counters in opposite orders."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection().execute(text(f"SELECT pg_advisory_xact_lock({AGGREGATES_LOCK})"))
    project_decisions(session, decisions)
    project_statuses(session, statuses)
    project_risks(session, risks)
    project_enterprises(session, enterprises)
    session.commit()


def project_risks(session: Session, risks: Iterable[dict]) -> None:
    rows = [{"adcode": r["adcode"], "level": r["level"], "effective_at": parse_time(r["effective_at"])} for r in risks]
    _upsert(session, Region, _last_per_key(rows, "adcode"), keys=["adcode"], update=["level", "effective_at"])


def project_enterprises(session: Session, entries: Iterable[dict]) -> None:
    entries = list(entries)
    rows = [
        {
            "credit_code": e["credit_code"],
            "name": e.get("name", ""),
            "listed": e["action"] == "add",
            "effective_at": parse_time(e["effective_at"]),
        }
        for e in entries
    ]
    _upsert(
        session,
        Enterprise,
        _last_per_key(rows, "credit_code"),
        keys=["credit_code"],
        update=["name", "listed", "effective_at"],
    )
    # The list's history (the day's report): one row per entry taking effect, whatever came after it.
    history = [
        {
            "credit_code": r["credit_code"],
            "effective_at": r["effective_at"],
            "action": e["action"],
            "name": r["name"] or "",
        }
        for r, e in zip(rows, entries, strict=True)
    ]
    _upsert(
        session,
        EnterpriseChange,
        list({(h["credit_code"], h["effective_at"], h["action"]): h for h in history}.values()),
        keys=["credit_code", "effective_at", "action"],
        update=["name"],
    )


def get_pass(session: Session, *, pass_id: str) -> Pass | None:
    return session.get(Pass, pass_id)


def get_pass_events(session: Session, *, pass_id: str) -> list[PassEvent]:
    return list(
        session.exec(
            select(PassEvent).where(PassEvent.pass_id == pass_id).order_by(col(PassEvent.at), col(PassEvent.id))
        )
    )


def checkpoint_dwell(session: Session) -> list[tuple[str | None, int, float, int]]:
    """(checkpoint, departures with a dwell, mean dwell seconds, dwells over target) per checkpoint."""
    # PostgreSQL casts a boolean to integer or text only; a CASE counts on every database.
    over = func.sum(case((col(PassEvent.dwell_exceeded), 1), else_=0))
    q = (
        select(PassEvent.checkpoint_id, func.count(), func.avg(PassEvent.dwell_seconds), over)
        .where(col(PassEvent.dwell_seconds).is_not(None))
        .group_by(PassEvent.checkpoint_id)
        .order_by(PassEvent.checkpoint_id)
    )
    return [(c, n, float(avg), int(o or 0)) for c, n, avg, o in session.exec(q)]


def count_by(session: Session, column) -> dict:
    return {k: n for k, n in session.exec(select(column, func.count()).group_by(column))}


# --- the operators' dashboard (streams.dashboard) ------------------------------------------------------


def checkpoint_board(session: Session, *, window: int = RECENT_DWELLS, target_seconds: float = 900) -> list[dict]:
    """Each checkpoint with the vehicles there now and the median dwell of its last `window`
    departures, flagged over `target_seconds` (the rule of `models.tracking.board_row`)."""
    present: dict[str, int] = dict(
        session.execute(
            select(Pass.checkpoint_id, func.count())
            .where(col(Pass.status).in_(PRESENT), col(Pass.checkpoint_id).is_not(None))
            .group_by(Pass.checkpoint_id)
        ).all()
    )
    recent = (
        select(
            PassEvent.checkpoint_id,
            PassEvent.dwell_seconds,
            func.row_number()
            .over(partition_by=PassEvent.checkpoint_id, order_by=(col(PassEvent.at).desc(), col(PassEvent.id).desc()))
            .label("n"),
        )
        .where(col(PassEvent.dwell_seconds).is_not(None))
        .subquery()
    )
    dwells: dict[str, list[float]] = {}
    for checkpoint, dwell in session.execute(
        select(recent.c.checkpoint_id, recent.c.dwell_seconds).where(recent.c.n <= window)
    ):
        dwells.setdefault(checkpoint, []).append(dwell)
    return _board(session, present, dwells, target_seconds)


def _board(session: Session, present: dict[str, int], dwells: dict[str, list[float]], target: float) -> list[dict]:
    from ..tracking import board_row

    names = dict(session.execute(select(Checkpoint.checkpoint_id, Checkpoint.name)).all())
    return [
        {**board_row(c, present.get(c, 0), dwells.get(c, ()), target), "name": names.get(c, "")}
        for c in sorted(set(present) | set(dwells))
    ]


def _hour(session: Session, column):
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.date_trunc("hour", func.timezone("UTC", column)), 'YYYY-MM-DD"T"HH24:00"Z"')
    return func.strftime("%Y-%m-%dT%H:00Z", column)


def decisions_per_hour(session: Session) -> list[tuple[str, str, str, int]]:
    """(hour, decision, class or '', count), by hour of the decision time (UTC)."""
    hour = _hour(session, Shipment.decided_at).label("hour")
    q = (
        select(hour, Shipment.decision, Shipment.priority, func.count())
        .group_by(hour, Shipment.decision, col(Shipment.priority))
        .order_by(hour)
    )
    return [(h, d, p or "", n) for h, d, p, n in session.exec(q)]


def rejections_by_reason(session: Session) -> dict[str, int]:
    """How many rejected requests name each reason code (a request counts once per code)."""
    counts: dict[str, int] = {}
    for reasons in session.exec(select(Shipment.reasons).where(Shipment.decision == "rejected")):
        for code in {r.get("code") for r in reasons or ()}:
            counts[code] = counts.get(code, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def active_pass_places(session: Session, active: Iterable[str]) -> list[tuple[str | None, str | None, int]]:
    """(last checkpoint, issuing county, passes) of the active passes: where they are on the map."""
    q = (
        select(Pass.checkpoint_id, Pass.issuer, func.count())
        .where(col(Pass.status).in_(tuple(active)))
        .group_by(col(Pass.checkpoint_id), col(Pass.issuer))
    )
    return [(c, i, n) for c, i, n in session.exec(q)]


def find_passes(session: Session, text: str, *, limit: int = 10) -> list[Pass]:
    """Passes whose pass id, shipment id or plate is `text` (plates without '·' or spaces)."""
    plate = text.replace("·", "").replace(" ", "").upper()
    q = (
        select(Pass)
        .where(or_(col(Pass.pass_id) == text, col(Pass.shipment_id) == text, col(Pass.plate) == plate))
        .order_by(col(Pass.valid_from).desc())
        .limit(limit)
    )
    return list(session.exec(q))


# --- the same figures from the aggregates the triggers keep (migration 0002) ----------------------------
# Each reads a table whose size follows the reference data (statuses, checkpoints, counties, reason
# codes) or the clock (hours), never the number of passes; tests/unit/test_aggregates.py holds each
# equal to its GROUP BY above. '' in a key is a NULL of the counted rows.


def counted_statuses(session: Session) -> dict[str | None, int]:
    """`count_by(session, Pass.status)`."""
    q = select(PassCount.status, func.sum(PassCount.n)).group_by(PassCount.status)
    return {status or None: int(n) for status, n in session.exec(q) if n}


def counted_places(session: Session, active: Iterable[str]) -> list[tuple[str | None, str | None, int]]:
    """`active_pass_places(session, active)`."""
    q = select(PassCount.checkpoint_id, PassCount.issuer, func.sum(PassCount.n)).where(
        col(PassCount.status).in_(tuple(active))
    )
    q = q.group_by(PassCount.checkpoint_id, PassCount.issuer)
    return [(c or None, i or None, int(n)) for c, i, n in session.exec(q) if n]


def counted_board(session: Session, *, target_seconds: float = 900) -> list[dict]:
    """`checkpoint_board(session, window=RECENT_DWELLS, target_seconds=...)`."""
    present: dict[str, int] = {
        c: int(n)
        for c, n in session.execute(
            select(PassCount.checkpoint_id, func.sum(PassCount.n))
            .where(col(PassCount.status).in_(PRESENT), PassCount.checkpoint_id != "")
            .group_by(PassCount.checkpoint_id)
        )
        if n
    }
    dwells: dict[str, list[float]] = {}
    for checkpoint, dwell in session.execute(select(RecentDwell.checkpoint_id, RecentDwell.dwell_seconds)):
        dwells.setdefault(checkpoint, []).append(dwell)
    return _board(session, present, dwells, target_seconds)


def counted_hours(session: Session) -> list[tuple[str, str, str, int]]:
    """`decisions_per_hour(session)`, in the order of hour, decision and class."""
    q = select(DecisionHour.hour, DecisionHour.decision, DecisionHour.priority, DecisionHour.n).order_by(
        col(DecisionHour.hour), col(DecisionHour.decision), col(DecisionHour.priority)
    )
    return [(h, d, p, n) for h, d, p, n in session.exec(q) if n]


def counted_rejections(session: Session) -> dict[str, int]:
    """`rejections_by_reason(session)`, the most named first (ties by code)."""
    q = select(RejectionCount.code, RejectionCount.n).order_by(col(RejectionCount.n).desc(), col(RejectionCount.code))
    return {code: n for code, n in session.exec(q) if n}


def recent_waits(session: Session, checkpoint_ids: Iterable[str]) -> dict[str, dict]:
    """The board's row (`counted_board`'s median of the last RECENT_DWELLS departures) of each of
    these checkpoints: what a driver's page shows as the wait ahead. No row: no departure yet."""
    from ..tracking import board_row

    wanted = sorted(set(checkpoint_ids))
    dwells: dict[str, list[float]] = {}
    if wanted:
        q = select(RecentDwell.checkpoint_id, RecentDwell.dwell_seconds).where(
            col(RecentDwell.checkpoint_id).in_(wanted)
        )
        for checkpoint, dwell in session.execute(q):
            dwells.setdefault(checkpoint, []).append(dwell)
    return {c: board_row(c, 0, d, 900) for c, d in dwells.items()}


def latest_event_time(session: Session):
    """The time of the last status event projected (by row id: O(1)), or None: the channel's clock
    as the database knows it, for a page shown on a day the worker has no wall clock (the demo's)."""
    return session.exec(select(PassEvent.at).order_by(col(PassEvent.id).desc()).limit(1)).first()
