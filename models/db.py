"""Database access: the engine, idempotent batch upserts of projections, and plain queries.

Works on SQLite (the default file) and PostgreSQL; the upsert is the dialect's own
`INSERT ... ON CONFLICT`, so a batch is one statement per table whatever its size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import Engine, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel, create_engine, select

from .records import parse_time
from .tables import Checkpoint, Enterprise, Pass, PassEvent, Region, Shipment

__all__ = ["make_engine", "init_db", "project_decisions", "project_statuses", "project_risks",
           "project_enterprises", "get_pass", "get_pass_events", "checkpoint_dwell", "count_by"]


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})


def init_db(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine)


def _upsert(session: Session, table, rows: Sequence[dict], *, keys: list[str], update: list[str] | None,
            keep: list[str] = ()) -> None:
    """Insert rows; on a key conflict overwrite `update` columns and fill `keep` columns only if empty."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values(list(rows))
    if update or keep:
        columns = table.__table__.c
        set_ = {c: stmt.excluded[c] for c in update or ()}
        set_.update({c: func.coalesce(columns[c], stmt.excluded[c]) for c in keep})
        stmt = stmt.on_conflict_do_update(index_elements=keys, set_=set_)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    session.exec(stmt)


def _last_per_key(rows: Iterable[dict], key: str) -> list[dict]:
    """One row per key, the latest: a batch may hold several updates of the same row."""
    return list({row[key]: row for row in rows}.values())


def project_decisions(session: Session, decisions: Iterable[dict]) -> None:
    shipments, passes, checkpoints = [], [], []
    for d in decisions:
        the_pass = d.get("pass")
        shipments.append({
            "shipment_id": d["shipment_id"], "decision": d["decision"], "priority": d.get("priority"),
            "rules_version": d["rules_version"], "decided_at": parse_time(d["decided_at"]),
            "pass_id": the_pass["pass_id"] if the_pass else None, "reasons": d["reasons"]})
        if the_pass:
            passes.append({
                "pass_id": the_pass["pass_id"], "shipment_id": d["shipment_id"], "plate": the_pass["plate"],
                "priority": the_pass["priority"], "issuer": the_pass["issuer"],
                "valid_from": parse_time(the_pass["valid_from"]), "valid_until": parse_time(the_pass["valid_until"]),
                "trip": the_pass["trip"], "toll_exempt": the_pass["toll_exempt"], "route": the_pass["route"],
                "token": the_pass["token"]})
            checkpoints.extend({k: c[k] for k in ("checkpoint_id", "name", "adcode", "lat", "lon")}
                               for c in the_pass["route"]["checkpoints"])
    _upsert(session, Shipment, _last_per_key(shipments, "shipment_id"), keys=["shipment_id"],
            update=["decision", "priority", "rules_version", "decided_at", "pass_id", "reasons"])
    # The status columns belong to the status stream, which may have been projected first;
    # so does a rerouted route and its token, which the decision's must not overwrite.
    _upsert(session, Pass, _last_per_key(passes, "pass_id"), keys=["pass_id"],
            update=["shipment_id", "plate", "priority", "issuer", "valid_from", "valid_until", "trip",
                    "toll_exempt"], keep=["route", "token"])
    _upsert(session, Checkpoint, _last_per_key(checkpoints, "checkpoint_id"), keys=["checkpoint_id"], update=None)


def project_statuses(session: Session, events: Iterable[tuple[str, dict]]) -> None:
    """`events` are (event id, PassStatus); the history keeps each event once."""
    history, current = [], []
    for event_id, e in events:
        at = parse_time(e["at"])
        history.append({"event_id": event_id, "pass_id": e["pass_id"], "status": e["status"], "at": at,
                        "checkpoint_id": e.get("checkpoint_id"), "reason": e.get("reason"),
                        "dwell_seconds": e.get("dwell_seconds"), "dwell_exceeded": bool(e.get("dwell_exceeded"))})
        row = {"pass_id": e["pass_id"], "status": e["status"], "status_at": at,
               "checkpoint_id": e.get("checkpoint_id")}
        if e.get("route"):
            row["route"], row["token"] = e["route"], e["token"]
        current.append(row)
    _upsert(session, PassEvent, history, keys=["event_id"], update=None)
    rerouted = _last_per_key((r for r in current if "route" in r), "pass_id")
    plain = _last_per_key(({k: r[k] for k in ("pass_id", "status", "status_at", "checkpoint_id")} for r in current),
                          "pass_id")
    _upsert(session, Pass, plain, keys=["pass_id"], update=["status", "status_at", "checkpoint_id"])
    _upsert(session, Pass, [{"pass_id": r["pass_id"], "route": r["route"], "token": r["token"]} for r in rerouted],
            keys=["pass_id"], update=["route", "token"])


def project_risks(session: Session, risks: Iterable[dict]) -> None:
    rows = [{"adcode": r["adcode"], "level": r["level"], "effective_at": parse_time(r["effective_at"])}
            for r in risks]
    _upsert(session, Region, _last_per_key(rows, "adcode"), keys=["adcode"], update=["level", "effective_at"])


def project_enterprises(session: Session, entries: Iterable[dict]) -> None:
    rows = [{"credit_code": e["credit_code"], "name": e.get("name", ""), "listed": e["action"] == "add",
             "effective_at": parse_time(e["effective_at"])} for e in entries]
    _upsert(session, Enterprise, _last_per_key(rows, "credit_code"), keys=["credit_code"],
            update=["name", "listed", "effective_at"])


def get_pass(session: Session, *, pass_id: str) -> Pass | None:
    return session.get(Pass, pass_id)


def get_pass_events(session: Session, *, pass_id: str) -> list[PassEvent]:
    return list(session.exec(select(PassEvent).where(PassEvent.pass_id == pass_id).order_by(PassEvent.at, PassEvent.id)))


def checkpoint_dwell(session: Session) -> list[tuple[str, int, float, int]]:
    """(checkpoint, departures with a dwell, mean dwell seconds, dwells over target) per checkpoint."""
    over = func.sum(func.cast(PassEvent.dwell_exceeded, type_=PassEvent.__table__.c.dwell_seconds.type))
    q = (select(PassEvent.checkpoint_id, func.count(), func.avg(PassEvent.dwell_seconds), over)
         .where(PassEvent.dwell_seconds.is_not(None)).group_by(PassEvent.checkpoint_id)
         .order_by(PassEvent.checkpoint_id))
    return [(c, n, float(avg), int(o or 0)) for c, n, avg, o in session.exec(q)]


def count_by(session: Session, column) -> dict:
    return {k: n for k, n in session.exec(select(column, func.count()).group_by(column))}
