"""Crossing times as open data: the public figures of each checkpoint, from counts only.

A crossing is a departure with a dwell time (arrival to departure at one checkpoint, a `pass_event`
row with `dwell_seconds`). The database keeps them counted, never listed, per checkpoint, 10-minute
slot and whole minute of dwell (migration 0005's `crossing_slot`, kept by triggers); this module turns
those counts into the published figures of a window:

- the median and 90th-percentile dwell, in whole minutes rounded down (the resolution of the counts:
  the true value lies in [m, m + 1) minutes; dwells of a day or more count as 1440);
- vehicles crossing per hour; the share over the dwell target (each crossing as the worker flagged
  it, `dwell_exceeded`, against the catalog's `dwell_target_seconds`);
- withheld (None, with a reason) when fewer than MIN_CROSSINGS vehicles crossed in the window: so
  few could let someone who saw a truck read its stay off the page.

Windows end at "as of", aligned to the slots: the last hour is the slot holding "as of" and the five
before it; the last day its 144; yesterday and a week ago the same 24 hours one and seven days
earlier (the EU's Green Lane tables: today, yesterday, a week ago). The trend compares the last day
with yesterday. Pure functions over plain values; models.store.crossings reads the counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = [
    "SLOT_MINUTES",
    "MIN_CROSSINGS",
    "MAX_DWELL_MINUTE",
    "TREND_MINUTES",
    "Count",
    "Window",
    "dwell_minute",
    "slot_key",
    "slot_start",
    "windows",
    "figures",
    "trend",
    "rank_value",
]

SLOT_MINUTES = 10
# Fewer crossings than this in a window: no figure. Five is the smallest cell most statistical
# offices publish; below it one vehicle's dwell moves the median and p90 where a reader sees it.
MIN_CROSSINGS = 5
MAX_DWELL_MINUTE = 1440  # a dwell of a day or more counts in the last bucket
# A day's median this many minutes or more above (below) yesterday's is a rise (fall): twice the
# resolution, so that one bucket's edge alone cannot make a trend.
TREND_MINUTES = 2
WITHHELD_FEW = "too_few_crossings"
WITHHELD_NONE = "no_crossings"


def dwell_minute(seconds: float) -> int:
    """The histogram bucket of a dwell: its whole minutes, rounded down, within [0, MAX_DWELL_MINUTE]
    (the triggers of migration 0005 compute the same in SQL)."""
    return int(min(max(seconds, 0.0), MAX_DWELL_MINUTE * 60.0) // 60)


def slot_start(at: datetime) -> datetime:
    """The start of the 10-minute slot (UTC) holding `at`."""
    at = at.astimezone(UTC)
    return at.replace(minute=at.minute - at.minute % SLOT_MINUTES, second=0, microsecond=0)


def slot_key(at: datetime) -> str:
    """A slot as the database keys it: 'YYYY-MM-DDTHH:M0Z' (UTC)."""
    return slot_start(at).strftime("%Y-%m-%dT%H:%MZ")


@dataclass(frozen=True, slots=True)
class Window:
    """The time [start, end) a window covers, and its slots' keys, first and last (inclusive)."""

    name: str
    start: datetime
    end: datetime
    first: str = ""
    last: str = ""

    @classmethod
    def of(cls, name: str, start: datetime, end: datetime) -> Window:
        return cls(name, start, end, slot_key(start), slot_key(end - timedelta(minutes=SLOT_MINUTES)))

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    def holds(self, slot: str) -> bool:
        return self.first <= slot <= self.last


def windows(as_of: datetime) -> dict[str, Window]:
    """The published windows ending with the slot that holds `as_of`."""
    end = slot_start(as_of) + timedelta(minutes=SLOT_MINUTES)
    day, hour = timedelta(days=1), timedelta(hours=1)
    return {
        "last_hour": Window.of("last_hour", end - hour, end),
        "last_day": Window.of("last_day", end - day, end),
        "yesterday": Window.of("yesterday", end - 2 * day, end - day),
        "week_ago": Window.of("week_ago", end - 8 * day, end - 7 * day),
    }


@dataclass(frozen=True, slots=True)
class Count:
    """One row of the counts: crossings of a checkpoint in a slot with this whole minute of dwell."""

    checkpoint_id: str
    slot: str
    minute: int
    n: int
    over_target: int


def rank_value(histogram: Mapping[int, int], rank: int) -> int:
    """The bucket of the `rank`-th smallest value (1-based) of a histogram {bucket: count}."""
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket
    raise ValueError(f"rank {rank} beyond the histogram's {seen} values")


def figures(counts: Iterable[Count], hours: float, *, min_crossings: int = MIN_CROSSINGS) -> dict:
    """A window's figures from the counts in it (of one checkpoint). The median is the upper one of
    an even count (as the operators' board, models.tracking.board_row); the 90th percentile by
    nearest rank (the ⌈0.9 n⌉-th smallest)."""
    histogram: dict[int, int] = {}
    n = over = 0
    for c in counts:
        histogram[c.minute] = histogram.get(c.minute, 0) + c.n
        n, over = n + c.n, over + c.over_target
    if n >= min_crossings:
        return {
            "crossings": n,
            "vehicles_per_hour": round(n / hours, 1),
            "median_dwell_minutes": rank_value(histogram, n // 2 + 1),
            "p90_dwell_minutes": rank_value(histogram, math.ceil(0.9 * n)),
            "share_over_target": round(over / n, 3),
            "withheld": None,
        }
    empty = {"median_dwell_minutes": None, "p90_dwell_minutes": None, "share_over_target": None}
    if n == 0:
        return {"crossings": 0, "vehicles_per_hour": 0.0, **empty, "withheld": WITHHELD_NONE}
    return {"crossings": None, "vehicles_per_hour": None, **empty, "withheld": WITHHELD_FEW}


def trend(day: dict, yesterday: dict) -> str | None:
    """'up', 'down' or 'steady': the last day's median dwell against yesterday's; None when either
    is withheld."""
    now, before = day["median_dwell_minutes"], yesterday["median_dwell_minutes"]
    if now is None or before is None:
        return None
    if now - before >= TREND_MINUTES:
        return "up"
    if before - now >= TREND_MINUTES:
        return "down"
    return "steady"
