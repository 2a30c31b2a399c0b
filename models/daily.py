"""The day's report for the authorities (`greenchannel report`): its figures, as one pure function of the day's facts.

The facts (`DayFacts`) come from two sources, the database the projector wrote and the log the
audit reads (streams/daily/sources.py), and `day_figures` turns either into the same `DayFigures`:
one formula, so `greenchannel report --verify` proves the database's figures by computing them again
from the log and comparing (`differences`).

The day is a calendar day of China Standard Time (UTC+8, the authorities' day) unless asked for in
UTC. What falls in it: a decision by its `decided_at`, a status event by its `at`, a key-enterprise
list entry by its `effective_at`.

A province (`--province`, 2 digits) restricts every figure, each by the place that owns it:
- passes, reroutes, suspensions and revocations: the issuing county's province (the pass number's
  first 6 digits are the issuer's adcode);
- the corridors: passes with either end (origin county, destination county) in the province;
- dwell: the checkpoints in the province, by their id (BX-aaaa-bbbb is a crossing between two
  prefectures and counts in both of their provinces; DST-cccccc is a destination county);
- the key-enterprise list: the registering authority's division in the credit code (characters 3-8,
  GB 32100-2015);
- rejections: a rejection names no county (no pass, and the decision does not carry the request's
  places), so they are the whole channel's, and the report says so (`rejections_nationwide`).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo

__all__ = [
    "CHINA_STANDARD_TIME",
    "CLASSES",
    "INTERVENTIONS",
    "Day",
    "Issued",
    "Rejected",
    "StatusChange",
    "ListChange",
    "DayFacts",
    "IssuedRow",
    "RejectionRow",
    "InterventionRow",
    "DwellRow",
    "CorridorRow",
    "DayFigures",
    "day_figures",
    "differences",
    "checkpoint_provinces",
    "destination_of",
    "nearest_rank",
]

CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")
CLASSES = ("P0", "P1", "P2", "P3")
# The status changes the report counts by cause: what an operator's or the tracker's decision did to a pass.
INTERVENTIONS = ("rerouted", "suspended", "revoked")
# A token reissued after its key's withdrawal repeats the pass's status (rerouted, say): not a change.
NOT_A_CHANGE = "token_reissued"
TOP_CORRIDORS = 10


@dataclass(frozen=True, slots=True)
class Day:
    """A calendar day in a time zone: the half-open interval [start, end)."""

    date: date
    tz: tzinfo = CHINA_STANDARD_TIME

    @property
    def start(self) -> datetime:
        return datetime.combine(self.date, time(0), self.tz).astimezone(UTC)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.date + timedelta(days=1), time(0), self.tz).astimezone(UTC)

    @property
    def zone(self) -> str:
        return "UTC+08:00 (China Standard Time)" if self.tz is CHINA_STANDARD_TIME else "UTC"

    def holds(self, at: datetime | None) -> bool:
        return at is not None and self.start <= as_utc(at) < self.end


def as_utc(at: datetime) -> datetime:
    """A time read back from a database column (SQLite gives naive UTC) as an aware UTC time."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


# --- the facts ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Issued:
    """A pass issued: an approved decision with its pass."""

    pass_id: str
    priority: str
    issuer: str  # the issuing county (the request's origin)
    destination: str | None  # the destination county, from the route's DST- checkpoint
    at: datetime  # decided_at


@dataclass(frozen=True, slots=True)
class Rejected:
    shipment_id: str
    codes: frozenset[str]  # a request counts once per code
    at: datetime


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A pass's status event (the history row the projector keeps once per CloudEvents id)."""

    event_id: str
    pass_id: str
    status: str
    reason: str | None
    checkpoint_id: str | None
    dwell_seconds: float | None
    dwell_exceeded: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class ListChange:
    """A key-enterprise list entry taking effect: added or removed."""

    credit_code: str
    name: str
    action: str  # add | remove
    at: datetime  # effective_at


@dataclass(frozen=True)
class DayFacts:
    issued: tuple[Issued, ...] = ()
    rejected: tuple[Rejected, ...] = ()
    statuses: tuple[StatusChange, ...] = ()
    list_changes: tuple[ListChange, ...] = ()


# --- the figures -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedRow:
    province: str  # 2 digits
    by_class: tuple[int, ...]  # P0..P3

    @property
    def total(self) -> int:
        return sum(self.by_class)


@dataclass(frozen=True, slots=True)
class RejectionRow:
    code: str
    requests: int


@dataclass(frozen=True, slots=True)
class InterventionRow:
    status: str  # rerouted | suspended | revoked
    cause: str  # the event's reason code
    events: int
    passes: int


@dataclass(frozen=True, slots=True)
class DwellRow:
    checkpoint_id: str
    departures: int
    median_seconds: float
    p90_seconds: float
    over_target: int

    @property
    def share_over_target(self) -> float:
        return self.over_target / self.departures


@dataclass(frozen=True, slots=True)
class CorridorRow:
    origin: str  # prefecture, 4 digits
    destination: str  # prefecture, 4 digits ('' when the route names none)
    passes: int


@dataclass(frozen=True)
class DayFigures:
    day: Day
    province: str | None
    issued: tuple[IssuedRow, ...] = ()
    rejections: tuple[RejectionRow, ...] = ()
    rejected_requests: int = 0
    interventions: tuple[InterventionRow, ...] = ()
    dwell: tuple[DwellRow, ...] = ()
    corridors: tuple[CorridorRow, ...] = ()
    list_changes: tuple[ListChange, ...] = ()

    @property
    def rejections_nationwide(self) -> bool:
        return self.province is not None

    @property
    def passes_issued(self) -> int:
        return sum(r.total for r in self.issued)


