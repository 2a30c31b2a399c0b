"""Reading the log for the audit: positions, records as read, and the merge into event-time order.

`read_log` reads topic ranges outside any consumer group, so live workers are not disturbed;
`merge` orders a window's inputs as the module doc of `streams.audit` describes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from models.records import effective_time, format_time, parse_time

from ..wire import request_sid, status_ce_id

if TYPE_CHECKING:  # the decision core is imported when a command runs, not when the CLI parses arguments
    from ..handlers import RecordMeta, Topics

__all__ = [
    "Position",
    "parse_position",
    "Record",
    "Spec",
    "read_log",
    "Event",
    "merge",
    "decode",
    "event_us",
    "recorded_by_cause",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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

    @property
    def meta(self) -> RecordMeta:
        """Where the record was read, as the handlers take it."""
        from ..handlers import RecordMeta

        return RecordMeta(self.topic, self.partition, self.offset, self.timestamp_ms)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        return None

    def where(self) -> dict:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": format_time(_EPOCH + timedelta(milliseconds=self.timestamp_ms)),
        }


def decode(value: bytes | None) -> dict | None:
    """A record's value as a JSON object, None when it is not one."""
    if value is None:
        return None
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def event_us(obj: dict | None, field_name: str, timestamp_ms: int) -> int:
    """An input's event time in µs: its `field_name` time; for reference entries, their effective
    time as the handlers read it (`models.records.effective_time`: the record time when they have
    none); else (unreadable) the record time."""
    if obj is not None:
        try:
            at = effective_time(obj, timestamp_ms) if field_name == "effective_at" else parse_time(obj.get(field_name))
            return (at - _EPOCH) // _US
        except ValueError:
            pass
    return timestamp_ms * 1000


def recorded_by_cause(pid: str, records: Iterable[Record]) -> dict[str, list[Record]]:
    """A pass's recorded status events by CloudEvents id (computed as the worker does when the header is missing)."""
    theirs: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        theirs[r.header("ce_id") or status_ce_id(pid, str((decode(r.value) or {}).get("cause", "")))].append(r)
    return theirs


# --- reading the log -----------------------------------------------------------------------------


@dataclass
class Spec:
    """One topic range to read, and which of its records to keep."""

    topic: str
    start: Position | None = None  # None: the beginning of the topic
    stop: Position | None = None  # None: the end of the log when reading starts (else inclusive)
    keep: Callable[[Any], bool] | None = None


