"""The public crossing times' reads: the counts of migration 0004 (`crossing_slot`) and the checkpoints.

Each read is a range of the table's primary key (slot first), so its cost follows the checkpoints and
the window read, never the number of passes (README "For the public" has the measurement).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func
from sqlalchemy import select as columns
from sqlmodel import Session, col, select

from ..crossings import Count, Window, figures, trend, windows
from .tables import Checkpoint, CrossingSlot

__all__ = ["latest_crossing", "counts_between", "crossing_figures"]


def latest_crossing(session: Session) -> datetime | None:
    """The time of the latest crossing counted: the channel's clock (its last slot's latest time)."""
    last_slot = session.exec(select(func.max(CrossingSlot.slot))).one()
    if last_slot is None:
        return None
    at = session.exec(select(func.max(CrossingSlot.last_at)).where(CrossingSlot.slot == last_slot)).one()
    return None if at is None else (at if at.tzinfo else at.replace(tzinfo=UTC))


def counts_between(session: Session, first: str, last: str) -> list[Count]:
    """The counts of the slots [first, last] (keys of models.crossings.slot_key)."""
    q = columns(
        *(col(c) for c in (CrossingSlot.checkpoint_id, CrossingSlot.slot)),
        *(col(c) for c in (CrossingSlot.minute, CrossingSlot.n, CrossingSlot.over_target)),
    ).where(col(CrossingSlot.slot) >= first, col(CrossingSlot.slot) <= last, col(CrossingSlot.n) > 0)
    return [Count(*row) for row in session.execute(q)]


def crossing_figures(session: Session, as_of: datetime, *, min_crossings: int | None = None) -> dict:
    """Every checkpoint's figures for the windows ending at `as_of` (models.crossings.windows), with
    the windows' bounds: {"windows": {name: Window}, "checkpoints": [row, …]} (by checkpoint id)."""
    spans = windows(as_of)
    kw = {} if min_crossings is None else {"min_crossings": min_crossings}
    by_window: dict[str, dict[str, list[Count]]] = {name: {} for name in spans}
    for first, last, names in _reads(spans):
        for c in counts_between(session, first, last):
            for name in names:
                if spans[name].holds(c.slot):
                    by_window[name].setdefault(c.checkpoint_id, []).append(c)
    rows = []
    for cp in session.exec(select(Checkpoint).order_by(col(Checkpoint.checkpoint_id))):
        row = {name: figures(by_window[name].get(cp.checkpoint_id, ()), w.hours, **kw) for name, w in spans.items()}
        rows.append({"checkpoint": cp, **row, "trend": trend(row["last_day"], row["yesterday"])})
    return {"windows": spans, "checkpoints": rows}


def _reads(spans: dict[str, Window]) -> list[tuple[str, str, tuple[str, ...]]]:
    """Two range reads: the last two days (last hour, last day, yesterday) and the week-ago day."""
    recent = ("last_hour", "last_day", "yesterday")
    return [
        (spans["yesterday"].first, spans["last_day"].last, recent),
        (spans["week_ago"].first, spans["week_ago"].last, ("week_ago",)),
    ]
