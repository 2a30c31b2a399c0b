"""`greenchannel pass history PASS_ID`: one pass's story told from the log, not the database."""

from __future__ import annotations

from ..wire import request_sid
from .explain import summary
from .reader import Record, Spec, decode, read_log
from .report import summary_text

__all__ = ["pass_history", "print_pass_history"]


async def pass_history(settings, pass_id: str) -> dict | None:
    """Request, decision(s), every status event with its scan and dwell, and the final status."""
    from ..handlers import Topics

    t = Topics.with_prefix(settings.topic_prefix)
    pid = pass_id.encode()
    found = await read_log(
        settings,
        [
            Spec(t.status, keep=lambda m: m.key == pid or (m.key is None and m.value is not None and pid in m.value)),
            Spec(t.decisions, keep=lambda m: m.value is not None and pid in m.value),
            Spec(t.scans, keep=lambda m: m.key == pid or (m.value is not None and pid in m.value)),
        ],
    )
    decisions = [
        (r, obj)
        for r in found[t.decisions]
        if (obj := decode(r.value)) and isinstance(obj.get("pass"), dict) and obj["pass"].get("pass_id") == pass_id
    ]
    statuses = [(r, obj) for r in found[t.status] if (obj := decode(r.value)) and obj.get("pass_id") == pass_id]
    scans = {}
    for r in found[t.scans]:
        obj = decode(r.value)
        if obj and (obj.get("pass_id") == pass_id or r.key == pid):
            scans.setdefault(str(obj.get("scan_id")), (r, obj))
    if not decisions and not statuses and not scans:
        return None
    sids = list(dict.fromkeys(obj["shipment_id"] for _, obj in decisions))
    requests = await _requests(settings, t.request_topics, sids)
    events, answered = _events(statuses, scans)
    unanswered = [
        {k: obj.get(k) for k in ("scan_id", "checkpoint_id", "kind", "scanned_at")}
        for sid, (r, obj) in scans.items()
        if sid not in answered
    ]
    dwells = [e["dwell_seconds"] for e in events if e["dwell_seconds"] is not None]
    return {
        "pass_id": pass_id,
        "request": requests[0][1] if requests else None,
        "requested": requests[0][0].where() if requests else None,
        "decisions": [{**summary(obj), "logged": r.where()} for r, obj in decisions],
        "distinct_decisions": len({r.value for r, _ in decisions}),
        "events": events,
        "unanswered_scans": unanswered,
        "scans": len(scans),
        "reroutes": sum(e["status"] == "rerouted" for e in events),
        "mean_dwell_seconds": round(sum(dwells) / len(dwells), 1) if dwells else None,
        "final_status": events[-1]["status"] if events else None,
    }


async def _requests(settings, topics: tuple[str, ...], sids: list[str]) -> list[tuple[Record, dict]]:
    """The requests of these shipments in the log (on the firms' topic or the gateway's), with their values."""
    if not sids:
        return []
    wanted = [s.encode() for s in sids]

    def keep(m) -> bool:
        return m.key in wanted or (m.value is not None and any(s in m.value for s in wanted))

    got = await read_log(settings, [Spec(topic, keep=keep) for topic in topics])
    records = [r for topic in topics for r in got[topic]]
    return [(r, obj) for r in records if (obj := decode(r.value)) and request_sid(obj, r.key) in sids]


def _events(statuses: list[tuple[Record, dict]], scans: dict[str, tuple[Record, dict]]) -> tuple[list[dict], set[str]]:
    """The pass's status events as rows (each with the scan it answers), and the ids of the scans answered."""
    events, answered = [], set()
    for r, obj in statuses:
        cause = obj.get("cause") or ""
        row = {
            "at": obj.get("at"),
            "status": obj.get("status"),
            "checkpoint_id": obj.get("checkpoint_id"),
            "reason": obj.get("reason"),
            "dwell_seconds": obj.get("dwell_seconds"),
            "dwell_exceeded": obj.get("dwell_exceeded"),
            "cause": cause,
            "logged": r.where()["timestamp"],
        }
        if cause.startswith("scan:") and cause[5:] in scans:
            answered.add(cause[5:])
            row["scan"] = {k: scans[cause[5:]][1].get(k) for k in ("scan_id", "kind", "scanned_at", "plate")}
        if obj.get("route"):
            row["route"] = obj["route"].get("adcodes")
        events.append(row)
    return events, answered


def print_pass_history(console, story: dict) -> None:
    """A pass's story (`pass_history`) on a Rich console."""
    from rich.table import Table

    console.print(f"[bold]Pass {story['pass_id']}[/bold] — final status [bold]{story['final_status']}[/bold]")
    req = story["request"]
    if req:
        cargo = ", ".join(
            f"{c.get('description')} ×{c.get('quantity')} {c.get('unit')}" for c in req.get("cargo") or []
        )
        console.print(
            f"request {req.get('shipment_id')} submitted {req.get('submitted_at')} "
            f"(logged {story['requested']['timestamp']})"
        )
        console.print(
            f"  {(req.get('shipper') or {}).get('name')} → {(req.get('consignee') or {}).get('name')}; "
            f"{cargo}; plate {(req.get('vehicle') or {}).get('plate')}"
        )
        console.print(f"  from {req.get('origin')} to {req.get('destination')}, departing {req.get('departure_at')}")
    else:
        console.print("[yellow]no request for this pass in the log[/yellow]")
    for d in story["decisions"]:
        console.print("decision: " + summary_text(d).replace("\n", "\n  "))
    if story["distinct_decisions"] > 1:
        console.print(f"[red]{story['distinct_decisions']} different decisions name this pass[/red]")
    table = Table("at", "status", "checkpoint", "reason", "dwell s", "scan", "cause")
    for e in story["events"]:
        dwell = (
            "" if e["dwell_seconds"] is None else f"{e['dwell_seconds']:.0f}" + (" ⚠" if e["dwell_exceeded"] else "")
        )
        scan = f"{e['scan']['kind']} {e['scan']['scan_id']}" if e.get("scan") else ""
        reason = e["reason"] or ""
        if e.get("route"):
            reason += ("\n" if reason else "") + "new route " + "→".join(e["route"])
        table.add_row(e["at"] or "", e["status"] or "", e["checkpoint_id"] or "", reason, dwell, scan, e["cause"])
    console.print(table)
    for s in story["unanswered_scans"]:
        console.print(
            f"[yellow]scan {s['scan_id']} ({s['kind']} at {s['checkpoint_id']}, {s['scanned_at']}) "
            f"has no status answer in the log[/yellow]"
        )
    console.print(
        f"{story['scans']} scans, {story['reroutes']} reroutes, mean dwell "
        f"{story['mean_dwell_seconds'] if story['mean_dwell_seconds'] is not None else '—'} s; "
        f"final status {story['final_status']}"
    )
