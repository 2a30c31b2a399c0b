"""`greenchannel replay`: the audit run. Read the window and the record, re-decide, compare, report."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from .compare import Comparison, compare, resolve, stale_requests
from .explain import timeline
from .reader import Position, Record, Spec, read_log
from .replayer import Replayer
from .report import progress_bar

if TYPE_CHECKING:  # the decision core is imported when a command runs, not when the CLI parses arguments
    from ..handlers import Pipeline, Topics

__all__ = ["run_replay", "is_clock_tick"]


@dataclass(slots=True)
class _Window:
    """The inputs read for the window: by topic, the reference data up to its end, and what is replayed."""

    read: dict[str, list[Record]]
    reference: list[Record]
    inputs: list[Record]


@dataclass(slots=True)
class _Recorded:
    """What the log recorded for the window, and what the replay needs of it before it starts."""

    decisions: list[Record]
    statuses: list[Record]
    held: Iterable[Record]  # the decisions before the window's end (pass numbers held)
    stale: set[tuple[int, int]]  # requests dead-lettered live as older than the retention
    until_ms: int | None


async def run_replay(
    settings,
    *,
    since: Position | None = None,
    until: Position | None = None,
    passes: Iterable[str] = (),
    progress: bool = False,
    pipeline: Pipeline | None = None,
) -> dict:
    """Read, re-decide, compare; the audit report as a JSON-ready dict (`report["ok"]`)."""
    if pipeline is None:
        from ..bootstrap import build_pipeline

        pipeline = build_pipeline(settings)
    t = pipeline.topics
    watch = list(dict.fromkeys(passes))
    full = since is None or since.is_beginning
    started = time.perf_counter()
    with progress_bar(progress) as bar:
        window = await _read_window(settings, t, since, until, bar)
        recorded = await _read_recorded(settings, pipeline, window, since, until, full, bar)
        read_done = time.perf_counter()

        task = bar.add_task("replaying", total=len(window.inputs))
        rep = Replayer(pipeline, advance=lambda n: bar.advance(task, n))
        rep.load_reference(window.reference)
        rep.replay(
            window.inputs,
            recorded=recorded.decisions,
            answers=recorded.statuses,
            held=recorded.held,
            stale=recorded.stale,
        )
        replay_done = time.perf_counter()
        c = compare(rep, recorded.decisions, recorded.statuses, until_ms=recorded.until_ms, full=full, watch=watch)
        if c.candidates:
            c.mismatches += await _look_back(settings, rep, c, t.request_topics, since, bar)
    elapsed = time.perf_counter() - started
    n_inputs = len(window.inputs)
    timing = {
        "seconds": round(elapsed, 3),
        "read_seconds": round(read_done - started, 3),
        "replay_seconds": round(replay_done - read_done, 3),
        "events_per_second": round(n_inputs / elapsed, 1) if elapsed else None,
        "replay_events_per_second": round(n_inputs / (replay_done - read_done), 1) if replay_done > read_done else None,
    }
    return _report(settings, rep, c, window, watch, since, until, timing)


async def _read_window(settings, t: Topics, since: Position | None, until: Position | None, bar) -> _Window:
    """The inputs of the window, and all reference data up to `until` (as-of histories)."""
    read = await read_log(
        settings,
        [
            Spec(t.requests, since, until),
            Spec(t.gateway_requests, since, until),
            Spec(t.scans, since, until),
            Spec(t.risk, None, until),
            Spec(t.enterprises, None, until),
            Spec(t.keys, None, until),
            Spec(t.pass_events, since, until, keep=is_clock_tick),
        ],
        progress=bar,
        label="reading",
    )
    reference = read[t.risk] + read[t.enterprises] + read[t.keys]
    in_window = [r for r in reference if _inside(r, since)]
    requests = read[t.requests] + read[t.gateway_requests]
    return _Window(read, reference, requests + read[t.scans] + in_window + read[t.pass_events])


async def _read_recorded(
    settings, pipeline: Pipeline, window: _Window, since: Position | None, until: Position | None, full: bool, bar
) -> _Recorded:
    """What the log recorded, from the window's start to the end of the log. A window also needs
    the approvals before it, for the pass numbers held when it begins: the same read."""
    from ..handlers import STALE_REQUEST

    t = pipeline.topics
    out_since = since
    if since is not None and since.offset is not None and not since.is_beginning:
        first = min((r.timestamp_ms for r in window.inputs), default=None)
        out_since = Position(time_ms=first) if first is not None else since

    def recorded_or_approved(m) -> bool:
        return _inside_msg(m, out_since) or (m.value is not None and b'"approved"' in m.value)

    decision_spec = Spec(t.decisions, out_since) if full else Spec(t.decisions, None, keep=recorded_or_approved)
    marked = STALE_REQUEST.encode()
    stale_spec = Spec(t.deadletter, out_since, keep=lambda m: m.value is not None and marked in m.value)
    recorded = await read_log(
        settings, [decision_spec, Spec(t.status, out_since), stale_spec], progress=bar, label="recorded"
    )
    stale = stale_requests(
        recorded[t.deadletter],
        window.read[t.pass_events],
        window.read[t.requests] + window.read[t.gateway_requests],
        pipeline.retention,
    )
    until_ms = _until_ms(until, window.inputs)
    held = () if full else [r for r in recorded[t.decisions] if until_ms is None or r.timestamp_ms <= until_ms]
    decisions = [r for r in recorded[t.decisions] if _inside(r, out_since)]
    return _Recorded(decisions, recorded[t.status], held, stale, until_ms)


async def _look_back(
    settings, rep: Replayer, c: Comparison, topics: tuple[str, ...], since: Position | None, bar
) -> list:
    """Decisions recorded in the window whose request came before it: find and re-decide them."""
    wanted = {sid.encode() for sid in c.candidates}
    needles = list(wanted)

    def keep(m) -> bool:
        return not _inside_msg(m, since) and (
            m.key in wanted or (m.value is not None and any(s in m.value for s in needles))
        )

    before = await read_log(
        settings, [Spec(topic, None, None, keep=keep) for topic in topics], progress=bar, label="look-back"
    )
    return resolve(rep, c, [r for topic in topics for r in before[topic]])


def _report(
    settings,
    rep: Replayer,
    c: Comparison,
    window: _Window,
    watch: list[str],
    since: Position | None,
    until: Position | None,
    timing: dict,
) -> dict:
    """The audit report (JSON-ready), with a timeline for each watched pass and each mismatched one (up to 100)."""
    t = rep.topics
    decisions, statuses = _counts(rep)
    mismatched = {m.pass_id for m in c.mismatches if m.pass_id and m.pass_id in rep.passes}
    timelines = {pid: timeline(rep, c, pid) for pid in watch}
    for pid in sorted(mismatched - set(watch))[:100]:
        timelines[pid] = timeline(rep, c, pid)
    return {
        "ok": not c.mismatches,
        "window": {
            "since": str(since) if since else "beginning",
            "until": str(until) if until else "end of log",
            "topic_prefix": settings.topic_prefix,
        },
        "events": {
            "requests": rep.events[t.requests],
            "scans": rep.events[t.scans],
            "risk": rep.events[t.risk],
            "enterprises": rep.events[t.enterprises],
            "keys": rep.events[t.keys],
            "clock_ticks": rep.events[t.pass_events],
            "total": len(window.inputs),
            "reference_loaded": len(window.reference),
        },
        "timing": timing,
        "decisions": {**decisions, "recorded": c.decisions_recorded, "matched": c.decisions_matched},
        "statuses": {
            "passes_compared": c.passes_compared,
            "events_replayed": sum(map(len, rep.statuses.values())),
            "recorded": c.statuses_recorded,
            "matched": c.statuses_matched,
            "by_status": statuses,
        },
        "mismatch_counts": dict(Counter(m.kind for m in c.mismatches)),
        "mismatches": [m.to_dict() for m in c.mismatches],
        "timelines": timelines,
        "replayed_decisions": rep.decisions,  # dropped from the JSON file; kept for callers (determinism)
    }


def _counts(rep: Replayer) -> tuple[dict, dict]:
    """The re-decisions by decision and priority class, with rejection reasons; the status events by status."""
    by_class: dict[str, Counter] = defaultdict(Counter)
    reasons: Counter = Counter()
    for body in rep.decisions.values():
        obj = orjson.loads(body)
        by_class[obj["decision"]][obj.get("priority") or "-"] += 1
        if obj["decision"] != "approved":
            reasons.update(r.get("code", "?") for r in obj.get("reasons") or ())
    statuses: Counter = Counter()
    for events in rep.statuses.values():
        for body in events.values():
            statuses[orjson.loads(body)["status"]] += 1
    return {
        "replayed": len(rep.decisions),
        "by_decision": {k: sum(v.values()) for k, v in sorted(by_class.items())},
        "by_class": {k: dict(sorted(v.items())) for k, v in sorted(by_class.items())},
        "rejection_reasons": dict(reasons.most_common()),
        "repeated_requests": rep.repeats,
        "stale_requests": rep.stale,
        "dead_letters": rep.dead_letters,
    }, dict(sorted(statuses.items()))


def is_clock_tick(m) -> bool:
    """A tick of the channel's clock among the internal pass topic's records (the only ones there
    that come from outside the handlers: the rest a replay makes itself). The canonical bytes of
    `streams.handlers.clock_command`."""
    return m.value is not None and b'"kind":"clock"' in m.value


def _inside(r: Record, since: Position | None) -> bool:
    if since is None:
        return True
    if since.offset is not None:
        return r.offset >= since.offset
    return r.timestamp_ms >= since.time_ms


def _inside_msg(m, since: Position | None) -> bool:
    if since is None:
        return True
    if since.offset is not None:
        return m.offset >= since.offset
    return m.timestamp >= since.time_ms


def _until_ms(until: Position | None, inputs: list[Record]) -> int | None:
    if until is None:
        return None
    if until.time_ms is not None:
        return until.time_ms
    return max((r.timestamp_ms for r in inputs), default=0)