def checkpoint_provinces(checkpoint_id: str) -> frozenset[str]:
    """The provinces a checkpoint lies in, by its id: both ends' of a BX- crossing, a DST- county's."""
    if checkpoint_id.startswith("BX-"):
        return frozenset(part[:2] for part in checkpoint_id[3:].split("-") if part)
    if checkpoint_id.startswith("DST-"):
        return frozenset({checkpoint_id[4:6]})
    return frozenset()


def destination_of(route: dict | None) -> str | None:
    """The destination county of a route: its last checkpoint's, a DST-<county adcode>."""
    checkpoints = (route or {}).get("checkpoints") or ()
    last = checkpoints[-1].get("checkpoint_id", "") if checkpoints else ""
    return last[4:] if last.startswith("DST-") else None


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile by the nearest-rank method (a value that occurred): p90 of 10 values is the 9th."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _issued(issued: list[Issued]) -> tuple[IssuedRow, ...]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for p in issued:
        counts[p.issuer[:2]][p.priority] += 1
    return tuple(IssuedRow(prov, tuple(counts[prov][c] for c in CLASSES)) for prov in sorted(counts))


def _rejections(rejected: list[Rejected]) -> tuple[RejectionRow, ...]:
    counts = Counter(code for r in rejected for code in r.codes)
    return tuple(RejectionRow(code, n) for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _cause(reason: str | None) -> str:
    """The reason code of a status event (`no_signing_key: KID` names a key after its code)."""
    return (reason or "").split(":", 1)[0].strip() or "unspecified"


def _interventions(statuses: list[StatusChange]) -> tuple[InterventionRow, ...]:
    events: Counter = Counter()
    passes: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in statuses:
        if s.status in INTERVENTIONS and s.reason != NOT_A_CHANGE:
            key = (s.status, _cause(s.reason))
            events[key] += 1
            passes[key].add(s.pass_id)
    order = {status: n for n, status in enumerate(INTERVENTIONS)}
    return tuple(
        InterventionRow(status, cause, events[(status, cause)], len(passes[(status, cause)]))
        for status, cause in sorted(events, key=lambda k: (order[k[0]], -events[k], k[1]))
    )


def _dwell(statuses: list[StatusChange]) -> tuple[DwellRow, ...]:
    dwells: dict[str, list[float]] = defaultdict(list)
    over: Counter = Counter()
    for s in statuses:
        if s.dwell_seconds is not None and s.checkpoint_id:
            dwells[s.checkpoint_id].append(s.dwell_seconds)
            over[s.checkpoint_id] += s.dwell_exceeded
    return tuple(
        DwellRow(c, len(d), statistics.median(d), nearest_rank(d, 0.9), over[c]) for c, d in sorted(dwells.items())
    )


def _corridors(issued: list[Issued], top: int) -> tuple[CorridorRow, ...]:
    counts = Counter((p.issuer[:4], (p.destination or "")[:4]) for p in issued)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return tuple(CorridorRow(o, d, n) for (o, d), n in ranked)


def day_figures(facts: DayFacts, day: Day, province: str | None = None, *, top: int = TOP_CORRIDORS) -> DayFigures:
    """The day's figures from its facts (facts of other days are left out), restricted to a province
    when one is given (see the module doc for how each figure is attributed)."""
    issued = [p for p in facts.issued if day.holds(p.at)]
    statuses = [s for s in facts.statuses if day.holds(s.at)]
    changes = [c for c in facts.list_changes if day.holds(c.at)]
    corridors = issued
    if province is not None:
        corridors = [p for p in issued if province in (p.issuer[:2], (p.destination or "")[:2])]
        issued = [p for p in issued if p.issuer[:2] == province]
        departures = [s for s in statuses if s.checkpoint_id and province in checkpoint_provinces(s.checkpoint_id)]
        statuses = [s for s in statuses if s.pass_id[:2] == province]
        changes = [c for c in changes if c.credit_code[2:4] == province]
    else:
        departures = statuses
    rejected = [r for r in facts.rejected if day.holds(r.at)]
    return DayFigures(
        day=day,
        province=province,
        issued=_issued(issued),
        rejections=_rejections(rejected),
        rejected_requests=len(rejected),
        interventions=_interventions(statuses),
        dwell=_dwell(departures),
        corridors=_corridors(corridors, top),
        list_changes=tuple(sorted(changes, key=lambda c: (c.at, c.credit_code, c.action))),
    )


def differences(recorded: DayFigures, proof: DayFigures) -> list[str]:
    """What differs between two days' figures (the database's and the log's), table by table."""
    out: list[str] = []
    for f in fields(DayFigures):
        a, b = getattr(recorded, f.name), getattr(proof, f.name)
        if a == b:
            continue
        if isinstance(a, tuple) and isinstance(b, tuple):
            only_a = [x for x in a if x not in b]
            only_b = [x for x in b if x not in a]
            out.extend(f"{f.name}: database {x}" for x in only_a)
            out.extend(f"{f.name}: log {x}" for x in only_b)
            if not only_a and not only_b:
                out.append(f"{f.name}: the same rows in another order")
        else:
            out.append(f"{f.name}: database {a!r}, log {b!r}")
    return out
