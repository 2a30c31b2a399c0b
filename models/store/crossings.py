"""The public crossing times' reads: the counts of migration 0005 (`crossing_slot`) and the checkpoints.

Each read is a range of the table's primary key (slot first), so its cost follows the checkpoints and
the window read, never the number of passes (README "For the public" has the measurement).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func
from sqlalchemy import select as columns
from sqlmodel import Session, col, select

from ..crossings import Count, figures, trend, windows
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
    """The counts of the slots [first, last] (keys of models.crossings.slot_key), summed by the
    database per checkpoint and minute of dwell (their `slot` is `first`): one range of the primary
    key read, the rows returned at most checkpoints × minutes."""
    n, over = func.sum(CrossingSlot.n), func.sum(CrossingSlot.over_target)
    q = (
        columns(col(CrossingSlot.checkpoint_id), col(CrossingSlot.minute), n, over)
        .where(col(CrossingSlot.slot) >= first, col(CrossingSlot.slot) <= last)
        .group_by(col(CrossingSlot.checkpoint_id), col(CrossingSlot.minute))
    )
    return [Count(cp, first, minute, int(k), int(o or 0)) for cp, minute, k, o in session.execute(q) if k]


def crossing_figures(session: Session, as_of: datetime, *, min_crossings: int | None = None) -> dict:
    """Every checkpoint's figures for the windows ending at `as_of` (models.crossings.windows), with
    the windows' bounds: {"windows": {name: Window}, "checkpoints": [row, …]} (by checkpoint id)."""
    spans = windows(as_of)
    kw = {} if min_crossings is None else {"min_crossings": min_crossings}
    by_window: dict[str, dict[str, list[Count]]] = {name: {} for name in spans}
    for name, w in spans.items():
        for c in counts_between(session, w.first, w.last):
            by_window[name].setdefault(c.checkpoint_id, []).append(c)
    rows = []
    for cp in session.exec(select(Checkpoint).order_by(col(Checkpoint.checkpoint_id))):
        row = {name: figures(by_window[name].get(cp.checkpoint_id, ()), w.hours, **kw) for name, w in spans.items()}
        rows.append({"checkpoint": cp, **row, "trend": trend(row["last_day"], row["yesterday"])})
    return {"windows": spans, "checkpoints": rows}
