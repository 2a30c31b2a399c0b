"""`greenchannel replay`: re-read the log, re-decide every request and prove every recorded decision.

An audit replay reads the input topics (requests, key enterprises, region risk, checkpoint
scans) between two positions, outside any consumer group so live workers are not disturbed,
and runs them through a fresh `Pipeline` from `build_pipeline(settings)`: the same code, the
same catalog and the same signing key as the live worker. Every re-decision is compared byte
for byte with the decision recorded on the decisions topic; the tracker's status events are
compared per pass.

Ordering (the design choice)
----------------------------
* Reference data is an as-of history (`RiskBook`, `EnterpriseBook`): the live worker loads the
  whole risk and enterprise topics at start and looks levels up *as of* each request's decision
  time. The replay does the same: it applies ALL reference records up to `--until` (from the
  beginning of their topics, whatever `--since` says) before re-deciding anything. A risk change
  whose `effective_at` lies before requests decided earlier therefore changes nothing for them
  *unless* it reached the live worker only after their decision: then the live decision was
  taken on stale data, the replay differs, and the mismatch is explained as
  `late_reference_data` (the request is re-decided once more with only the reference records
  the log held when the decision was recorded).
* The inputs inside the window are then merged in event-time order: requests by
  `submitted_at` (the record timestamp when that is invalid: the handler's own rule), risk and
  enterprise updates by `effective_at`, scans by `scanned_at`. Ties are broken by topic
  (enterprises, risk, requests, scans: an update effective at the very instant of a request is
  in force for it, as in `RiskBook.level_at`), then partition, then offset, so the order does
  not depend on how the partitions were interleaved when consumed.
* A repeated request (same shipment id) gets the first answer again, live and here; the first
  is the earliest in the log (record timestamp, partition, offset), which is the live worker's
  first for repeats on one partition (the usual case: requests are keyed by shipment id).
* Risk and enterprise updates inside the window also drive the tracker (re-evaluation of the
  passes issued so far): each of their per-partition broadcasts re-evaluates that partition's
  passes, as live; a pass's re-evaluation does not depend on the other passes.

Status comparison
-----------------
The live tracker applies commands in arrival (wall-clock) order, which a replay cannot know;
it sees them in event-time order. Status events are compared per pass as a mapping from cause
(`decision:…`, `scan:…`, `risk:…`, `enterprise:…`, carried in the CloudEvents id) to the event's
bytes: order is ignored and so are repeats (a redelivered scan is answered again with the same
bytes, live and here). A pass whose inputs arrived live in another order than their event
times (a scan received after a risk change but scanned before it, say) shows up as
`status_differs`; that is the method's limit, and a true finding when arrival order matters.
Passes in scope are those issued by a decision inside the window (plus, for a replay from the
beginning, every pass a scan named); recorded events of those passes are compared when the
replay produced the same cause or the event was recorded no later than `--until`.

Decisions recorded inside the window whose request lies before `--since` are re-decided from a
look-back over the requests topic; those with no request at all are orphans. Every mismatch
(`decision_differs`, `decision_missing`, `orphan_decision`, `status_differs`, `status_missing`,
`status_unexpected`) makes the command exit 1, so it can run as a scheduled job.

`--rebuild DATABASE_URL` rebuilds the database projections from the log into an empty database
with the same `models.store.db.project_*` functions and batch shape as the worker's projector.
`greenchannel pass history PASS_ID` tells one pass's story from the log, not the database.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import html
import random
import sys
import time
from collections import ChainMap, Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
from rich.progress import ProgressColumn

from typing import TYPE_CHECKING

from models.keyring import SigningKeyMissing
from models.records import effective_time, format_time, parse_time

if TYPE_CHECKING:  # the decision core is imported when a command runs, not when the CLI parses arguments
    from .handlers import Out, Pipeline, Topics

__all__ = ["Position", "parse_position", "Record", "Replayer", "compare", "Comparison", "Mismatch", "run_replay",
           "rebuild_database", "pass_history", "generate_log", "add_arguments", "cmd_replay", "cmd_pass_history",
           "RebuildRefused"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


# --- positions in the log ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Position:
    """A bound of the window: an offset on every partition, or a record timestamp (ms)."""
    offset: int | None = None
    time_ms: int | None = None

    def __str__(self) -> str:
        if self.offset is not None:
            return f"offset:{self.offset}"
        return format_time(_EPOCH + timedelta(milliseconds=self.time_ms))

    @property
    def is_beginning(self) -> bool:
        return self.offset == 0


def parse_position(text: str | None) -> Position | None:
    """`offset:N`, `beginning`, or an RFC 3339 time (compared with the records' timestamps)."""
    if text is None:
        return None
    text = text.strip()
    if text in ("beginning", "earliest"):
        return Position(offset=0)
    if text.startswith("offset:"):
        try:
            n = int(text.removeprefix("offset:"))
        except ValueError:
            raise ValueError(f"{text!r}: the offset must be an integer") from None
        if n < 0:
            raise ValueError(f"{text!r}: the offset must not be negative")
        return Position(offset=n)
    return Position(time_ms=(parse_time(text) - _EPOCH) // timedelta(milliseconds=1))


@dataclass(slots=True)
class Record:
    """One log record as read (the bytes are never re-encoded)."""
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple = ()

    @property
    def log_position(self) -> tuple[int, int, int]:
        return (self.timestamp_ms, self.partition, self.offset)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        return None

    def where(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "timestamp": format_time(_EPOCH + timedelta(milliseconds=self.timestamp_ms))}


def _decode(value: bytes | None) -> dict | None:
    if value is None:
        return None
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _event_us(obj: dict | None, field_name: str, timestamp_ms: int) -> int:
    """An input's event time in µs: its `field_name` time; for reference entries, their effective
    time as the handlers read it (`models.records.effective_time`: the record time when they have
    none); else (unreadable) the record time."""
    if obj is not None:
        try:
            at = (effective_time(obj, timestamp_ms) if field_name == "effective_at"
                  else parse_time(obj.get(field_name)))
            return (at - _EPOCH) // _US
        except ValueError:
            pass
    return timestamp_ms * 1000


def _request_sid(obj: dict | None, key: bytes | None) -> str | None:
    """The shipment id the handler answers to (mirrors `parse_request`)."""
    if obj is None:
        return None
    sid = obj.get("shipment_id")
    if not isinstance(sid, str) or not sid.strip():
        sid = key.decode("utf-8", "replace") if key else None
    return sid.strip() if sid else None


def _status_ce_id(pass_id: str, obj: dict) -> str:
    digest = hashlib.sha1(str(obj.get("cause", "")).encode()).hexdigest()[:16]
    return f"status/{pass_id}/{digest}"


# --- reading the log -----------------------------------------------------------------------------

@dataclass
class _Spec:
    topic: str
    start: Position | None = None   # None: the beginning of the topic
    stop: Position | None = None    # None: the end of the log when reading starts (else inclusive)
    keep: Callable[[Any], bool] | None = None


async def _read(settings, specs: list[_Spec], *, progress=None, label: str = "reading",
                idle_timeout: float = 60.0) -> dict[str, list[Record]]:
    """Read topic ranges outside any consumer group (assign + seek), up to the end of the log.

    The end is where a fetch round past the broker's end offset brings nothing more (records
    stamped after the read began end a partition early): the embedded Tansu broker reports
    the base offset of a partition's last batch as its end offset, one batch short, so the
    reported end offsets are only hints.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from .compat import refresh_metadata

    out: dict[str, list[Record]] = {s.topic: [] for s in specs}
    began_ms = int(time.time() * 1000)
    consumer = AIOKafkaConsumer(
        **settings.connection.kwargs(), enable_auto_commit=False, group_id=None,
        client_id="greenchannel-replay", auto_offset_reset="earliest", fetch_max_wait_ms=100,
        isolation_level=settings.isolation_level,
        fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    try:
        existing = await consumer.topics()
        # topics() reads into a metadata object of its own; Apache Kafka (unlike Tansu) gave the
        # client's bootstrap request no topic, so partitions_for_topic() needs this refresh.
        await refresh_metadata(consumer)
        spec_of: dict[Any, _Spec] = {}
        for spec in specs:
            if spec.topic in existing:
                for p in sorted(consumer.partitions_for_topic(spec.topic) or ()):
                    spec_of[TopicPartition(spec.topic, p)] = spec
        if not spec_of:
            return out
        parts = list(spec_of)
        begin = await consumer.beginning_offsets(parts)
        hint = await consumer.end_offsets(parts)
        lo = {tp: begin[tp] for tp in parts}
        stop: dict[Any, int | None] = {tp: None for tp in parts}  # an explicit end (offset), exclusive
        timed = {tp: s.start.time_ms for tp, s in spec_of.items() if s.start is not None and s.start.time_ms is not None}
        if timed:
            found = await consumer.offsets_for_times(timed)
            for tp, at in found.items():
                # No record at or after the time (some brokers answer offset 0, timestamp -1): start at the
                # end hint; the timestamp filter below keeps whatever lies beyond it.
                lo[tp] = hint[tp] if at is None or at.timestamp < timed[tp] else max(at.offset, lo[tp])
        for tp, s in spec_of.items():
            if s.start is not None and s.start.offset is not None:
                lo[tp] = max(lo[tp], s.start.offset)
            if s.stop is not None and s.stop.offset is not None:
                stop[tp] = s.stop.offset + 1
        pending = {tp for tp in parts if stop[tp] is None or lo[tp] < stop[tp]}
        consumer.assign(parts)
        for tp in pending:
            consumer.seek(tp, lo[tp])
        bounds = {tp: ((s.start.time_ms if s.start else None), (s.stop.time_ms if s.stop else None))
                  for tp, s in spec_of.items()}
        task = progress.add_task(label, total=sum(max(0, min(hint[tp], stop[tp] or hint[tp]) - lo[tp])
                                                  for tp in pending)) if progress else None
        last_progress = time.monotonic()
        while pending:
            position = {tp: await consumer.position(tp) for tp in pending}
            behind = any(position[tp] < hint[tp] for tp in pending)
            batch = await consumer.getmany(*pending, timeout_ms=1000 if behind else 400, max_records=20000)
            n = 0
            for tp, messages in batch.items():
                spec, (since_ms, until_ms), end = spec_of[tp], bounds[tp], stop[tp]
                records = out[tp.topic]
                for m in messages:
                    if (end is not None and m.offset >= end) or (m.offset >= hint[tp] and m.timestamp > began_ms):
                        pending.discard(tp)  # past the window, or written after the read began
                        break
                    n += 1
                    if since_ms is not None and m.timestamp < since_ms:
                        continue
                    if until_ms is not None and m.timestamp > until_ms:
                        continue
                    if spec.keep is not None and not spec.keep(m):
                        continue
                    records.append(Record(tp.topic, tp.partition, m.offset, m.timestamp, m.key, m.value,
                                          tuple(m.headers or ())))
            for tp in list(pending):
                if stop[tp] is not None and await consumer.position(tp) >= stop[tp]:
                    pending.discard(tp)
            if n:
                last_progress = time.monotonic()
                if task is not None:
                    progress.advance(task, n)
            elif not behind and not batch:
                break  # a whole fetch round past every end hint brought nothing: the end of the log
            elif time.monotonic() - last_progress > idle_timeout:
                raise TimeoutError(f"no records for {idle_timeout}s while {len(pending)} partitions are unread")
        if task is not None:
            progress.update(task, completed=max(progress.tasks[task].completed, progress.tasks[task].total))
    finally:
        await consumer.stop()
    return out


# --- the replay core (no Kafka) ------------------------------------------------------------------

@dataclass(slots=True)
class _Event:
    at_us: int
    rank: int
    record: Record
    sid: str | None = None

    @property
    def order(self) -> tuple[int, int, int, int]:
        return (self.at_us, self.rank, self.record.partition, self.record.offset)


def merge(records: Iterable[Record], topics: Topics) -> list[_Event]:
    """Input records in event-time order, ties by topic, partition, offset (each value decoded once)."""
    order = [topics.enterprises, topics.risk, topics.keys, topics.requests, topics.scans, topics.pass_events]
    rank = {name: n for n, name in enumerate(order)}
    when = {topics.requests: "submitted_at", topics.scans: "scanned_at", topics.pass_events: "at"}  # pass events: the clock
    events = []
    for r in records:
        obj = _decode(r.value)
        sid = _request_sid(obj, r.key) if r.topic == topics.requests else None
        events.append(_Event(_event_us(obj, when.get(r.topic, "effective_at"), r.timestamp_ms), rank[r.topic], r, sid))
    events.sort(key=lambda e: e.order)
    return events


class Replayer:
    """Runs log records through a Pipeline the way the worker's agents do, keeping what it produced."""

    def __init__(self, pipeline: Pipeline, *, advance: Callable[[int], None] | None = None) -> None:
        self.pipeline = pipeline
        self.topics = pipeline.topics
        self.advance = advance
        from .handlers import Tables
        self.tables = Tables.empty()                # the worker's tables, all partitions in one
        self.decided, self.serials, self.passes = self.tables.decided, self.tables.serials, self.tables.passes
        self.decisions: dict[str, bytes] = {}      # shipment id -> decision bytes, in event-time order
        self.request_of: dict[str, Record] = {}    # shipment id -> the request that was decided
        self.statuses: dict[str, dict[str, bytes]] = {}  # pass id -> CloudEvents id -> status bytes
        self.reference: list[Record] = []
        self.events = Counter()
        self.dead_letters = 0
        self.repeats = 0
        self.stale = 0  # requests the worker dead-lettered as older than the retention, the log bearing it out
        self.diagnoses = 50  # mismatched decisions re-decided with older reference data (costly: capped)

    # Every input is handled as `streams.app.guarded` does: an unexpected error dead-letters it. A key
    # the ring says signs, and whose private key is not in GC_KEY_DIR, stops the replay (the worker
    # waits for it): the audit cannot reproduce a signature without it.
    def _call(self, handler, r: Record, **kw) -> list[Out]:
        try:
            return handler(r.key, r.value, partition=r.partition, offset=r.offset, timestamp_ms=r.timestamp_ms, **kw)
        except SigningKeyMissing:
            raise
        except Exception as exc:  # noqa: BLE001 — as the live agent does
            return [self.pipeline.dead_letter(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp_ms,
                                              f"internal error: {type(exc).__name__}: {exc}")]

    def load_reference(self, records: Iterable[Record]) -> int:
        """Apply every reference record to the as-of books and the keyring (order does not matter;
        sorted anyway)."""
        t = self.topics
        handlers = self._reference_handlers()
        n = 0
        for r in sorted(records, key=lambda r: (r.topic != t.enterprises, r.topic, r.partition, r.offset)):
            self._call(handlers[r.topic], r)
            self.reference.append(r)
            n += 1
        return n

    def replay(self, records: Iterable[Record], *, held: Iterable[Record] = (),
               stale: set[tuple[int, int]] = frozenset()) -> int:
        """Handle the window's input records in event-time order; returns how many were handled.

        `held`: for a window, the decisions recorded before its end. The pass numbers their approvals
        hold, for shipments the window does not decide, were given by requests before it, so the
        window's allocation starts with them."""
        t, p = self.topics, self.pipeline
        events = merge(records, t)
        self._hold_serials(held, except_for={e.sid for e in events if e.sid is not None})
        decide = self._decider([e for e in events if e.record.topic == t.requests], stale)
        handlers = self._reference_handlers()
        step = 0
        for e in events:
            r = e.record
            self.events[r.topic] += 1
            step += 1
            if self.advance is not None and step % 1000 == 0:
                self.advance(1000)
            if r.topic == t.requests:
                outs = decide(e)
                if outs is None:
                    self.repeats += 1  # answered live with the first decision again: nothing new
                    continue
            elif r.topic == t.scans:
                outs = self._call(p.on_scan, r, tables=self.tables)
            elif r.topic == t.pass_events:  # a clock tick, on the partition the worker handled it
                outs = self._tick(r)
            else:  # a risk/enterprise/key update: its broadcast re-evaluates each partition's passes
                outs = self._call(handlers[r.topic], r)
            for out in outs:
                self._emit(out, r)
        if self.advance is not None and step % 1000:
            self.advance(step % 1000)
        return step

    def _reference_handlers(self) -> dict:
        from .bootstrap import reference_handlers
        return reference_handlers(self.pipeline)

    def _tick(self, r: Record) -> list[Out]:
        try:
            return self.pipeline.on_pass_event(r.value, partition=r.partition, tables=self.tables)
        except SigningKeyMissing:
            raise
        except Exception:  # noqa: BLE001 — the live agent dead-letters it
            self.dead_letters += 1
            return []

    def _decider(self, requests: list[_Event], stale: set[tuple[int, int]]) -> Callable[[_Event], list[Out] | None]:
        """`decide(event)`: the outputs of a request as the worker produced them (None for a repeat of a
        shipment id). The worker decides each partition in offset order, and pass numbers are allocated
        in that order (`models.passes.allocate_pass_id`), so a request is decided only after those before
        it on its partition; the ones decided ahead of the event-time walk wait in `ahead`, which stays as
        small as event time and offset order disagree. A decision depends only on the reference data as
        of the request's time, so deciding ahead changes no byte."""
        first: dict[str, tuple[int, int, int]] = {}
        queues: dict[int, list[_Event]] = defaultdict(list)
        for e in requests:
            queues[e.record.partition].append(e)
            if e.sid is not None:
                pos = e.record.log_position
                if e.sid not in first or pos < first[e.sid]:
                    first[e.sid] = pos
        for queue in queues.values():
            queue.sort(key=lambda e: e.record.offset, reverse=True)  # popped from the end: lowest offset first
        ahead: dict[int, list[Out] | None] = {}

        def decide(event: _Event) -> list[Out] | None:
            queue = queues[event.record.partition]
            while id(event) not in ahead:
                e = queue.pop()
                repeat = e.sid is not None and e.record.log_position != first[e.sid]
                if not repeat and (e.record.partition, e.record.offset) in stale:
                    self.stale += 1  # dead-lettered live, by the clock of its arrival (see stale_requests)
                    ahead[id(e)] = []
                    continue
                ahead[id(e)] = None if repeat else self._call(self.pipeline.on_request, e.record,
                                                              tables=self.tables)
            return ahead.pop(id(event))

        return decide

    def _hold_serials(self, decisions: Iterable[Record], *, except_for: set[str]) -> None:
        for r in decisions:
            obj = _decode(r.value)
            the_pass = obj.get("pass") if obj else None
            sid = obj.get("shipment_id") if obj else None
            if isinstance(the_pass, dict) and isinstance(sid, str) and sid not in except_for:
                self.serials.setdefault(str(the_pass.get("pass_id")), sid.encode())

    def _emit(self, out: Out, r: Record) -> None:
        t = self.topics
        if out.topic == t.pass_events:
            from models.passes import kafka_partition
            partition = out.partition if out.partition is not None else kafka_partition(out.key, self.pipeline.partitions)
            try:
                more = self.pipeline.on_pass_event(out.value, partition=partition, tables=self.tables)
            except SigningKeyMissing:
                raise
            except Exception:  # noqa: BLE001 — the live agent dead-letters it
                self.dead_letters += 1
                return
            for o in more:
                self._emit(o, r)
        elif out.topic == t.decisions:
            sid = out.key.decode()
            if sid not in self.decisions:
                self.decisions[sid] = out.value
                self.request_of[sid] = r
        elif out.topic == t.status:
            ce_id = dict(out.headers).get("ce_id", b"").decode()
            self.statuses.setdefault(out.key.decode(), {})[ce_id] = out.value
        else:
            self.dead_letters += 1

    # --- second opinions, for mismatches only -----------------------------------------------------
    def decide_again(self, request: Record) -> bytes | None:
        """The decision for one request with this replay's books, outside the replay's tables."""
        outs = self._call(self.pipeline.on_request, request, tables=self._scratch())
        return next((o.value for o in outs if o.topic == self.topics.decisions), None)

    def _scratch(self):
        """Tables for a second opinion: this replay's pass numbers held, nothing of it changed."""
        from .handlers import Tables
        return Tables({}, ChainMap({}, self.serials), {}, {})

    def decide_as_known_at(self, request: Record, timestamp_ms: int) -> bytes | None:
        """The decision with only the reference records the log held at `timestamp_ms`."""
        from .bootstrap import reference_handlers, with_fresh_reference

        other = with_fresh_reference(self.pipeline)
        handlers = reference_handlers(other)
        for r in self.reference:
            if r.timestamp_ms <= timestamp_ms:
                try:
                    handlers[r.topic](r.key, r.value, partition=r.partition, offset=r.offset, timestamp_ms=r.timestamp_ms)
                except Exception:  # noqa: BLE001
                    pass
        outs = other.on_request(request.key, request.value, partition=request.partition, offset=request.offset,
                                timestamp_ms=request.timestamp_ms, tables=self._scratch())
        return next((o.value for o in outs if o.topic == self.topics.decisions), None)


# --- comparing with the record ---------------------------------------------------------------------

@dataclass
class Mismatch:
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


def _reason_codes(obj: Any) -> list[str]:
    if not isinstance(obj, dict):
        return []
    if "reasons" in obj:
        return [r.get("code", "?") if isinstance(r, dict) else str(r) for r in obj.get("reasons") or []]
    return [obj["reason"]] if obj.get("reason") else []


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
    obj = _decode(raw)
    return obj if obj is not None else {"raw": raw.decode("utf-8", "replace")}


def _decision_mismatch(kind: str, sid: str, recorded: bytes | None, replayed: bytes | None,
                       where: Record | None = None, explanation: str = "") -> Mismatch:
    rec, rep = _shown(recorded), _shown(replayed)
    pass_id = next((o["pass"]["pass_id"] for o in (rec, rep)
                    if isinstance(o, dict) and isinstance(o.get("pass"), dict) and "pass_id" in o["pass"]), None)
    return Mismatch(kind, sid, pass_id, rec, rep, _reason_codes(rec), _reason_codes(rep),
                    _diff_paths(rec, rep) if rec is not None and rep is not None else [], explanation,
                    where.where() if where else None)


@dataclass
class Comparison:
    mismatches: list[Mismatch] = field(default_factory=list)
    decisions_matched: int = 0
    decisions_recorded: int = 0
    candidates: dict[str, list[Record]] = field(default_factory=dict)  # recorded, no request in the window
    passes_compared: int = 0
    statuses_matched: int = 0
    statuses_recorded: int = 0
    recorded_status: dict[str, list[Record]] = field(default_factory=dict)  # pass id -> records (scope + watched)


def compare(rep: Replayer, decisions: Iterable[Record], statuses: Iterable[Record], *, until_ms: int | None = None,
            full: bool = True, watch: Iterable[str] = ()) -> Comparison:
    """Compare what the replay produced with what the log recorded (see the module doc)."""
    c = Comparison()
    recorded: dict[str, list[Record]] = defaultdict(list)
    for r in decisions:
        sid = r.key.decode("utf-8", "replace") if r.key else (_decode(r.value) or {}).get("shipment_id")
        recorded[str(sid)].append(r)
        c.decisions_recorded += 1
    for sid, body in rep.decisions.items():
        recs = recorded.pop(sid, None)
        if not recs:
            c.mismatches.append(_decision_mismatch(
                "decision_missing", sid, None, body, rep.request_of.get(sid),
                "the request is in the log but no decision for it was recorded (is the worker behind?)"))
            continue
        bad = False
        seen: set[bytes] = set()
        for r in recs:
            if r.value == body or r.value in seen:
                continue
            seen.add(r.value)
            bad = True
            c.mismatches.append(_decision_mismatch("decision_differs", sid, r.value, body, r,
                                                   explain_decision(rep, sid, r)))
        c.decisions_matched += not bad
    for sid, recs in recorded.items():
        if until_ms is None or any(r.timestamp_ms <= until_ms for r in recs):
            c.candidates[sid] = recs
    if full:
        c.mismatches += orphans(c.candidates)
        c.candidates = {}

    scope = set(rep.passes) | (set(rep.statuses) if full else set())
    keep = scope | set(watch)
    by_pass: dict[str, list[Record]] = defaultdict(list)
    for r in statuses:
        if r.key is not None:
            pid = r.key.decode("utf-8", "replace")
            if pid in keep:
                by_pass[pid].append(r)
        else:
            obj = _decode(r.value) or {}
            if obj.get("pass_id") in keep:
                by_pass[obj["pass_id"]].append(r)
    c.recorded_status = dict(by_pass)
    for pid in sorted(scope):
        c.passes_compared += 1
        mine = rep.statuses.get(pid, {})
        theirs: dict[str, list[Record]] = defaultdict(list)
        for r in by_pass.get(pid, ()):
            theirs[r.header("ce_id") or _status_ce_id(pid, _decode(r.value) or {})].append(r)
            c.statuses_recorded += 1
        for ce_id, body in mine.items():
            recs = theirs.pop(ce_id, None)
            if not recs:
                c.mismatches.append(_status_mismatch("status_missing", pid, None, body, None,
                                                     "the replay answers this cause; the log has no such event"))
                continue
            bad = False
            seen: set[bytes] = set()
            for r in recs:
                if r.value != body and r.value not in seen:
                    seen.add(r.value)
                    bad = True
                    c.mismatches.append(_status_mismatch(
                        "status_differs", pid, r.value, body, r,
                        "same cause, another answer: arrival order differed from event time, or the event was altered"))
            c.statuses_matched += not bad
        for ce_id, recs in theirs.items():
            if until_ms is None or any(r.timestamp_ms <= until_ms for r in recs):
                r = recs[0]
                c.mismatches.append(_status_mismatch("status_unexpected", pid, r.value, None, r,
                                                     "recorded, but no input in the window causes it"))
    return c


def _status_mismatch(kind: str, pid: str, recorded: bytes | None, replayed: bytes | None, where: Record | None,
                     explanation: str) -> Mismatch:
    rec, rep = _shown(recorded), _shown(replayed)
    sid = next((o.get("shipment_id") for o in (rec, rep) if isinstance(o, dict) and o.get("shipment_id")), None)
    return Mismatch(kind, sid, pid, rec, rep, _reason_codes(rec), _reason_codes(rep),
                    _diff_paths(rec, rep) if rec is not None and rep is not None else [], explanation,
                    where.where() if where else None)


def orphans(candidates: dict[str, list[Record]]) -> list[Mismatch]:
    out = []
    for sid, recs in candidates.items():
        seen: set[bytes] = set()
        for r in recs:
            if r.value not in seen:
                seen.add(r.value)
                out.append(_decision_mismatch("orphan_decision", sid, r.value, None, r,
                                              "a decision on the topic with no request in the log"))
    return out


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

    obj, mine = _decode(recorded.value), _decode(rep.decisions.get(sid))
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
            return (f"late_reference_data: reproduced without the {n} reference record(s) logged after the decision "
                    f"or less than {seconds:.1f} s before it: an update effective before the request reached the "
                    "worker's books only after the decision (the decision was taken on stale reference data)")
    if not notes:
        notes.append("the rules would not produce the recorded decision (altered or injected)")
    return "; ".join(notes)


# --- the audit -------------------------------------------------------------------------------------

def _counts(rep: Replayer) -> dict:
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


def timeline(rep: Replayer, comparison: Comparison, pass_id: str) -> dict:
    """One pass, replayed and recorded side by side, in event-time order."""
    mine = rep.statuses.get(pass_id, {})
    theirs: dict[str, list[Record]] = defaultdict(list)
    for r in comparison.recorded_status.get(pass_id, ()):
        theirs[r.header("ce_id") or _status_ce_id(pass_id, _decode(r.value) or {})].append(r)
    rows = []
    for ce_id in list(mine) + [k for k in theirs if k not in mine]:
        replayed = _decode(mine.get(ce_id))
        recorded_values = list(dict.fromkeys(r.value for r in theirs.get(ce_id, ())))
        recorded = _decode(recorded_values[0]) if recorded_values else None
        base = replayed or recorded or {}
        if replayed is None:
            match = "recorded_only"
        elif recorded is None:
            match = "replay_only"
        else:
            match = "same" if recorded_values == [mine[ce_id]] else "differs"
        row = {k: base.get(k) for k in ("at", "status", "checkpoint_id", "reason", "dwell_seconds",
                                        "dwell_exceeded", "cause")}
        row["match"] = match
        if match == "differs":
            row["recorded"] = {k: recorded.get(k) for k in ("at", "status", "checkpoint_id", "reason", "dwell_seconds")}
        if base.get("route"):
            row["route"] = base["route"].get("adcodes")
        rows.append(row)
    rows.sort(key=lambda row: (row["at"] or "", row["cause"] or ""))
    state = rep.passes.get(pass_id)
    sid = orjson.loads(state)["shipment_id"] if state else next(
        (row.get("shipment_id") for row in (_decode(mine[k]) for k in mine) if row and row.get("shipment_id")), None)
    decision = _decode(rep.decisions.get(sid)) if sid else None
    return {"pass_id": pass_id, "shipment_id": sid,
            "decision": _summary(decision) if decision else None,
            "final_status": orjson.loads(state)["status"] if state else (rows[-1]["status"] if rows else None),
            "events": rows}


def _summary(d: dict) -> dict:
    p = d.get("pass") if isinstance(d.get("pass"), dict) else None
    return {"shipment_id": d.get("shipment_id"), "decision": d.get("decision"), "priority": d.get("priority"),
            "reasons": _reason_codes(d), "decided_at": d.get("decided_at"),
            "pass_id": p.get("pass_id") if p else None,
            "valid": f"{p.get('valid_from')} → {p.get('valid_until')}" if p else None,
            "route": (p.get("route") or {}).get("adcodes") if p else None}


async def run_replay(settings, *, since: Position | None = None, until: Position | None = None,
                     passes: Iterable[str] = (), progress: bool = False, pipeline: Pipeline | None = None) -> dict:
    """Read, re-decide, compare; the audit report as a JSON-ready dict (`report["ok"]`)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if pipeline is None:
        from .bootstrap import build_pipeline
        pipeline = build_pipeline(settings)
    t = pipeline.topics
    watch = list(dict.fromkeys(passes))
    full = since is None or since.is_beginning
    started = time.perf_counter()
    bar = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                   TimeElapsedColumn(), console=Console(stderr=True), disable=not progress)
    with bar:
        # 1. The inputs of the window, and all reference data up to `until` (as-of histories).
        read = await _read(settings, [_Spec(t.requests, since, until), _Spec(t.scans, since, until),
                                      _Spec(t.risk, None, until), _Spec(t.enterprises, None, until),
                                      _Spec(t.keys, None, until),
                                      _Spec(t.pass_events, since, until, keep=is_clock_tick)],
                           progress=bar, label="reading")
        reference = read[t.risk] + read[t.enterprises] + read[t.keys]
        in_window = [r for r in reference if _inside(r, since)]
        inputs = read[t.requests] + read[t.scans] + in_window + read[t.pass_events]

        # 2. What the log recorded, from the window's start to the end of the log. A window also
        # needs the approvals before it, for the pass numbers held when it begins: the same read.
        out_since = since
        if since is not None and since.offset is not None and not since.is_beginning:
            first = min((r.timestamp_ms for r in inputs), default=None)
            out_since = Position(time_ms=first) if first is not None else since

        def recorded_or_approved(m) -> bool:
            return _inside_msg(m, out_since) or (m.value is not None and b'"approved"' in m.value)

        decision_spec = _Spec(t.decisions, out_since) if full else _Spec(t.decisions, None, keep=recorded_or_approved)
        from .handlers import STALE_REQUEST
        marked = STALE_REQUEST.encode()
        stale_spec = _Spec(t.deadletter, out_since, keep=lambda m: m.value is not None and marked in m.value)
        recorded = await _read(settings, [decision_spec, _Spec(t.status, out_since), stale_spec], progress=bar,
                               label="recorded")
        stale = stale_requests(recorded[t.deadletter], read[t.pass_events], read[t.requests], pipeline.retention)
        until_ms = _until_ms(until, inputs)
        held = () if full else [r for r in recorded[t.decisions] if until_ms is None or r.timestamp_ms <= until_ms]
        recorded[t.decisions] = [r for r in recorded[t.decisions] if _inside(r, out_since)]
        read_done = time.perf_counter()

        task = bar.add_task("replaying", total=len(inputs))
        rep = Replayer(pipeline, advance=lambda n: bar.advance(task, n))
        rep.load_reference(reference)
        rep.replay(inputs, held=held, stale=stale)
        replay_done = time.perf_counter()
        c = compare(rep, recorded[t.decisions], recorded[t.status], until_ms=until_ms, full=full, watch=watch)

        # 3. Decisions recorded in the window whose request came before it: find and re-decide them.
        if c.candidates:
            wanted = {sid.encode() for sid in c.candidates}
            needles = list(wanted)
            before = await _read(settings, [_Spec(t.requests, None, None, keep=lambda m: not _inside_msg(m, since) and (
                m.key in wanted or (m.value is not None and any(s in m.value for s in needles))))],
                progress=bar, label="look-back")
            c.mismatches += _resolve(rep, c, before[t.requests])
    elapsed = time.perf_counter() - started

    decisions, statuses = _counts(rep)
    n_inputs = len(inputs)
    mismatched = {m.pass_id for m in c.mismatches if m.pass_id and m.pass_id in rep.passes}
    timelines = {pid: timeline(rep, c, pid) for pid in watch}
    for pid in sorted(mismatched - set(watch))[:100]:
        timelines[pid] = timeline(rep, c, pid)
    return {
        "ok": not c.mismatches,
        "window": {"since": str(since) if since else "beginning", "until": str(until) if until else "end of log",
                   "topic_prefix": settings.topic_prefix},
        "events": {"requests": rep.events[t.requests], "scans": rep.events[t.scans],
                   "risk": rep.events[t.risk], "enterprises": rep.events[t.enterprises], "keys": rep.events[t.keys],
                   "clock_ticks": rep.events[t.pass_events], "total": n_inputs,
                   "reference_loaded": len(reference)},
        "timing": {"seconds": round(elapsed, 3), "read_seconds": round(read_done - started, 3),
                   "replay_seconds": round(replay_done - read_done, 3),
                   "events_per_second": round(n_inputs / elapsed, 1) if elapsed else None,
                   "replay_events_per_second": round(n_inputs / (replay_done - read_done), 1)
                   if replay_done > read_done else None},
        "decisions": {**decisions, "recorded": c.decisions_recorded, "matched": c.decisions_matched},
        "statuses": {"passes_compared": c.passes_compared, "events_replayed": sum(map(len, rep.statuses.values())),
                     "recorded": c.statuses_recorded, "matched": c.statuses_matched, "by_status": statuses},
        "mismatch_counts": dict(Counter(m.kind for m in c.mismatches)),
        "mismatches": [m.to_dict() for m in c.mismatches],
        "timelines": timelines,
        "replayed_decisions": rep.decisions,  # dropped from the JSON file; kept for callers (determinism)
    }


def stale_requests(dead_letters: Iterable[Record], ticks: Iterable[Record], requests: Iterable[Record],
                   retention: timedelta) -> set[tuple[int, int]]:
    """(partition, offset) of the requests the worker dead-lettered as older than the retention
    whose claim the log bears out: a clock tick on their partition, logged before the dead letter,
    had put the clock more than the retention past the request's time. The worker judged them by
    the clock as they arrived; a replay in event time would sort them before those ticks."""
    from models.tracking import epoch_seconds

    from .handlers import STALE_REQUEST
    clocks: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for tick in ticks:
        clocks[tick.partition].append((tick.timestamp_ms, epoch_seconds(_decode(tick.value)["at"])))
    by_position = {(r.partition, r.offset): r for r in requests}
    found = set()
    for dead in dead_letters:
        obj = _decode(dead.value) or {}
        request = by_position.get((obj.get("partition"), obj.get("offset")))
        if request is None or STALE_REQUEST not in str(obj.get("error")):
            continue
        at = _event_us(_decode(request.value), "submitted_at", request.timestamp_ms) // 1_000_000
        if any(logged <= dead.timestamp_ms and now > at + retention.total_seconds()
               for logged, now in clocks[request.partition]):
            found.add((request.partition, request.offset))
    return found


def is_clock_tick(m) -> bool:
    """A tick of the channel's clock among the internal pass topic's records (the only ones there
    that come from outside the handlers: the rest a replay makes itself)."""
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


def _resolve(rep: Replayer, c: Comparison, requests: list[Record]) -> list[Mismatch]:
    """Re-decide the requests found before the window for decisions recorded inside it."""
    first: dict[str, Record] = {}
    for r in requests:
        sid = _request_sid(_decode(r.value), r.key)
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


class _RateColumn(ProgressColumn):
    def render(self, task):
        from rich.text import Text
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} events/s" if speed else "… events/s", style="cyan")


# --- reports ---------------------------------------------------------------------------------------

def report_json(report: dict) -> bytes:
    body = {k: v for k, v in report.items() if k != "replayed_decisions"}
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _brief(obj: Any) -> str:
    if not isinstance(obj, dict):
        return "—" if obj is None else str(obj)
    if "decision" in obj:
        s = _summary(obj)
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
    from rich.panel import Panel
    from rich.table import Table

    w, ev, tm = report["window"], report["events"], report["timing"]
    console.print(f"[bold]Replay audit[/bold] of {w['topic_prefix']}* from {w['since']} to {w['until']}")
    console.print(f"inputs: {ev['requests']} requests, {ev['scans']} scans, {ev['risk']} risk and "
                  f"{ev['enterprises']} enterprise updates in the window ({ev['reference_loaded']} reference records "
                  f"loaded) — {ev['total']:,} events in {tm['seconds']} s ({tm['events_per_second'] or 0:,.0f} events/s; "
                  f"re-deciding alone {tm['replay_events_per_second'] or 0:,.0f} events/s)")
    d = report["decisions"]
    table = Table("decision", "class", "count", title="Re-decisions")
    for decision, classes in d["by_class"].items():
        for cls, n in classes.items():
            table.add_row(decision, cls, str(n))
    console.print(table)
    console.print(f"decisions: {d['replayed']} re-decided, {d['matched']} proven identical, {d['recorded']} recorded, "
                  f"{d['repeated_requests']} repeated requests, {d['dead_letters']} dead letters")
    if d["rejection_reasons"]:
        console.print("rejection reasons: " + ", ".join(f"{k} {v}" for k, v in d["rejection_reasons"].items()))
    s = report["statuses"]
    console.print(f"statuses: {s['passes_compared']} passes compared, {s['events_replayed']} events replayed, "
                  f"{s['matched']} identical — " + ", ".join(f"{k} {v}" for k, v in s["by_status"].items()))
    mismatches = report["mismatches"]
    if mismatches:
        table = Table("kind", "shipment / pass", "recorded", "replayed", "why", title=f"{len(mismatches)} mismatches",
                      show_lines=True)
        for m in mismatches[:200]:
            who = "\n".join(x for x in (m["shipment_id"], m["pass_id"]) if x)
            why = m["explanation"]
            if m["differing_fields"]:
                why += "\nfields: " + ", ".join(m["differing_fields"][:8])
            table.add_row(f"[red]{m['kind']}[/red]", who, _brief(m["recorded"]), _brief(m["replayed"]), why)
        console.print(table)
        if len(mismatches) > 200:
            console.print(f"… and {len(mismatches) - 200} more (see --json)")
    for pid, tl in report["timelines"].items():
        table = Table("at", "status", "checkpoint", "reason", "dwell s", "cause", "log vs replay",
                      title=f"Pass {pid} ({tl['shipment_id'] or 'unknown shipment'}) — final {tl['final_status']}")
        for row in tl["events"]:
            dwell = "" if row["dwell_seconds"] is None else f"{row['dwell_seconds']:.0f}" + (
                " ⚠" if row["dwell_exceeded"] else "")
            style = "" if row["match"] == "same" else "red"
            table.add_row(row["at"] or "", row["status"] or "", row["checkpoint_id"] or "", row["reason"] or "",
                          dwell, row["cause"] or "", row["match"], style=style)
        if tl["decision"]:
            console.print(Panel(_summary_text(tl["decision"]), title="decision", expand=False))
        console.print(table)
    if report["ok"]:
        console.print("[bold green]OK[/bold green]: every decision and status event is reproduced")
    else:
        counts = ", ".join(f"{k} {v}" for k, v in report["mismatch_counts"].items())
        console.print(f"[bold red]MISMATCH[/bold red]: {counts}")


def _summary_text(s: dict) -> str:
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
    e = html.escape
    w, ev, tm, d, s = report["window"], report["events"], report["timing"], report["decisions"], report["statuses"]
    out = [f"<!doctype html><meta charset=utf-8><title>greenchannel replay audit</title><style>{_CSS}</style>",
           f"<h1>Replay audit <span class={'ok' if report['ok'] else 'err'}>"
           f"{'OK' if report['ok'] else 'MISMATCH'}</span></h1>",
           f"<p>Window {e(w['since'])} → {e(w['until'])}; {ev['total']} input events ({ev['requests']} requests, "
           f"{ev['scans']} scans, {ev['risk']} risk, {ev['enterprises']} enterprise) in {tm['seconds']} s "
           f"({tm['events_per_second']} events/s).</p>",
           "<h2>Re-decisions</h2><table><tr><th>decision<th>class<th>count"]
    for decision, classes in d["by_class"].items():
        for cls, n in classes.items():
            out.append(f"<tr><td>{e(decision)}<td>{e(cls)}<td>{n}")
    out.append(f"</table><p>{d['matched']} of {d['replayed']} decisions proven byte-identical; "
               f"{s['matched']} status events identical over {s['passes_compared']} passes.</p>")
    out.append(f"<h2>Mismatches ({len(report['mismatches'])})</h2>")
    if report["mismatches"]:
        out.append("<table><tr><th>kind<th>shipment / pass<th>recorded<th>replayed<th>why")
        for m in report["mismatches"]:
            rec = e(orjson.dumps(m["recorded"], option=orjson.OPT_INDENT_2).decode()) if m["recorded"] else "—"
            rep = e(orjson.dumps(m["replayed"], option=orjson.OPT_INDENT_2).decode()) if m["replayed"] else "—"
            why = e(m["explanation"]) + ("<br>fields: " + e(", ".join(m["differing_fields"]))
                                         if m["differing_fields"] else "")
            out.append(f"<tr class=bad><td>{e(m['kind'])}<td>{e(m['shipment_id'] or '')}<br>{e(m['pass_id'] or '')}"
                       f"<td><pre>{rec}</pre><td><pre>{rep}</pre><td>{why}")
        out.append("</table>")
    for pid, tl in report["timelines"].items():
        out.append(f"<h2>Pass {e(pid)}</h2>")
        if tl["decision"]:
            out.append(f"<pre>{e(_summary_text(tl['decision']))}</pre>")
        out.append("<table class=tl><tr><th>at<th>status<th>checkpoint<th>reason<th>dwell s<th>cause<th>log vs replay")
        for row in tl["events"]:
            dwell = "" if row["dwell_seconds"] is None else f"{row['dwell_seconds']:.0f}"
            cls = "" if row["match"] == "same" else " class=bad"
            out.append(f"<tr{cls}><td>{e(row['at'] or '')}<td>{e(row['status'] or '')}<td>{e(row['checkpoint_id'] or '')}"
                       f"<td>{e(row['reason'] or '')}<td>{dwell}<td>{e(row['cause'] or '')}<td>{e(row['match'])}")
        out.append(f"</table><p>final status: <b>{e(str(tl['final_status']))}</b></p>")
    return "\n".join(out) + "\n"


# --- rebuilding the database -----------------------------------------------------------------------

class RebuildRefused(RuntimeError):
    pass


async def rebuild_database(settings, database_url: str, *, since: Position | None = None,
                           until: Position | None = None, batch_size: int = 5000, progress: bool = False) -> dict:
    """Project decisions, statuses, risk and enterprises from the log into an empty database, with
    the projector's own batch shape and writes (`streams.projector.shape`, `write`)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from sqlalchemy import func, select
    from sqlmodel import Session

    from models.store.db import init_db, make_engine
    from models.store.tables import Checkpoint, Enterprise, Pass, PassEvent, Region, Shipment

    from .handlers import Topics
    from .projector import shape, write

    tables = (Shipment, Pass, PassEvent, Region, Enterprise, Checkpoint)
    engine = make_engine(database_url)
    try:
        init_db(engine)
        with Session(engine) as session:
            filled = [tb.__tablename__ for tb in tables
                      if session.execute(select(func.count()).select_from(tb)).scalar_one()]
        if filled:
            raise RebuildRefused(f"{database_url} is not empty (rows in {', '.join(filled)}): rebuild needs an empty database")
        t = Topics.with_prefix(settings.topic_prefix)
        started = time.perf_counter()
        bar = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                       TimeElapsedColumn(), console=Console(stderr=True), disable=not progress)
        with bar:
            read = await _read(settings, [_Spec(x, since, until) for x in (t.decisions, t.status, t.risk, t.enterprises)],
                               progress=bar, label="reading")
            # The projector consumes each partition in offset order; across partitions, by arrival.
            rank = {t.decisions: 0, t.status: 1, t.risk: 2, t.enterprises: 3}
            streams = defaultdict(list)
            for records in read.values():
                for r in records:
                    streams[(r.topic, r.partition)].append(r)
            ordered = list(heapq.merge(*(sorted(s, key=lambda r: r.offset) for s in streams.values()),
                                       key=lambda r: (r.timestamp_ms, rank[r.topic], r.partition)))
            task = bar.add_task("projecting", total=len(ordered))
            for i in range(0, len(ordered), batch_size):
                chunk = ordered[i:i + batch_size]
                write(engine, shape(t, chunk).items)  # what the projector skips is skipped here too
                bar.advance(task, len(chunk))
        with Session(engine) as session:
            rows = {tb.__tablename__: session.execute(select(func.count()).select_from(tb)).scalar_one()
                    for tb in tables}
    finally:
        engine.dispose()
    return {"database": database_url, "records": len(ordered), "rows": rows,
            "seconds": round(time.perf_counter() - started, 3)}


# --- one pass's story from the log ------------------------------------------------------------------

async def pass_history(settings, pass_id: str) -> dict | None:
    """Request, decision(s), every status event with its scan and dwell, and the final status."""
    from .handlers import Topics

    t = Topics.with_prefix(settings.topic_prefix)
    pid = pass_id.encode()
    found = await _read(settings, [
        _Spec(t.status, keep=lambda m: m.key == pid or (m.key is None and m.value is not None and pid in m.value)),
        _Spec(t.decisions, keep=lambda m: m.value is not None and pid in m.value),
        _Spec(t.scans, keep=lambda m: m.key == pid or (m.value is not None and pid in m.value)),
    ])
    decisions = [(r, obj) for r in found[t.decisions] if (obj := _decode(r.value))
                 and isinstance(obj.get("pass"), dict) and obj["pass"].get("pass_id") == pass_id]
    statuses = [(r, obj) for r in found[t.status] if (obj := _decode(r.value)) and obj.get("pass_id") == pass_id]
    scans = {}
    for r in found[t.scans]:
        obj = _decode(r.value)
        if obj and (obj.get("pass_id") == pass_id or r.key == pid):
            scans.setdefault(str(obj.get("scan_id")), (r, obj))
    if not decisions and not statuses and not scans:
        return None
    sids = list(dict.fromkeys(obj["shipment_id"] for _, obj in decisions))
    requests = []
    if sids:
        wanted = [s.encode() for s in sids]
        got = await _read(settings, [_Spec(t.requests, keep=lambda m: m.key in wanted or (
            m.value is not None and any(s in m.value for s in wanted)))])
        requests = [(r, obj) for r in got[t.requests] if (obj := _decode(r.value)) and _request_sid(obj, r.key) in sids]
    events, answered = [], set()
    for r, obj in statuses:
        cause = obj.get("cause") or ""
        row = {"at": obj.get("at"), "status": obj.get("status"), "checkpoint_id": obj.get("checkpoint_id"),
               "reason": obj.get("reason"), "dwell_seconds": obj.get("dwell_seconds"),
               "dwell_exceeded": obj.get("dwell_exceeded"), "cause": cause, "logged": r.where()["timestamp"]}
        if cause.startswith("scan:") and cause[5:] in scans:
            answered.add(cause[5:])
            row["scan"] = {k: scans[cause[5:]][1].get(k) for k in ("scan_id", "kind", "scanned_at", "plate")}
        if obj.get("route"):
            row["route"] = obj["route"].get("adcodes")
        events.append(row)
    unanswered = [{k: obj.get(k) for k in ("scan_id", "checkpoint_id", "kind", "scanned_at")}
                  for sid, (r, obj) in scans.items() if sid not in answered]
    dwells = [e["dwell_seconds"] for e in events if e["dwell_seconds"] is not None]
    return {
        "pass_id": pass_id,
        "request": requests[0][1] if requests else None,
        "requested": requests[0][0].where() if requests else None,
        "decisions": [{**_summary(obj), "logged": r.where()} for r, obj in decisions],
        "distinct_decisions": len({r.value for r, _ in decisions}),
        "events": events,
        "unanswered_scans": unanswered,
        "scans": len(scans),
        "reroutes": sum(e["status"] == "rerouted" for e in events),
        "mean_dwell_seconds": round(sum(dwells) / len(dwells), 1) if dwells else None,
        "final_status": events[-1]["status"] if events else None,
    }


def print_pass_history(console, story: dict) -> None:
    from rich.table import Table

    console.print(f"[bold]Pass {story['pass_id']}[/bold] — final status [bold]{story['final_status']}[/bold]")
    req = story["request"]
    if req:
        cargo = ", ".join(f"{c.get('description')} ×{c.get('quantity')} {c.get('unit')}" for c in req.get("cargo") or [])
        console.print(f"request {req.get('shipment_id')} submitted {req.get('submitted_at')} "
                      f"(logged {story['requested']['timestamp']})")
        console.print(f"  {(req.get('shipper') or {}).get('name')} → {(req.get('consignee') or {}).get('name')}; "
                      f"{cargo}; plate {(req.get('vehicle') or {}).get('plate')}")
        console.print(f"  from {req.get('origin')} to {req.get('destination')}, departing {req.get('departure_at')}")
    else:
        console.print("[yellow]no request for this pass in the log[/yellow]")
    for d in story["decisions"]:
        console.print("decision: " + _summary_text(d).replace("\n", "\n  "))
    if story["distinct_decisions"] > 1:
        console.print(f"[red]{story['distinct_decisions']} different decisions name this pass[/red]")
    table = Table("at", "status", "checkpoint", "reason", "dwell s", "scan", "cause")
    for e in story["events"]:
        dwell = "" if e["dwell_seconds"] is None else f"{e['dwell_seconds']:.0f}" + (" ⚠" if e["dwell_exceeded"] else "")
        scan = f"{e['scan']['kind']} {e['scan']['scan_id']}" if e.get("scan") else ""
        reason = e["reason"] or ""
        if e.get("route"):
            reason += ("\n" if reason else "") + "new route " + "→".join(e["route"])
        table.add_row(e["at"] or "", e["status"] or "", e["checkpoint_id"] or "", reason, dwell, scan, e["cause"])
    console.print(table)
    for s in story["unanswered_scans"]:
        console.print(f"[yellow]scan {s['scan_id']} ({s['kind']} at {s['checkpoint_id']}, {s['scanned_at']}) "
                      f"has no status answer in the log[/yellow]")
    console.print(f"{story['scans']} scans, {story['reroutes']} reroutes, mean dwell "
                  f"{story['mean_dwell_seconds'] if story['mean_dwell_seconds'] is not None else '—'} s; "
                  f"final status {story['final_status']}")


# --- filling the log quickly (benchmarks) ------------------------------------------------------------

async def generate_log(settings, n: int, *, seed: int = 2020, outputs: bool = True, progress: bool = False) -> dict:
    """Fill the topics with at least `n` input events from a simulator `Scenario`.

    Requests (the simulator's mix), the scans each approved truck makes along its route, the
    key enterprises, and a province raised to high risk and lowered again every 2,000
    requests. With `outputs`, the decisions and status events a worker would publish are
    computed by the same handlers (in event-time order) and published too, so a replay has a
    record to prove. Sends are batched by the aiokafka producer (linger, large batches).
    """
    from aiokafka import AIOKafkaProducer

    from models.passes import kafka_partition

    from .bootstrap import build_pipeline
    from .broker import ensure_topics
    from .handlers import Tables, Topics
    from .simulator import Scenario, scans_for

    t = Topics.with_prefix(settings.topic_prefix)
    await ensure_topics(settings.connection, t.public() + [t.pass_events], partitions=settings.partitions,
                        replication_factor=settings.replication_factor)
    scenario = Scenario(seed=seed)
    rng = random.Random(seed)
    reference: list[tuple[str, bytes, bytes]] = [
        (t.enterprises, e["credit_code"].encode(), orjson.dumps(e)) for e in scenario.enterprise_entries()]
    provinces = ["430000", "360000", "410000", "340000", "500000", "370000"]
    per_block = 2000
    planned = n // 5 + per_block
    for k in range(0, planned // per_block + 1):
        adcode = provinces[k % len(provinces)]
        high = scenario.start + timedelta(minutes=k * per_block + 600)
        for level, at in (("high", high), ("low", high + timedelta(hours=6))):
            reference.append((t.risk, adcode.encode(),
                              orjson.dumps({"adcode": adcode, "level": level, "effective_at": format_time(at)})))
    pipeline = build_pipeline(settings)
    for i, (topic, key, value) in enumerate(reference):
        (pipeline.on_risk if topic == t.risk else pipeline.on_enterprise)(key, value, partition=0, offset=i,
                                                                          timestamp_ms=0)
    inputs: list[tuple[str, bytes, bytes]] = list(reference)
    count, i, tables = len(reference), 0, Tables.empty()
    while count < n:
        body = scenario.request(i)
        value = orjson.dumps(body)
        key = body["shipment_id"].encode()
        inputs.append((t.requests, key, value))
        count += 1
        # The partition the producer will put it on: pass numbers are allocated there.
        partition = kafka_partition(key, settings.partitions)
        for out in pipeline.on_request(key, value, partition=partition, offset=i, timestamp_ms=0, tables=tables):
            if out.topic == t.decisions:
                decision = orjson.loads(out.value)
                if decision["pass"]:
                    for scan in scans_for(decision, rng, mismatch=rng.random() < 0.02):
                        inputs.append((t.scans, decision["pass"]["pass_id"].encode(), orjson.dumps(scan)))
                        count += 1
        i += 1
    producer = AIOKafkaProducer(**settings.connection.kwargs(), linger_ms=50, max_batch_size=1024 * 1024,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    sent = Counter()
    try:
        async def send_all(messages) -> None:
            pending = []
            for topic, key, value, *headers in messages:
                pending.append(await producer.send(topic, value, key=key, headers=headers[0] if headers else None))
                sent[topic] += 1
                if len(pending) >= 10000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)

        await send_all(inputs)
        if outputs:
            read = await _read(settings, [_Spec(x) for x in (t.requests, t.scans, t.risk, t.enterprises)])
            rep = Replayer(build_pipeline(settings))
            rep.load_reference(read[t.risk] + read[t.enterprises])
            rep.replay(read[t.requests] + read[t.scans] + read[t.risk] + read[t.enterprises])
            made = [(t.decisions, sid.encode(), body) for sid, body in rep.decisions.items()]
            for pid, events in rep.statuses.items():
                for ce_id, body in events.items():
                    made.append((t.status, pid.encode(), body, [("ce_id", ce_id.encode())]))
            await send_all(made)
    finally:
        await producer.stop()
    return {"inputs": count, "requests": i, "sent": dict(sent)}


# --- the commands ----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="POS",
                        help="start of the window: RFC 3339 time (record timestamp) or offset:N (default: beginning)")
    parser.add_argument("--until", metavar="POS",
                        help="end of the window, inclusive: RFC 3339 time or offset:N (default: end of the log now)")
    parser.add_argument("--pass", dest="pass_ids", metavar="PASS_ID", action="append", default=[],
                        help="add this pass's timeline (replayed and recorded) to the report; repeatable")
    parser.add_argument("--json", metavar="FILE", help="write the audit report as JSON to FILE ('-' for stdout)")
    parser.add_argument("--html", metavar="FILE", help="write a static HTML report with a timeline per pass")
    parser.add_argument("--rebuild", metavar="DATABASE_URL",
                        help="instead of auditing, rebuild the database projections from the log into this empty database")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def cmd_replay(settings, args) -> int:
    from rich.console import Console

    err = Console(stderr=True)
    try:
        since, until = parse_position(args.since), parse_position(args.until)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        return 2
    console = Console(stderr=True) if args.json == "-" else Console()
    if args.rebuild:
        try:
            result = asyncio.run(rebuild_database(settings, args.rebuild, since=since, until=until,
                                                  progress=not args.no_progress))
        except RebuildRefused as exc:
            err.print(f"[red]{exc}[/red]")
            return 2
        console.print(f"rebuilt {result['database']} from {result['records']:,} records in {result['seconds']} s: "
                      + ", ".join(f"{k} {v}" for k, v in result["rows"].items()))
        if args.json:
            _write(args.json, orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    try:
        report = asyncio.run(run_replay(settings, since=since, until=until, passes=args.pass_ids,
                                        progress=not args.no_progress))
    except SigningKeyMissing as exc:
        err.print(f"[red]{exc} ({settings.keys_path}): the replay signs what the worker signed, with the same "
                  "keys; give it GC_KEY_DIR with every private key of the ring[/red]")
        return 2
    if args.json:
        _write(args.json, report_json(report))
    if args.html:
        Path(args.html).write_text(report_html(report), encoding="utf-8")
    print_report(console, report)
    return 0 if report["ok"] else 1


def cmd_pass_history(settings, args) -> int:
    from rich.console import Console

    story = asyncio.run(pass_history(settings, args.pass_id))
    console = Console(stderr=True) if getattr(args, "json", None) == "-" else Console()
    if story is None:
        console.print(f"[red]no pass {args.pass_id} in the log[/red]")
        return 1
    if getattr(args, "json", None):
        _write(args.json, orjson.dumps(story, option=orjson.OPT_INDENT_2) + b"\n")
    print_pass_history(console, story)
    return 0


def _write(target: str, data: bytes) -> None:
    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        Path(target).write_bytes(data)