async def read_log(
    settings, specs: list[Spec], *, progress=None, label: str = "reading", idle_timeout: float = 60.0
) -> dict[str, list[Record]]:
    """Read topic ranges outside any consumer group (assign + seek), up to the end of the log.

    The end is where a fetch round past the broker's end offset brings nothing more (records
    stamped after the read began end a partition early): the embedded Tansu broker reports
    the base offset of a partition's last batch as its end offset, one batch short, so the
    reported end offsets are only hints.
    """
    from aiokafka import AIOKafkaConsumer

    from ..worker.compat import refresh_metadata

    out: dict[str, list[Record]] = {s.topic: [] for s in specs}
    began_ms = int(time.time() * 1000)
    consumer = AIOKafkaConsumer(
        **settings.connection.kwargs(),
        enable_auto_commit=False,
        group_id=None,
        client_id="greenchannel-replay",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        isolation_level=settings.isolation_level,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        existing = await consumer.topics()
        # topics() reads into a metadata object of its own; Apache Kafka (unlike Tansu) gave the
        # client's bootstrap request no topic, so partitions_for_topic() needs this refresh.
        await refresh_metadata(consumer)
        spec_of = _partitions(consumer, specs, existing)
        if spec_of:
            reading = _Reading(consumer, spec_of, out, began_ms)
            await reading.seek()
            await reading.run(progress, label, idle_timeout)
    finally:
        await consumer.stop()
    return out


def _partitions(consumer, specs: list[Spec], existing) -> dict[Any, Spec]:
    """Each partition of the specs' topics that exist, with its spec."""
    from aiokafka import TopicPartition

    spec_of: dict[Any, Spec] = {}
    for spec in specs:
        if spec.topic in existing:
            for p in sorted(consumer.partitions_for_topic(spec.topic) or ()):
                spec_of[TopicPartition(spec.topic, p)] = spec
    return spec_of


class _Reading:
    """One read under way: where each partition starts and stops, and the records kept so far."""

    def __init__(self, consumer, spec_of: dict[Any, Spec], out: dict[str, list[Record]], began_ms: int) -> None:
        self.consumer, self.spec_of, self.out, self.began_ms = consumer, spec_of, out, began_ms
        self.parts = list(spec_of)
        self.bounds = {
            tp: ((s.start.time_ms if s.start else None), (s.stop.time_ms if s.stop else None))
            for tp, s in spec_of.items()
        }

    async def seek(self) -> None:
        """Each partition's first offset (its beginning, an offset or the first record at a time),
        its explicit end (an offset, exclusive), and the partitions left to read."""
        consumer, parts, spec_of = self.consumer, self.parts, self.spec_of
        begin = await consumer.beginning_offsets(parts)
        hint = self.hint = await consumer.end_offsets(parts)
        lo = self.lo = {tp: begin[tp] for tp in parts}
        stop: dict[Any, int | None] = {tp: None for tp in parts}
        self.stop = stop
        timed = {
            tp: s.start.time_ms for tp, s in spec_of.items() if s.start is not None and s.start.time_ms is not None
        }
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
        self.pending = {tp for tp in parts if stop[tp] is None or lo[tp] < stop[tp]}
        consumer.assign(parts)
        for tp in self.pending:
            consumer.seek(tp, lo[tp])

    async def run(self, progress, label: str, idle_timeout: float) -> None:
        """Fetch rounds until every partition is past its end (see `read_log`)."""
        consumer, pending, hint, stop, lo = self.consumer, self.pending, self.hint, self.stop, self.lo
        task = (
            progress.add_task(label, total=sum(max(0, min(hint[tp], stop[tp] or hint[tp]) - lo[tp]) for tp in pending))
            if progress
            else None
        )
        last_progress = time.monotonic()
        while pending:
            position = {tp: await consumer.position(tp) for tp in pending}
            behind = any(position[tp] < hint[tp] for tp in pending)
            batch = await consumer.getmany(*pending, timeout_ms=1000 if behind else 400, max_records=20000)
            n = self._take(batch)
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

    def _take(self, batch) -> int:
        """Keep a fetch round's records inside the window; how many were inside the partitions' ranges."""
        n = 0
        for tp, messages in batch.items():
            spec, (since_ms, until_ms), end = self.spec_of[tp], self.bounds[tp], self.stop[tp]
            records = self.out[tp.topic]
            for m in messages:
                if (end is not None and m.offset >= end) or (m.offset >= self.hint[tp] and m.timestamp > self.began_ms):
                    self.pending.discard(tp)  # past the window, or written after the read began
                    break
                n += 1
                if since_ms is not None and m.timestamp < since_ms:
                    continue
                if until_ms is not None and m.timestamp > until_ms:
                    continue
                if spec.keep is not None and not spec.keep(m):
                    continue
                records.append(
                    Record(tp.topic, tp.partition, m.offset, m.timestamp, m.key, m.value, tuple(m.headers or ()))
                )
        return n


# --- event-time order ----------------------------------------------------------------------------


@dataclass(slots=True)
class Event:
    """An input record at its event time, with its rank among topics (and its shipment id, for a request)."""

    at_us: int
    rank: int
    record: Record
    sid: str | None = None

    @property
    def order(self) -> tuple[int, int, int, int]:
        return (self.at_us, self.rank, self.record.partition, self.record.offset)


def merge(records: Iterable[Record], topics: Topics) -> list[Event]:
    """Input records in event-time order, ties by topic, partition, offset (each value decoded once)."""
    order = [topics.enterprises, topics.risk, topics.keys, topics.requests, topics.scans, topics.pass_events]
    rank = {name: n for n, name in enumerate(order)} | {topics.gateway_requests: order.index(topics.requests)}
    when = {
        topics.requests: "submitted_at",
        topics.gateway_requests: "submitted_at",
        topics.scans: "scanned_at",
        topics.pass_events: "at",
    }  # pass events: the clock
    events = []
    for r in records:
        obj = decode(r.value)
        sid = request_sid(obj, r.key) if r.topic in topics.request_topics else None
        events.append(Event(event_us(obj, when.get(r.topic, "effective_at"), r.timestamp_ms), rank[r.topic], r, sid))
    events.sort(key=lambda e: e.order)
    return events
