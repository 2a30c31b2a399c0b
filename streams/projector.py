"""`greenchannel projector`: the database projections, a batch sink on plain aiokafka.

A projector reads the decisions, statuses, risk levels and key-enterprise list in one consumer
group, `{GC_APP_ID}-projector`: several projectors share the partitions. Each fetched batch
(thousands of records) is shaped (`shape`), written with `models.store.db.project_batch` — executemany
upserts, one transaction — off the event loop, and only then are its offsets committed. That
is at least once: a batch read again after a crash rewrites the same rows, every upsert being
keyed by the stream's own keys and each status's CloudEvents id. On Apache Kafka with
exactly_once the projector reads `read_committed`, so the outputs of an aborted worker
transaction never reach the database; on Tansu (no transactions) `read_uncommitted`.

A record it cannot use (not a JSON object, a field missing or of the wrong type, a risk or
enterprise update the worker dead-letters) is logged and skipped, never retried: dead-lettering
is the worker's job, the projector only mirrors outputs. A database it cannot reach is retried,
and nothing is committed before the batch is written. `streams.audit.rebuild_database` uses
the same `shape` and `write`, so a rebuild from the log skips what the live projection skipped.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlmodel import Session

from models.records import Unparseable, format_time, load_object, parse_enterprise, parse_risk
from models.store.db import init_db, make_engine, project_batch
from routing import Gazetteer

from .handlers import Topics
from .metrics import metrics_app, new_registry
from .settings import Settings
from .topics import ensure_topics
from .web import start_site

__all__ = ["Item", "Shaped", "Written", "shape", "write", "Projector", "run_projector", "group_id"]

log = logging.getLogger("greenchannel.projector")

KINDS = ("decisions", "statuses", "risks", "enterprises")  # project_batch's arguments


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}-projector"


# --- the batch shape ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """What `project_batch` takes of one record, and where the record was (for the log)."""

    kind: str  # one of KINDS
    row: Any  # the message; (ce_id, message) for a status
    where: str


@dataclass(slots=True)
class Shaped:
    items: list[Item] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "where: why" of each record not projected


def shape(topics: Topics, records: Iterable) -> Shaped:
    """Records (anything with topic, partition, offset, value and headers: an aiokafka
    ConsumerRecord, a replay Record), in order, as items; the unusable ones as skipped."""
    out = Shaped()
    for r in records:
        where = f"{r.topic}/{r.partition}@{r.offset}"
        try:
            kind, row = _usable(topics, r)
        except Unparseable as exc:
            out.skipped.append(f"{where}: {exc}")
            continue
        out.items.append(Item(kind, row, where))
    return out


def _usable(topics: Topics, r) -> tuple[str, Any]:
    if r.topic == topics.risk:  # what the worker dead-letters is not projected
        return "risks", _as_of(
            parse_risk(load_object(r.value), timestamp_ms=_timestamp_ms(r), is_region=Gazetteer.default().names_region)
        )
    if r.topic == topics.enterprises:
        return "enterprises", _as_of(parse_enterprise(load_object(r.value), timestamp_ms=_timestamp_ms(r)))
    if r.topic == topics.decisions:
        return "decisions", load_object(r.value)
    if r.topic == topics.status:
        return "statuses", (ce_id(r), load_object(r.value))
    raise Unparseable(f"{r.topic} is not a projected topic")


def _timestamp_ms(r) -> int:
    """The record time in ms: a replay Record's `timestamp_ms`, an aiokafka record's `timestamp`."""
    ts = getattr(r, "timestamp_ms", None)
    return r.timestamp if ts is None else ts


def _as_of(record) -> dict:
    return {**asdict(record), "effective_at": format_time(record.effective_at)}


def ce_id(r) -> str:
    """The record's CloudEvents id (the status history's key), else its place in the log."""
    for name, value in r.headers or ():
        if name == "ce_id" and value:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return f"{r.topic}/{r.partition}/{r.offset}"


# --- writing -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Written:
    rows: int = 0
    skipped: list[str] = field(default_factory=list)


def write(engine: Engine, items: list[Item]) -> Written:
    """The items in one `project_batch` transaction. A record the database cannot take (a field
    missing, a value of the wrong type) fails the transaction: the batch is halved until that
    record is alone, and it is skipped. Any other error (the database unreachable) is raised."""
    try:
        with Session(engine) as session:
            project_batch(session, **{k: [i.row for i in items if i.kind == k] for k in KINDS})
        return Written(len(items))
    except Exception as exc:  # noqa: BLE001 — sorted just below
        if not bad_record(exc) or not items:
            raise
        if len(items) == 1:
            return Written(0, [f"{items[0].where}: {type(exc).__name__}: {exc}"[:500]])
    half = len(items) // 2
    first, second = write(engine, items[:half]), write(engine, items[half:])
    return Written(first.rows + second.rows, first.skipped + second.skipped)


def bad_record(exc: Exception) -> bool:
    """Whether the error lies with a record rather than with the database."""
    if isinstance(exc, sa_exc.DBAPIError):
        if isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError)):
            return True
        # A value the driver cannot bind; but not PostgreSQL's class 42 (an undefined table or
        # column, a missing privilege: the schema's fault, not the record's).
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return isinstance(exc, sa_exc.ProgrammingError) and not sqlstate.startswith("42")
    return isinstance(exc, (KeyError, TypeError, ValueError, AttributeError, IndexError, sa_exc.StatementError))


# --- the group member ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Stats:
    records: int = 0  # written
    skipped: int = 0
    batches: int = 0

    def __str__(self) -> str:
        return f"{self.records} records written, {self.skipped} skipped, {self.batches} batches"


class _Revocation(ConsumerRebalanceListener):
    """Partitions leave only between batches: a batch being written is committed first."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    async def on_partitions_revoked(self, revoked) -> None:
        try:  # bounded: a database retrying for long must not stall the whole group
            async with asyncio.timeout(10):
                async with self.projector.lock:
                    pass
        except TimeoutError:
            log.warning("partitions revoked while a batch is still being written: it will be written again")

    async def on_partitions_assigned(self, assigned) -> None:
        names = " ".join(sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
        log.info("projector assigned %d partitions: %s", len(assigned), names)


class ProjectorMetrics:
    """The projector's series: records written by kind, batch time, lag per partition."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = new_registry()
        self.records = Counter(
            "gc_projected_records", "Records projected into the database, by topic", ["topic"], registry=self.registry
        )
        self.seconds = Histogram(
            "gc_projector_batch_seconds", "Time to write and commit one batch", registry=self.registry
        )
        self.lag = Gauge(
            "gc_consumer_lag",
            "Records not yet projected, per partition",
            ["topic", "partition"],
            registry=self.registry,
        )

    def batch(self, consumer: AIOKafkaConsumer, batch: dict, seconds: float) -> None:
        self.seconds.observe(seconds)
        for tp, records in batch.items():
            self.records.labels(tp.topic).inc(len(records))
            end = consumer.highwater(tp)
            if end is not None:
                self.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - records[-1].offset - 1))


class Projector:
    """One member of the projector group: fetch a batch, write it, commit its offsets; again."""

    def __init__(self, settings: Settings, *, batch_size: int = 5000, poll_ms: int = 500) -> None:
        self.settings, self.batch_size, self.poll_ms = settings, batch_size, poll_ms
        self.topics = Topics.with_prefix(settings.topic_prefix)
        self.stats = Stats()
        self.metrics = ProjectorMetrics()
        self.lock = asyncio.Lock()
        self._reported = time.monotonic()

    def subscription(self) -> list[str]:
        t = self.topics
        return [t.decisions, t.status, t.risk, t.enterprises]

    def consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        session_ms = int(s.session_timeout * 1000)
        return AIOKafkaConsumer(
            **s.connection.kwargs(),
            group_id=group_id(s),
            client_id="greenchannel-projector",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=s.isolation_level,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=min(3000, session_ms // 3),
            fetch_max_wait_ms=s.fetch_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )

    async def run(self, stop: asyncio.Event) -> Stats:
        """Until `stop` is set; the batch in hand is written and committed first."""
        engine = make_engine(self.settings.database_url)
        try:
            await asyncio.to_thread(init_db, engine)  # the schema at head, as the worker did
            await self._consume(engine, stop)
        finally:
            engine.dispose()
        return self.stats

    async def _consume(self, engine: Engine, stop: asyncio.Event) -> None:
        consumer = self.consumer()
        consumer.subscribe(self.subscription(), listener=_Revocation(self))
        await consumer.start()
        log.info(
            "projector in group %s at %s, into %s",
            group_id(self.settings),
            self.settings.bootstrap,
            engine.url.render_as_string(hide_password=True),
        )
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=self.poll_ms, max_records=self.batch_size)
                if batch:
                    started = time.perf_counter()
                    await self._project(consumer, engine, batch, stop)
                    self.metrics.batch(consumer, batch, time.perf_counter() - started)
        finally:
            await consumer.stop()

    async def _project(self, consumer: AIOKafkaConsumer, engine: Engine, batch: dict, stop: asyncio.Event) -> None:
        shaped = {tp: shape(self.topics, records) for tp, records in batch.items()}
        delay = 1.0
        while True:
            async with self.lock:
                owned = {tp: records for tp, records in batch.items() if tp in consumer.assignment()}
                if not owned:  # revoked meanwhile: their next owner projects them
                    return
                try:
                    written = await asyncio.to_thread(write, engine, [i for tp in owned for i in shaped[tp].items])
                except Exception as exc:  # noqa: BLE001 — the database, not a record: try again
                    log.warning("database write failed (%s: %s); retrying in %.0f s", type(exc).__name__, exc, delay)
                else:
                    await self._commit(consumer, owned)
                    self._count(written, [s for tp in owned for s in shaped[tp].skipped])
                    return
            if await _stopped(stop, delay):  # nothing committed: read again after a restart
                return
            delay = min(2 * delay, 30.0)

    @staticmethod
    async def _commit(consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list]) -> None:
        try:
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
        except KafkaError as exc:  # a rebalance took the partitions: their next owner rewrites the rows
            log.warning("offsets not committed (%s); the rows will be written again, to the same values", exc)

    def _count(self, written: Written, unusable: list[str]) -> None:
        for why in unusable + written.skipped:
            log.warning("skipped %s", why)
        self.stats.records += written.rows
        self.stats.skipped += len(unusable) + len(written.skipped)
        self.stats.batches += 1
        log.debug("batch of %d records written", written.rows)
        if time.monotonic() - self._reported >= 10:
            self._reported = time.monotonic()
            log.info("projector: %s so far", self.stats)


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


def run_projector(settings: Settings, *, batch_size: int = 5000) -> int:
    """`greenchannel projector`: run until SIGTERM or SIGINT, then report what was written."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> Stats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        projector = Projector(settings, batch_size=batch_size)
        if settings.metrics_port:
            site = await start_site(
                metrics_app(projector.metrics.registry), settings.metrics_bind, settings.metrics_port
            )
            log.info("projector metrics at http://%s:%d/metrics", settings.metrics_bind, site.addresses[0][1])
        # A topic missing at subscription would be seen only at the next metadata refresh (minutes).
        await ensure_topics(
            settings.connection,
            projector.subscription(),
            partitions=settings.partitions,
            replication_factor=settings.replication_factor,
        )
        return await projector.run(stop)

    log.info("projector stopped: %s", asyncio.run(main()))
    return 0
