"""Explaining the audit's findings: why a recorded decision differs, and one pass's timeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from models.stored import load_pass

from .reader import Record, decode, recorded_by_cause
from .replayer import Replayer

if TYPE_CHECKING:
    from .compare import Comparison

__all__ = ["explain_decision", "timeline", "summary", "reason_codes"]


def reason_codes(obj: Any) -> list[str]:
    """The reason codes of a decision (its `reasons`) or of a status event (its `reason`)."""
    if not isinstance(obj, dict):
        return []
    if "reasons" in obj:
        return [r.get("code", "?") if isinstance(r, dict) else str(r) for r in obj.get("reasons") or []]
    return [obj["reason"]] if obj.get("reason") else []


def _late_reference(rep: Replayer, request: Record, recorded: Record) -> tuple[int, float] | None:
    """Does the recorded decision follow from the reference data minus its latest records?

    Tried with what the log held when the decision was recorded, then without each of the
    reference records logged in the five minutes before it (most recent first, at most 20).
    """
    ts = recorded.timestamp_ms
    recent = sorted({r.timestamp_ms for r in rep.reference if ts - 300_000 <= r.timestamp_ms <= ts}, reverse=True)
    for cutoff in [ts] + [t - 1 for t in recent][:20]:
        if rep.decide_as_known_at(request, cutoff) == recorded.value:
            return sum(r.timestamp_ms > cutoff for r in rep.reference), (ts - cutoff) / 1000
    return None


def explain_decision(rep: Replayer, sid: str, recorded: Record) -> str:
    """Why a recorded decision differs from the re-decision (cheap checks first)."""
    from models.passes import InvalidToken, verify_token

    obj, mine = decode(recorded.value), decode(rep.decisions.get(sid))
    if obj is None:
        return "the recorded value is not a JSON decision"
    notes = []
    if mine is not None and obj.get("rules_version") != mine.get("rules_version"):
        notes.append(f"recorded under rules {obj.get('rules_version')!r}, replayed under {mine.get('rules_version')!r}")
    token = (obj.get("pass") or {}).get("token") if isinstance(obj.get("pass"), dict) else None
    if token:
        try:
            verify_token(token, rep.pipeline.tracker.keys)
        except InvalidToken:
            notes.append("its pass token does not verify with the signing key: not issued by this system")
    request = rep.request_of.get(sid)
    if request is not None and not notes and rep.diagnoses > 0:
        rep.diagnoses -= 1
        late = _late_reference(rep, request, recorded)
        if late is not None:
            n, seconds = late
            return (
                f"late_reference_data: reproduced without the {n} reference record(s) logged after the decision "
                f"or less than {seconds:.1f} s before it: an update effective before the request reached the "
                "worker's books only after the decision (the decision was taken on stale reference data)"
            )
    if not notes:
        notes.append("the rules would not produce the recorded decision (altered or injected)")
    return "; ".join(notes)


def timeline(rep: Replayer, comparison: Comparison, pass_id: str) -> dict:
    """One pass, replayed and recorded side by side, in event-time order."""
    mine = rep.statuses.get(pass_id, {})
    theirs = recorded_by_cause(pass_id, comparison.recorded_status.get(pass_id, ()))
    rows = []
    for ce_id in list(mine) + [k for k in theirs if k not in mine]:
        replayed = decode(mine.get(ce_id))
        recorded_values = list(dict.fromkeys(r.value for r in theirs.get(ce_id, ())))
        recorded = decode(recorded_values[0]) if recorded_values else None
        base = replayed or recorded or {}
        if replayed is None:
            match = "recorded_only"
        elif recorded is None:
            match = "replay_only"
        else:
            match = "same" if recorded_values == [mine[ce_id]] else "differs"
        row = {
            k: base.get(k)
            for k in ("at", "status", "checkpoint_id", "reason", "dwell_seconds", "dwell_exceeded", "cause")
        }
        row["match"] = match
        if match == "differs":
            row["recorded"] = {k: recorded.get(k) for k in ("at", "status", "checkpoint_id", "reason", "dwell_seconds")}
        if base.get("route"):
            row["route"] = base["route"].get("adcodes")
        rows.append(row)
    rows.sort(key=lambda row: (row["at"] or "", row["cause"] or ""))
    raw = rep.passes.get(pass_id)
    state = None if raw is None else load_pass(raw)
    sid = (
        state.shipment_id
        if state
        else next(
            (row.get("shipment_id") for row in (decode(mine[k]) for k in mine) if row and row.get("shipment_id")), None
        )
    )
    decision = decode(rep.decisions.get(sid)) if sid else None
    return {
        "pass_id": pass_id,
        "shipment_id": sid,
        "decision": summary(decision) if decision else None,
        "final_status": state.status if state else (rows[-1]["status"] if rows else None),
        "events": rows,
    }


def summary(d: dict) -> dict:
    """A decision in brief: its class, reasons, pass, validity and route."""
    p = d.get("pass") if isinstance(d.get("pass"), dict) else None
    return {
        "shipment_id": d.get("shipment_id"),
        "decision": d.get("decision"),
        "priority": d.get("priority"),
        "reasons": reason_codes(d),
        "decided_at": d.get("decided_at"),
        "pass_id": p.get("pass_id") if p else None,
        "valid": f"{p.get('valid_from')} → {p.get('valid_until')}" if p else None,
        "route": (p.get("route") or {}).get("adcodes") if p else None,
    }
