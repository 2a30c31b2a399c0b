"""The day's facts (`models.daily.DayFacts`) from the database, or from the log.

Both read the same rows: the log's records go through the projector's own batch shape
(`streams.projector.shape`, what a rebuild from the log projects) and the projector's own row
functions, and are kept once per key as the database keeps them (a shipment's last decision, a
status event's first record per CloudEvents id, a list entry's last record per credit code, time
and action). So a figure that differs between the two is a fact the database lost or changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from models.daily import Day, DayFacts, Issued, ListChange, Rejected, StatusChange, as_utc, destination_of
from models.records import parse_time

__all__ = ["database_facts", "log_facts", "read_log_facts", "rejection_codes"]


def rejection_codes(reasons: Iterable[dict] | None) -> frozenset[str]:
    """The reason codes of a rejection, once each (as `models.store.db.rejections_by_reason` counts)."""
    return frozenset(str(r.get("code") or "") for r in reasons or ())


def _issued(pass_id: str, priority: str | None, issuer: str | None, route: dict | None, at: datetime) -> Issued:
    return Issued(pass_id, priority or "", issuer or pass_id[:6], destination_of(route), as_utc(at))


def _status(row: dict) -> StatusChange:
    """A `pass_event` row (`models.store.db.history_row`) as a fact."""
    return StatusChange(
        event_id=row["event_id"],
        pass_id=row["pass_id"],
        status=row["status"],
        reason=row["reason"],
        checkpoint_id=row["checkpoint_id"],
        dwell_seconds=row["dwell_seconds"],
        dwell_exceeded=bool(row["dwell_exceeded"]),
        at=as_utc(row["at"]),
    )


# --- the database ------------------------------------------------------------------------------------


def database_facts(session, day: Day) -> DayFacts:
    """The day's decisions, status events and list entries as the projector wrote them."""
    from sqlmodel import col, select

    from models.store.tables import EnterpriseChange, Pass, PassEvent, Shipment

    start, end = day.start, day.end
    in_day = (col(Shipment.decided_at) >= start, col(Shipment.decided_at) < end)
    issued = session.exec(
        select(Pass.pass_id, Pass.priority, Pass.issuer, Pass.route, Shipment.decided_at)
        .join(Pass, col(Pass.pass_id) == col(Shipment.pass_id))
        .where(Shipment.decision == "approved", *in_day)
    )
    rejected = session.exec(
        select(Shipment.shipment_id, Shipment.reasons, Shipment.decided_at).where(
            Shipment.decision == "rejected", *in_day
        )
    )
    # Columns, not ORM objects: a day holds tens of thousands of events.
    history = (PassEvent.event_id, PassEvent.pass_id, PassEvent.status, PassEvent.reason, PassEvent.checkpoint_id)
    events = session.exec(
        select(*history, PassEvent.dwell_seconds, PassEvent.dwell_exceeded, PassEvent.at).where(
            col(PassEvent.at) >= start, col(PassEvent.at) < end
        )
    )
    changes = session.exec(
        select(EnterpriseChange).where(
            col(EnterpriseChange.effective_at) >= start, col(EnterpriseChange.effective_at) < end
        )
    )
    return DayFacts(
        issued=tuple(_issued(*row) for row in issued),
        rejected=tuple(Rejected(sid, rejection_codes(reasons), as_utc(at)) for sid, reasons, at in rejected),
        statuses=tuple(StatusChange(*e[:-3], e.dwell_seconds, bool(e.dwell_exceeded), as_utc(e.at)) for e in events),
        list_changes=tuple(ListChange(c.credit_code, c.name, c.action, as_utc(c.effective_at)) for c in changes),
    )


# --- the log -----------------------------------------------------------------------------------------


def log_facts(items: Iterable[Any]) -> DayFacts:
    """Facts from the projector's items (`streams.projector.Item`: kind and row) in projector order,
    kept once per key as the database keeps them."""
    from models.store.db import history_row

    decisions: dict[str, dict] = {}
    events: dict[str, dict] = {}
    entries: dict[tuple, dict] = {}
    routes: dict[str, dict] = {}  # a pass's route as its row holds it: the last reroute's, else the decision's
    for item in items:
        if item.kind == "decisions":
            decisions[item.row["shipment_id"]] = item.row  # an upsert: the last decision
        elif item.kind == "statuses":
            event_id, e = item.row
            events.setdefault(event_id, history_row(event_id, e))  # insert or nothing: the first
            if e.get("route"):
                routes[e["pass_id"]] = e["route"]
        elif item.kind == "enterprises":
            e = item.row
            entries[(e["credit_code"], parse_time(e["effective_at"]), e["action"])] = e
    issued, rejected = [], []
    for d in decisions.values():
        at = parse_time(d["decided_at"])
        if d["decision"] == "approved" and (p := d.get("pass")):
            issued.append(_issued(p["pass_id"], p["priority"], p["issuer"], routes.get(p["pass_id"], p["route"]), at))
        elif d["decision"] == "rejected":
            rejected.append(Rejected(d["shipment_id"], rejection_codes(d["reasons"]), at))
    return DayFacts(
        issued=tuple(issued),
        rejected=tuple(rejected),
        statuses=tuple(_status(row) for row in events.values()),
        list_changes=tuple(
            ListChange(code, e.get("name") or "", action, at) for (code, at, action), e in entries.items()
        ),
    )


async def read_log_facts(settings) -> tuple[DayFacts, int]:
    """The facts of the whole log (decisions, statuses, the key-enterprise list), and how many records
    were read: what `greenchannel replay --rebuild` would project, in its order."""
    from ..audit.reader import Spec, read_log
    from ..audit.rebuild import _in_projector_order
    from ..handlers import Topics
    from ..projector import shape

    t = Topics.with_prefix(settings.topic_prefix)
    topics = [t.decisions, t.status, t.enterprises]
    read = await read_log(settings, [Spec(x) for x in topics])
    ordered = _in_projector_order(read, topics)
    return log_facts(shape(t, ordered).items), len(ordered)
