"""Comparing the replay with the record: decisions byte for byte, status events per pass and cause.

Decisions recorded in the window with no request in it are candidates: `resolve` re-decides them
from a look-back over the requests topic, and those with no request at all are orphans.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from ..wire import request_sid
from .explain import explain_decision, reason_codes
from .reader import Record, decode, event_us, recorded_by_cause
from .replayer import Replayer

__all__ = ["Mismatch", "Comparison", "compare", "orphans", "resolve", "stale_requests"]


@dataclass
class Mismatch:
    """One finding of the audit (its kind, what the log recorded and what the replay produced, why)."""

    kind: str
    shipment_id: str | None = None
    pass_id: str | None = None
    recorded: Any = None
    replayed: Any = None
    recorded_reasons: list[str] = field(default_factory=list)
    replayed_reasons: list[str] = field(default_factory=list)
    differing_fields: list[str] = field(default_factory=list)
    explanation: str = ""
    where: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _diff_paths(a: Any, b: Any, prefix: str = "", depth: int = 3) -> list[str]:
    if a == b:
        return []
    if depth and isinstance(a, dict) and isinstance(b, dict):
        paths = []
        for k in sorted(set(a) | set(b)):
            paths += _diff_paths(a.get(k), b.get(k), f"{prefix}{k}.", depth - 1)
        return paths
    return [prefix.rstrip(".") or "(value)"]


def _shown(raw: bytes | None) -> Any:
    if raw is None:
        return None
    obj = decode(raw)
    return obj if obj is not None else {"raw": raw.decode("utf-8", "replace")}


def _decision_mismatch(
    kind: str,
    sid: str,
    recorded: bytes | None,
    replayed: bytes | None,
    where: Record | None = None,
    explanation: str = "",
) -> Mismatch:
    rec, rep = _shown(recorded), _shown(replayed)
    pass_id = next(
        (
            o["pass"]["pass_id"]
            for o in (rec, rep)
            if isinstance(o, dict) and isinstance(o.get("pass"), dict) and "pass_id" in o["pass"]
        ),
        None,
    )
    return _mismatch(kind, sid, pass_id, rec, rep, where, explanation)


def _status_mismatch(
    kind: str, pid: str, recorded: bytes | None, replayed: bytes | None, where: Record | None, explanation: str
) -> Mismatch:
    rec, rep = _shown(recorded), _shown(replayed)
    sid = next((o.get("shipment_id") for o in (rec, rep) if isinstance(o, dict) and o.get("shipment_id")), None)
    return _mismatch(kind, sid, pid, rec, rep, where, explanation)


def _mismatch(
    kind: str, sid: str | None, pass_id: str | None, rec: Any, rep: Any, where: Record | None, explanation: str
) -> Mismatch:
    """A mismatch of the recorded and the replayed output, shown (`_shown`) side by side."""
    return Mismatch(
        kind,
        sid,
        pass_id,
        rec,
        rep,
        reason_codes(rec),
        reason_codes(rep),
        _diff_paths(rec, rep) if rec is not None and rep is not None else [],
        explanation,
        where.where() if where else None,
    )


@dataclass
class Comparison:
    """The findings, the counts, and what the look-back and the timelines need."""

    mismatches: list[Mismatch] = field(default_factory=list)
    decisions_matched: int = 0
    decisions_recorded: int = 0
    candidates: dict[str, list[Record]] = field(default_factory=dict)  # recorded, no request in the window
    passes_compared: int = 0
    statuses_matched: int = 0
    statuses_recorded: int = 0
    recorded_status: dict[str, list[Record]] = field(default_factory=dict)  # pass id -> records (scope + watched)


def compare(
    rep: Replayer,
    decisions: Iterable[Record],
    statuses: Iterable[Record],
    *,
    until_ms: int | None = None,
    full: bool = True,
    watch: Iterable[str] = (),
) -> Comparison:
    """Compare what the replay produced with what the log recorded (see the module doc of `streams.audit`)."""
    c = Comparison()
    _compare_decisions(c, rep, decisions, until_ms)
    if full:
        c.mismatches += orphans(c.candidates)
        c.candidates = {}
    scope = set(rep.passes) | (set(rep.statuses) if full else set())
    c.recorded_status = _status_by_pass(statuses, scope | set(watch))
    for pid in sorted(scope):
        _compare_pass(c, pid, rep.statuses.get(pid, {}), until_ms)
    return c


def _compare_decisions(c: Comparison, rep: Replayer, decisions: Iterable[Record], until_ms: int | None) -> None:
    """Each re-decision against the decisions recorded for its shipment; the recorded ones left are candidates."""
    recorded: dict[str, list[Record]] = defaultdict(list)
    for r in decisions:
        sid = r.key.decode("utf-8", "replace") if r.key else (decode(r.value) or {}).get("shipment_id")
        recorded[str(sid)].append(r)
        c.decisions_recorded += 1
    for sid, body in rep.decisions.items():
        recs = recorded.pop(sid, None)
        if not recs:
            c.mismatches.append(
                _decision_mismatch(
                    "decision_missing",
                    sid,
                    None,
                    body,
                    rep.request_of.get(sid),
                    "the request is in the log but no decision for it was recorded (is the worker behind?)",
                )
            )
            continue
        bad = False
        seen: set[bytes] = set()
        for r in recs:
            if r.value == body or r.value in seen:
                continue
            seen.add(r.value)
            bad = True
            c.mismatches.append(
                _decision_mismatch("decision_differs", sid, r.value, body, r, explain_decision(rep, sid, r))
            )
        c.decisions_matched += not bad
    for sid, recs in recorded.items():
        if until_ms is None or any(r.timestamp_ms <= until_ms for r in recs):
            c.candidates[sid] = recs


def _status_by_pass(statuses: Iterable[Record], keep: set[str]) -> dict[str, list[Record]]:
    """The recorded status events of the passes in `keep`, by pass (keyed by pass id, else named in the value)."""
    by_pass: dict[str, list[Record]] = defaultdict(list)
    for r in statuses:
        if r.key is not None:
            pid = r.key.decode("utf-8", "replace")
            if pid in keep:
                by_pass[pid].append(r)
        else:
            obj = decode(r.value) or {}
            if obj.get("pass_id") in keep:
                by_pass[obj["pass_id"]].append(r)
    return dict(by_pass)


def _compare_pass(c: Comparison, pid: str, mine: dict[str, bytes], until_ms: int | None) -> None:
    """One pass's replayed status events against the recorded ones, cause by cause."""
    c.passes_compared += 1
    theirs = recorded_by_cause(pid, c.recorded_status.get(pid, ()))
    c.statuses_recorded += sum(map(len, theirs.values()))
    for ce_id, body in mine.items():
        recs = theirs.pop(ce_id, None)
        if not recs:
            c.mismatches.append(
                _status_mismatch(
                    "status_missing", pid, None, body, None, "the replay answers this cause; the log has no such event"
                )
            )
            continue
        bad = False
        seen: set[bytes] = set()
        for r in recs:
            if r.value != body and r.value not in seen:
                seen.add(r.value)
                bad = True
                c.mismatches.append(
                    _status_mismatch(
                        "status_differs",
                        pid,
                        r.value,
                        body,
                        r,
                        "same cause, another answer: arrival order differed from event time, or the event was altered",
                    )
                )
        c.statuses_matched += not bad
    for recs in theirs.values():
        if until_ms is None or any(r.timestamp_ms <= until_ms for r in recs):
            r = recs[0]
            c.mismatches.append(
                _status_mismatch(
                    "status_unexpected", pid, r.value, None, r, "recorded, but no input in the window causes it"
                )
            )


