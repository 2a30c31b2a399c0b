"""One dispatch: the table of topic -> handler and the one guard, for the worker and the audit alike.

The live worker's agents and the audit replay both hand each input record to `handle`, which finds
its handler by the record's topic in `handlers(pipeline)` and dead-letters anything a handler did not
expect. So the replay runs exactly what the worker ran, with the same error rule; what differs is
only what each gives beside the record (`Given`): the worker its clock, the replay the time and the
knowledge the recorded decision says the worker had. Nothing here imports Faust or Kafka.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from models.keyring import SigningKeyMissing

from .handlers import Out, Pipeline, RecordMeta, ReferenceBehind, Tables

__all__ = ["Given", "Handler", "WAITS", "handlers", "handle"]

log = logging.getLogger("greenchannel")


@dataclass(frozen=True, slots=True)
class Given:
    """What the channel gives a handler beside the record: the worker's tables; the channel's time
    (`now`: the worker's clock, or the time a recorded answer says); what a recorded decision knew
    (`known`, a replay's); and `only`, the one pass a replayed broadcast is applied to (a reference
    change that reached the pass's partition after its decision, which had not known of it)."""

    tables: Tables
    now: datetime | None = None
    known: dict | None = None
    only: tuple[str, ...] | None = None


Handler = Callable[[bytes | None, bytes | None, RecordMeta, Given], list[Out]]

# Raised by a handler that wrote nothing and must be tried again once the caller has read the
# reference topics again, or, in an audit replay only, that lacks a private key the worker had
# (SigningKeyMissing: the audit stops and names it; the live worker rejects `no_signing_key`
# instead, `models.decide`): never dead-lettered.
WAITS = (SigningKeyMissing, ReferenceBehind)


def handlers(pipeline: Pipeline) -> dict[str, Handler]:
    """The handler of each topic the worker reads."""
    p, t = pipeline, pipeline.topics
    return {
        t.requests: lambda k, v, m, g: p.on_request(k, v, m, tables=g.tables, now=g.now, known=g.known),
        t.gateway_requests: lambda k, v, m, g: p.on_request(k, v, m, tables=g.tables, now=g.now, known=g.known),
        t.scans: lambda k, v, m, g: p.on_scan(k, v, m, tables=g.tables, now=g.now),
        t.risk: lambda k, v, m, g: p.on_risk(k, v, m),
        t.enterprises: lambda k, v, m, g: p.on_enterprise(k, v, m),
        t.keys: lambda k, v, m, g: p.on_key(k, v, m),
        t.pass_events: lambda k, v, m, g: p.on_pass_event(v, partition=m.partition, tables=g.tables, only=g.only),
    }


def handle(
    pipeline: Pipeline,
    table: dict[str, Handler],
    key: bytes | None,
    value: bytes | None,
    meta: RecordMeta,
    given: Given,
) -> list[Out]:
    """The record's outputs from its topic's handler. The one guard: an error a handler did not
    expect dead-letters the record, with the error (an agent never dies on a message), except those
    of `WAITS`, which the caller waits on and tries again."""
    try:
        return table[meta.topic](key, value, meta, given)
    except WAITS:
        raise
    except Exception as exc:  # noqa: BLE001 — the record is kept, with the error
        log.exception("failed on %s@%s:%s", meta.topic, meta.partition, meta.offset)
        return [pipeline.dead_letter(meta, key, value, f"internal error: {type(exc).__name__}: {exc}")]
