"""What a worker's agents, tasks and views share: its `Runtime`, and how one event is handled.

Each event's handler runs through `Runtime.guarded`: it waits for a missing private key (`signed`),
dead-letters an unexpected error, and sends the event's table writes and outputs, under
exactly_once in its partition's transaction, inside the commit gate (`Runtime.in_flight`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import faust

from models.keyring import SigningKeyMissing
from models.records import parse_time

from ..dispatch import WAITS, Given, Handler, handle, handlers
from ..handlers import Out, Pipeline, RecordMeta, ReferenceBehind, Tables
from ..metrics import PrometheusMeter
from ..settings import Settings
from .compat import (
    already_in_a_transaction,
    partitions_of,
    persist_delivered,
    raw_producer,
    send_in_partition_transaction,
    settle_on_commit,
)
from .eos import CommitGate

__all__ = ["Runtime", "meta", "signed", "on_partition"]

log = logging.getLogger("greenchannel")
KEY_WAIT_SECONDS = 5  # how often a worker waiting for a private key looks into GC_KEY_DIR again


@dataclass
class Runtime:
    """One worker's shared state: its app, core pipeline, tables and meter, the changelog records
    its table writes leave pending (`DirectTable`), the commit gate, and `ready` (reference data loaded)."""

    app: faust.App
    settings: Settings
    pipeline: Pipeline
    tables: Tables
    meter: PrometheusMeter
    changelog: list[tuple[str, bytes, bytes]]
    gate: CommitGate = field(default_factory=CommitGate)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exactly_once: bool = field(init=False)
    dispatch: dict[str, Handler] = field(init=False)
    # The answer topics (decisions, status, dead letters) found with the worker's partition count
    # (`learn_answer_partitions`): an event's answers go on its own partition, no partitioner.
    named: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.exactly_once = self.settings.processing_guarantee == "exactly_once"
        self.dispatch = handlers(self.pipeline)  # the audit replay runs the same table

    def now(self, partition: int) -> datetime | None:
        """The channel's time on `partition`: the worker's wall clock (UTC). A worker with no wall
        clock of its own (GC_CLOCK_SECONDS=0: an operator's simulated clock ticks the log, as the
        demo's day in 2020 does) takes its partition's clock as last ticked: None before the first
        tick. Never a time a firm or a checkpoint wrote."""
        wall = datetime.now(UTC)
        if self.settings.clock_seconds > 0:
            return wall
        ticked = self.tables.clocks.get(str(partition))
        return None if ticked is None else min(wall, parse_time(ticked.decode()))

    def decision_now(self, partition: int) -> datetime:
        """The channel's time a request on `partition` is judged by (`now`), bounded by the wall
        clock before a simulated clock's first tick: a firm's claim is never later than either
        (`streams.handlers.decision_time`)."""
        now = self.now(partition)
        return datetime.now(UTC) if now is None else now

    def in_flight(self):
        """exactly_once: Faust commits offsets only between events (see streams.worker.eos)."""
        if not self.exactly_once:
            settle_on_commit(self.app.consumer)  # RocksDB tables: what is delivered is unmarked (compat)
            return contextlib.nullcontext()
        self.gate.install(self.app.consumer, self.app.producer)
        return self.gate.event()

    async def guarded(self, event, given: Given) -> None:
        """The event through the one dispatch and guard (`streams.dispatch.handle`: an agent never
        dies on a message, an unexpected error dead-letters it), with what the worker gives it
        (`given`), and its table writes and outputs sent (under exactly_once, in its partition's
        transaction). A missing private key is waited for; a partition ahead of this worker's books
        has the reference topics read again first (`signed`)."""
        pipeline, message = self.pipeline, event.message
        topic, partition = message.topic, message.partition
        if self.exactly_once and already_in_a_transaction(self.app, event):
            log.warning(
                "%s/%s offset %s: its records are in a transaction already; not handled again",
                topic,
                partition,
                message.offset,
            )
            return
        started = time.perf_counter()
        record = RecordMeta(topic, partition, message.offset, int(message.timestamp * 1000))
        try:  # at once, as `signed` first tries it: no coroutine for the common case
            outs = handle(pipeline, self.dispatch, event.key, event.value, record, given)
        except WAITS:
            outs = await signed(
                lambda: handle(pipeline, self.dispatch, event.key, event.value, record, given),
                where=self.settings.keys_path,
                refresh=self.read_reference_again,
            )
        self.meter.handled(topic, time.perf_counter() - started)
        # Taken before any await: the next event's are its own.
        outs = self.table_writes(event) + on_partition(outs, partition, self.named)
        if self.exactly_once:  # in its partition's transaction, delivered before that commits
            await send_in_partition_transaction(self.app, event, outs)
        else:
            await self.send_all(outs)

    async def learn_answer_partitions(self) -> None:
        """Name the answer topics whose partition count is the worker's (`named`). Another count
        (a topic made by hand) keeps Kafka's partitioner for that topic, with a warning: the
        event's partition may not exist there."""
        names = self.pipeline.topics
        named = set()
        for topic in (names.decisions, names.status, names.deadletter):
            try:
                count = len(await partitions_of(self.app, topic))
            except Exception:  # noqa: BLE001 — no metadata: the partitioner, as before
                log.warning("%s: partitions unknown, its records are partitioned by key", topic, exc_info=True)
                continue
            if count == self.settings.partitions:
                named.add(topic)
            else:
                log.warning(
                    "%s has %d partitions, the worker's topics %d: its records are partitioned by key",
                    topic,
                    count,
                    self.settings.partitions,
                )
        self.named = frozenset(named)

    async def read_reference_again(self) -> None:
        """Read the whole reference topics into this worker's books again (`ReferenceBehind`)."""
        from .reference import load_reference_data

        n = await load_reference_data(self.pipeline, self.settings)
        log.info("reference data read again: %d records", n)

    def table_writes(self, event) -> list[Out]:
        """The changelog records of the table writes just made, on the event's partition."""
        writes = [Out(name, key, value, partition=event.message.partition) for name, key, value in self.changelog]
        self.changelog.clear()
        return writes

    async def send_all(self, outs: list[Out]) -> None:
        """Straight to aiokafka's producer: the values are bytes already, so Faust's topic layer
        (its serializers and message futures) and its send (a signal, a header check) have nothing
        to add. Delivery is not awaited here; Faust flushes the producer before it commits the
        offsets these outputs came from. A changelog record of a table on RocksDB has its offset
        persisted there once delivered."""
        send = raw_producer(self.app).send
        for out in outs:
            future = await send(out.topic, out.value, key=out.key, partition=out.partition, headers=list(out.headers))
            persist_delivered(self.app, out.topic, out.partition, future)


def on_partition(outs: list[Out], partition: int, named: frozenset[str]) -> list[Out]:
    """`outs` with each answer (a record of a topic in `named` with no partition of its own) on
    `partition`, the event's: the one Kafka's partitioner gives its key when the event's producer
    partitioned by the same key (a request by its shipment id; its pass number is allocated there,
    `models.passes.allocate_pass_id`; a scan and a pass event are handled on their pass's
    partition). See the README: Where a pass lives."""
    return [
        Out(out.topic, out.key, out.value, out.headers, partition)
        if out.partition is None and out.topic in named
        else out
        for out in outs
    ]


def meta(event) -> RecordMeta:
    """The record metadata of a Faust event, as the handlers take it."""
    m = event.message
    return RecordMeta(m.topic, m.partition, m.offset, int(m.timestamp * 1000))


async def signed(handle, *, where, wait: float = KEY_WAIT_SECONDS, refresh=None) -> list[Out]:
    """`handle()`. A live worker's handlers no longer raise SigningKeyMissing (a request whose key's
    private half is not in `where` is rejected `no_signing_key`); the wait for it stays only as a
    guard: the handlers write nothing before they sign, so trying again is safe. When the worker's
    books know less than the event's partition has applied (`ReferenceBehind`), `refresh()` reads
    the reference topics again first."""
    reads = 0
    while True:
        try:
            return handle()
        except SigningKeyMissing as missing:
            log.warning("%s (%s): waiting for it, looking again in %s s", missing, where, wait)
            await asyncio.sleep(wait)  # a retry interval: the key is an operator's to copy there
        except ReferenceBehind as behind:
            if refresh is None:
                raise
            log.warning("%s: reading the reference topics again", behind)
            if reads:  # read once already and still behind: the records are still on their way
                await asyncio.sleep(wait)  # a retry interval, as for a key
            reads += 1
            try:
                await refresh()
            except Exception:  # noqa: BLE001 — the broker away: read again after the interval
                log.exception("reading the reference topics again failed")