def orphans(candidates: dict[str, list[Record]]) -> list[Mismatch]:
    """Each distinct recorded decision of these shipments, as a decision with no request in the log."""
    out = []
    for sid, recs in candidates.items():
        seen: set[bytes] = set()
        for r in recs:
            if r.value not in seen:
                seen.add(r.value)
                out.append(
                    _decision_mismatch(
                        "orphan_decision", sid, r.value, None, r, "a decision on the topic with no request in the log"
                    )
                )
    return out


def resolve(rep: Replayer, c: Comparison, requests: list[Record]) -> list[Mismatch]:
    """Re-decide the requests found before the window for decisions recorded inside it."""
    first: dict[str, Record] = {}
    for r in requests:
        sid = request_sid(decode(r.value), r.key)
        if sid in c.candidates and (sid not in first or r.log_position < first[sid].log_position):
            first[sid] = r
    out = []
    for sid, recs in c.candidates.items():
        request = first.get(sid)
        if request is None:
            out += orphans({sid: recs})
            continue
        body = rep.decide_again(request)
        seen: set[bytes] = set()
        bad = False
        for r in recs:
            if r.value != body and r.value not in seen:
                seen.add(r.value)
                bad = True
                rep.request_of.setdefault(sid, request)
                out.append(_decision_mismatch("decision_differs", sid, r.value, body, r, explain_decision(rep, sid, r)))
        c.decisions_matched += not bad
    return out


def stale_requests(
    dead_letters: Iterable[Record], ticks: Iterable[Record], requests: Iterable[Record], retention: timedelta
) -> set[tuple[int, int]]:
    """(partition, offset) of the requests the worker dead-lettered as older than the retention
    whose claim the log bears out: a clock tick on their partition, logged before the dead letter,
    had put the clock more than the retention past the request's time. The worker judged them by
    the clock as they arrived; a replay in event time would sort them before those ticks."""
    from models.tracking import epoch_seconds

    from ..handlers import STALE_REQUEST

    clocks: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for tick in ticks:
        clocks[tick.partition].append((tick.timestamp_ms, epoch_seconds(decode(tick.value)["at"])))
    by_position = {(r.partition, r.offset): r for r in requests}
    found = set()
    for dead in dead_letters:
        obj = decode(dead.value) or {}
        request = by_position.get((obj.get("partition"), obj.get("offset")))
        if request is None or STALE_REQUEST not in str(obj.get("error")):
            continue
        at = event_us(decode(request.value), "submitted_at", request.timestamp_ms) // 1_000_000
        if any(
            logged <= dead.timestamp_ms and now > at + retention.total_seconds()
            for logged, now in clocks[request.partition]
        ):
            found.add((request.partition, request.offset))
    return found
