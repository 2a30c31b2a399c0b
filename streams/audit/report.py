"""The audit's reports: JSON, a Rich console report, a static HTML page; and the progress bar."""

from __future__ import annotations

import html
from typing import Any

import orjson
from rich.progress import ProgressColumn

from .explain import summary

__all__ = ["report_json", "print_report", "report_html", "summary_text", "progress_bar"]


def progress_bar(enabled: bool):
    """The Rich progress bar of a replay or a rebuild, on stderr (disabled: shows nothing)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


class _RateColumn(ProgressColumn):
    def render(self, task):
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} events/s" if speed else "… events/s", style="cyan")


def report_json(report: dict) -> bytes:
    """The report as the JSON file writes it (without the re-decisions kept for callers)."""
    body = {k: v for k, v in report.items() if k != "replayed_decisions"}
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _brief(obj: Any) -> str:
    if not isinstance(obj, dict):
        return "—" if obj is None else str(obj)
    if "decision" in obj:
        s = summary(obj)
        parts = [f"{s['decision']} {s['priority'] or ''}".strip()]
        if s["reasons"]:
            parts.append("reasons: " + ", ".join(s["reasons"]))
        if s["pass_id"]:
            parts += [f"pass {s['pass_id']}", f"valid {s['valid']}", "route " + "→".join(s["route"] or [])]
        return "\n".join(parts)
    if "status" in obj:
        bits = [f"{obj.get('status')} at {obj.get('at')}"]
        for k in ("checkpoint_id", "reason", "dwell_seconds", "cause"):
            if obj.get(k) is not None:
                bits.append(f"{k}: {obj[k]}")
        return "\n".join(bits)
    return orjson.dumps(obj).decode()[:300]


def print_report(console, report: dict) -> None:
    """The audit report on a Rich console: inputs and timing, re-decisions, mismatches, timelines, verdict."""
    w, ev, tm = report["window"], report["events"], report["timing"]
    console.print(f"[bold]Replay audit[/bold] of {w['topic_prefix']}* from {w['since']} to {w['until']}")
    console.print(
        f"inputs: {ev['requests']} requests, {ev['scans']} scans, {ev['risk']} risk and "
        f"{ev['enterprises']} enterprise updates in the window ({ev['reference_loaded']} reference records "
        f"loaded) — {ev['total']:,} events in {tm['seconds']} s ({tm['events_per_second'] or 0:,.0f} events/s; "
        f"re-deciding alone {tm['replay_events_per_second'] or 0:,.0f} events/s)"
    )
    _print_decisions(console, report["decisions"], report["statuses"])
    _print_mismatches(console, report["mismatches"])
    for pid, tl in report["timelines"].items():
        _print_timeline(console, pid, tl)
    if report["ok"]:
        console.print("[bold green]OK[/bold green]: every decision and status event is reproduced")
    else:
        counts = ", ".join(f"{k} {v}" for k, v in report["mismatch_counts"].items())
        console.print(f"[bold red]MISMATCH[/bold red]: {counts}")


def _print_decisions(console, d: dict, s: dict) -> None:
    from rich.table import Table

    table = Table("decision", "class", "count", title="Re-decisions")
    for decision, classes in d["by_class"].items():
        for cls, n in classes.items():
            table.add_row(decision, cls, str(n))
    console.print(table)
    console.print(
        f"decisions: {d['replayed']} re-decided, {d['matched']} proven identical, {d['recorded']} recorded, "
        f"{d['repeated_requests']} repeated requests, {d['dead_letters']} dead letters"
    )
    if d["rejection_reasons"]:
        console.print("rejection reasons: " + ", ".join(f"{k} {v}" for k, v in d["rejection_reasons"].items()))
    console.print(
        f"statuses: {s['passes_compared']} passes compared, {s['events_replayed']} events replayed, "
        f"{s['matched']} identical — " + ", ".join(f"{k} {v}" for k, v in s["by_status"].items())
    )


def _print_mismatches(console, mismatches: list[dict]) -> None:
    from rich.table import Table

    if not mismatches:
        return
    table = Table(
        "kind", "shipment / pass", "recorded", "replayed", "why", title=f"{len(mismatches)} mismatches", show_lines=True
    )
    for m in mismatches[:200]:
        who = "\n".join(x for x in (m["shipment_id"], m["pass_id"]) if x)
        why = m["explanation"]
        if m["differing_fields"]:
            why += "\nfields: " + ", ".join(m["differing_fields"][:8])
        table.add_row(f"[red]{m['kind']}[/red]", who, _brief(m["recorded"]), _brief(m["replayed"]), why)
    console.print(table)
    if len(mismatches) > 200:
        console.print(f"… and {len(mismatches) - 200} more (see --json)")


def _print_timeline(console, pid: str, tl: dict) -> None:
    from rich.panel import Panel
    from rich.table import Table

    table = Table(
        "at",
        "status",
        "checkpoint",
        "reason",
        "dwell s",
        "cause",
        "log vs replay",
        title=f"Pass {pid} ({tl['shipment_id'] or 'unknown shipment'}) — final {tl['final_status']}",
    )
    for row in tl["events"]:
        dwell = (
            ""
            if row["dwell_seconds"] is None
            else f"{row['dwell_seconds']:.0f}" + (" ⚠" if row["dwell_exceeded"] else "")
        )
        style = "" if row["match"] == "same" else "red"
        table.add_row(
            row["at"] or "",
            row["status"] or "",
            row["checkpoint_id"] or "",
            row["reason"] or "",
            dwell,
            row["cause"] or "",
            row["match"],
            style=style,
        )
    if tl["decision"]:
        console.print(Panel(summary_text(tl["decision"]), title="decision", expand=False))
    console.print(table)


def summary_text(s: dict) -> str:
    """A decision summary (`explain.summary`) as lines of text."""
    lines = [f"{s['shipment_id']}: {s['decision']} {s['priority'] or ''} decided {s['decided_at']}"]
    if s["reasons"]:
        lines.append("reasons: " + ", ".join(s["reasons"]))
    if s["pass_id"]:
        lines += [f"pass {s['pass_id']} valid {s['valid']}", "route " + " → ".join(s["route"] or [])]
    return "\n".join(lines)


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
.bad{background:#fde8e8}.ok{color:#186a1e}.err{color:#b00}pre{margin:0;white-space:pre-wrap;max-width:48em;font-size:12px}
.tl td:first-child{white-space:nowrap}"""


