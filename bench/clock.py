"""The channel's clock at scale, in process: what a tick costs on a partition of many passes.

A tick expires the passes whose validity ended and takes out of the state what is past the
retention (`streams.handlers.Pipeline._on_clock`); it should cost what comes due, not what the
partition holds.
"""

from __future__ import annotations

import gc
import time
from datetime import timedelta

from msgspec.structs import replace

from models.records import format_time, parse_time
from models.stored import dump, load_pass

from .suites import _templates

__all__ = ["clock_tick_runs"]


def _partition(total: int, due: int):
    """A one-partition pipeline and tables of `total` active passes, `due` of them ending at `end`
    and the others 30 days later."""
    from streams.handlers import Pipeline, Tables

    base, templates = _templates()
    states = [load_pass(raw) for raw in templates.passes.values()]
    end = max(parse_time(s.valid_until) for s in states)
    later = format_time(end + timedelta(days=30))
    tables = Tables.empty()
    for i in range(total):
        template = states[i % len(states)]
        state = replace(
            template, pass_id=f"{i:012d}", shipment_id=f"clock-{i}", valid_until=format_time(end) if i < due else later
        )
        tables.passes[state.pass_id] = dump(state)
        tables.decided[state.shipment_id] = templates.decided[template.shipment_id]
    pipeline = Pipeline(base.decider, base.tracker, base.topics, partitions=1, retention=base.retention)
    return pipeline, tables, end


def _timed(pipeline, tables, at) -> tuple[float, int]:
    gc.collect()
    t = time.perf_counter()
    outs = pipeline.on_pass_event(pipeline.clock_tick(at, 0).value, partition=0, tables=tables)
    return (time.perf_counter() - t) * 1000, len(outs)


def clock_tick_runs(total: int, runs: int, *, share: float = 0.01) -> dict:
    """Per run: the lifetimes' build after a (re)assignment (once), a tick expiring `share` of
    `total` active passes, a tick with nothing due, and a tick taking the expired ones out of the
    state a retention later."""
    due = int(total * share)
    result = {"total": total, "due": due, "runs": []}
    for _ in range(runs):
        pipeline, tables, end = _partition(total, due)
        gc.collect()
        t = time.perf_counter()
        pipeline.lifetimes(0, tables)
        row = {"build_ms": (time.perf_counter() - t) * 1000}
        row["expire_ms"], row["expired"] = _timed(pipeline, tables, end + timedelta(seconds=1))
        row["idle_ms"], _ = _timed(pipeline, tables, end + timedelta(seconds=2))
        held = len(tables.passes)
        row["leave_ms"], _ = _timed(pipeline, tables, end + pipeline.retention + timedelta(seconds=2))
        row["left"] = held - len(tables.passes)
        result["runs"].append(row)
    return result