def report_html(report: dict) -> str:
    """A static HTML page of the audit report, with a timeline per pass."""
    e = html.escape
    w, ev, tm, d, s = report["window"], report["events"], report["timing"], report["decisions"], report["statuses"]
    out = [
        f"<!doctype html><meta charset=utf-8><title>greenchannel replay audit</title><style>{_CSS}</style>",
        f"<h1>Replay audit <span class={'ok' if report['ok'] else 'err'}>"
        f"{'OK' if report['ok'] else 'MISMATCH'}</span></h1>",
        f"<p>Window {e(w['since'])} → {e(w['until'])}; {ev['total']} input events ({ev['requests']} requests, "
        f"{ev['scans']} scans, {ev['risk']} risk, {ev['enterprises']} enterprise) in {tm['seconds']} s "
        f"({tm['events_per_second']} events/s).</p>",
        "<h2>Re-decisions</h2><table><tr><th>decision<th>class<th>count",
    ]
    for decision, classes in d["by_class"].items():
        for cls, n in classes.items():
            out.append(f"<tr><td>{e(decision)}<td>{e(cls)}<td>{n}")
    out.append(
        f"</table><p>{d['matched']} of {d['replayed']} decisions proven byte-identical; "
        f"{s['matched']} status events identical over {s['passes_compared']} passes.</p>"
    )
    out += _html_mismatches(report["mismatches"])
    for pid, tl in report["timelines"].items():
        out += _html_timeline(pid, tl)
    return "\n".join(out) + "\n"


def _html_mismatches(mismatches: list[dict]) -> list[str]:
    e = html.escape
    out = [f"<h2>Mismatches ({len(mismatches)})</h2>"]
    if mismatches:
        out.append("<table><tr><th>kind<th>shipment / pass<th>recorded<th>replayed<th>why")
        for m in mismatches:
            rec = e(orjson.dumps(m["recorded"], option=orjson.OPT_INDENT_2).decode()) if m["recorded"] else "—"
            rep = e(orjson.dumps(m["replayed"], option=orjson.OPT_INDENT_2).decode()) if m["replayed"] else "—"
            why = e(m["explanation"]) + (
                "<br>fields: " + e(", ".join(m["differing_fields"])) if m["differing_fields"] else ""
            )
            out.append(
                f"<tr class=bad><td>{e(m['kind'])}<td>{e(m['shipment_id'] or '')}<br>{e(m['pass_id'] or '')}"
                f"<td><pre>{rec}</pre><td><pre>{rep}</pre><td>{why}"
            )
        out.append("</table>")
    return out


def _html_timeline(pid: str, tl: dict) -> list[str]:
    e = html.escape
    out = [f"<h2>Pass {e(pid)}</h2>"]
    if tl["decision"]:
        out.append(f"<pre>{e(summary_text(tl['decision']))}</pre>")
    out.append("<table class=tl><tr><th>at<th>status<th>checkpoint<th>reason<th>dwell s<th>cause<th>log vs replay")
    for row in tl["events"]:
        dwell = "" if row["dwell_seconds"] is None else f"{row['dwell_seconds']:.0f}"
        cls = "" if row["match"] == "same" else " class=bad"
        out.append(
            f"<tr{cls}><td>{e(row['at'] or '')}<td>{e(row['status'] or '')}<td>{e(row['checkpoint_id'] or '')}"
            f"<td>{e(row['reason'] or '')}<td>{dwell}<td>{e(row['cause'] or '')}<td>{e(row['match'])}"
        )
    out.append(f"</table><p>final status: <b>{e(str(tl['final_status']))}</b></p>")
    return out
