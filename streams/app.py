"""The Faust application: app → topics → tables → agents, read top to bottom.

Agents are thin: each hands raw messages to `streams.handlers.Pipeline` and sends what it
returns. Values stay raw bytes end to end so a message Faust cannot decode still reaches
our parser, and from there the dead-letter topic, instead of killing the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timezone

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from models.keyring import SigningKeyMissing

from .bootstrap import build_pipeline, reference_handlers
from .connection import Connection
from .compat import (DirectTable, ask_highwaters, learn_partitions, refresh_metadata, seek_before_resume,
                     send_in_partition_transaction, set_fetch_wait)
from .eos import CommitGate
from .handlers import Out, PassHolders, Pipeline, RecordMeta, Tables
from .metrics import CONTENT_TYPE, PrometheusMeter, new_registry, render, sample_lag
from .settings import Settings

__all__ = ["create_app", "load_reference_data", "read_whole_topics", "signed"]

log = logging.getLogger("greenchannel")
KEY_WAIT_SECONDS = 5  # how often a worker waiting for a private key looks into GC_KEY_DIR again


async def load_reference_data(pipeline: Pipeline, settings: Settings) -> int:
    """Read the whole risk, key-enterprise and keys topics into this worker's books and ring.

    Every worker needs all of them, not just its partitions, so this reads outside the
    consumer group; later updates reach each worker through the pass-event broadcast.
    """
    handlers = reference_handlers(pipeline)

    def apply(topic: str, partition: int, m) -> None:
        handlers[topic](m.key, m.value, RecordMeta(topic, partition, m.offset, m.timestamp))

    return await read_whole_topics(settings.connection, list(handlers), apply)


async def read_whole_topics(connection: Connection, names: list[str], apply) -> int:
    """Every record of the topics `names`, outside any consumer group, each handed to
    `apply(topic, partition, record)` in offset order per partition; returns how many."""
    consumer = AIOKafkaConsumer(**connection.kwargs(), enable_auto_commit=False)
    await consumer.start()
    count = 0
    try:
        # Apache Kafka answers the client's bootstrap metadata request (no topic named) with no
        # topics, Tansu with all of them: fetch every topic's metadata before looking these up.
        # (Not `await consumer.topics()`: that reads into a ClusterMetadata of its own and leaves
        # the one partitions_for_topic() answers from empty.)
        await refresh_metadata(consumer)
        parts = [TopicPartition(t, p) for t in names for p in (consumer.partitions_for_topic(t) or ())]
        if not parts:
            return 0
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        pending = {tp for tp, end in ends.items() if end > 0}

        def take(batch) -> None:
            nonlocal count
            for tp, messages in batch.items():
                for m in messages:
                    apply(tp.topic, tp.partition, m)
                count += len(messages)
                if messages and messages[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)

        while pending:
            take(await consumer.getmany(*pending, timeout_ms=1000))
        # Tansu reports the start of a partition's last batch as its end, so the end offsets
        # are a lower bound: read on until a fetch comes back empty.
        while batch := await consumer.getmany(timeout_ms=300):
            take(batch)
    finally:
        await consumer.stop()
    return count


async def signed(handle, *, where, wait: float = KEY_WAIT_SECONDS) -> list[Out]:
    """`handle()`, waiting while the key that must sign is one whose private key is not in the key
    folder `where`: never signed with another key. The handlers write nothing before they sign, so
    trying again is safe; the event, and those behind it in its agent, wait (consumer lag shows it),
    each try reading the folder again."""
    while True:
        try:
            return handle()
        except SigningKeyMissing as missing:
            log.warning("%s (%s): waiting for it, looking again in %s s", missing, where, wait)
            await asyncio.sleep(wait)  # a retry interval: the key is an operator's to copy there


def create_app(settings: Settings) -> faust.App:
    seek_before_resume()  # a worker taking over a backlog processes each record once (streams.compat)
    ask_highwaters()  # a worker taking over recovers its tables whole under exactly_once (streams.compat)
    set_fetch_wait(settings.fetch_wait_ms)
    app = faust.App(
        settings.app_id,
        broker=settings.broker_url,
        broker_credentials=settings.connection.faust_credentials(),
        store=settings.store,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee=settings.processing_guarantee,
        broker_session_timeout=settings.session_timeout,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        datadir=str(settings.data_dir / "faust"),
        producer_linger_ms=1,
        stream_buffer_maxsize=8192,
        consumer_auto_offset_reset="earliest",
    )
    pipeline = build_pipeline(settings)
    names = pipeline.topics
    app.pipeline = pipeline
    meter = pipeline.meter = PrometheusMeter(new_registry())

    # --- topics -------------------------------------------------------------------------------
    def raw_topic(*topic_names: str) -> faust.TopicT:
        return app.topic(*topic_names, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=settings.partitions)

    requests = raw_topic(names.requests)
    scans = raw_topic(names.scans)
    reference = raw_topic(names.risk, names.enterprises, names.keys)
    pass_events = raw_topic(names.pass_events)

    # --- tables -------------------------------------------------------------------------------
    # Keys are ids (text), values the exact bytes published or stored: nothing to re-encode.
    # Typed by key_type/value_type, not a Schema: those also pick the serializers the changelog
    # is written with (str: JSON, bytes: raw), so a restarted worker recovers what was stored.
    # A pass's entries are all on its partition: its request's, its scans' (streams.handlers).
    # Written straight to their stores; the changelog records go out with the event's outputs
    # (streams.compat.DirectTable), on the event's partition.
    changelog: list[tuple[str, bytes, bytes]] = []

    def table(name: str) -> DirectTable:
        return DirectTable(app.Table(name, key_type=str, value_type=bytes, partitions=settings.partitions),
                           changelog)

    passes = table("passes")
    # Pass numbers held: read from the pass states (PassHolders), one changelog write fewer per approval.
    tables = Tables(decided=table("decided"), serials=PassHolders(passes), passes=passes, answers=table("answers"),
                    clocks=table("clock"))

    async def forget_moved(app, moved, **kwargs) -> None:
        """A revoked or newly assigned partition's table is recovered anew from the changelog
        before any of its events is processed: its derived index is rebuilt from that."""
        tables.forget({tp.partition for tp in moved})

    app.on_partitions_revoked.connect(forget_moved)
    app.on_partitions_assigned.connect(forget_moved)

    ready = asyncio.Event()

    @app.task
    async def bootstrap() -> None:
        n = await load_reference_data(pipeline, settings)
        pipeline.withdrawals_in_the_past()  # a replay does not: it applies them in event-time order
        log.info("reference data loaded: %d records", n)
        ready.set()

    @app.task
    async def learn_table_partitions() -> None:
        """`table_route` (the pass view) finds the worker owning a key from the partitions of the
        table's changelog in the main producer's metadata. Under exactly_once that producer never
        writes there (the transactional ones do), so unless asked it may not know the topic and
        the view fails (seen: HTTP 500, "'NoneType' object is not iterable")."""
        topic = passes.table.changelog_topic.get_topic_name()
        for attempt in range(10):
            try:
                await learn_partitions(app, topic)
                return
            except Exception as exc:  # noqa: BLE001 — the topic may not exist yet; try again
                log.warning("no metadata yet for %s (%s); retrying", topic, exc)
                await asyncio.sleep(1 + attempt)  # a retry backoff, not a synchronisation

    async def send_all(outs: list[Out]) -> None:
        """Straight to the producer: the values are bytes already, so Faust's topic layer (its
        serializers and message futures) has nothing to add. Delivery is not awaited here; Faust
        flushes the producer before it commits the offsets these outputs came from."""
        for out in outs:
            await app.producer.send(out.topic, out.key, out.value, out.partition, None, list(out.headers))

    def meta(event) -> RecordMeta:
        m = event.message
        return RecordMeta(m.topic, m.partition, m.offset, int(m.timestamp * 1000))

    def table_writes(event) -> list[Out]:
        """The changelog records of the table writes just made, on the event's partition."""
        writes = [Out(name, key, value, partition=event.message.partition) for name, key, value in changelog]
        changelog.clear()
        return writes

    async def guarded(topic: str, event, handle) -> None:
        """An agent never dies on a message: an unexpected error dead-letters it instead."""
        started = time.perf_counter()
        try:
            outs = await signed(handle, where=settings.keys_path)
            meter.handled(topic, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 — the message is kept, with the error
            log.exception("failed on %s@%s", topic, event.message.offset)
            outs = [pipeline.dead_letter(meta(event), event.key, event.value,
                                         f"internal error: {type(exc).__name__}: {exc}")]
        outs = table_writes(event) + outs  # taken before any await: the next event's are its own
        if exactly_once:  # the event's table writes and outputs, in its partition's transaction
            await send_in_partition_transaction(app, event, outs)
        else:
            await send_all(outs)

    exactly_once = settings.processing_guarantee == "exactly_once"
    gate = CommitGate()

    def in_flight():
        """exactly_once: Faust commits offsets only between events (see streams.eos)."""
        if not exactly_once:
            return contextlib.nullcontext()
        gate.install(app.consumer)
        return gate.event()

    # --- agents -------------------------------------------------------------------------------
    # One event at a time: each event's table writes and outputs are sent (under exactly_once, in
    # its partition's transaction) before the next is handled. A request is decided and its pass
    # issued in one event; a scan is applied in one event on its pass's partition.
    @app.agent(requests)
    async def decide(stream):
        await ready.wait()
        async for event in stream.events():
            async with in_flight():
                await guarded(names.requests, event, lambda: pipeline.on_request(
                    event.key, event.value, meta(event), tables=tables))

    @app.agent(scans)
    async def scan(stream):
        async for event in stream.events():
            async with in_flight():
                await guarded(names.scans, event, lambda: pipeline.on_scan(
                    event.key, event.value, meta(event), tables=tables))

    handlers = reference_handlers(pipeline)

    @app.agent(reference)
    async def reference_data(stream):
        await ready.wait()
        async for event in stream.events():
            handler = handlers[event.message.topic]
            async with in_flight():
                await guarded(event.message.topic, event, lambda: handler(event.key, event.value, meta(event)))

    @app.agent(pass_events)
    async def track(stream):
        """Re-keyed scans and the risk, key-list and keyring broadcasts, on each pass's partition."""
        await ready.wait()
        async for event in stream.events():
            async with in_flight():
                await guarded(names.pass_events, event, lambda: pipeline.on_pass_event(
                    event.value, partition=event.message.partition, tables=tables))

    if settings.clock_seconds > 0:
        @app.timer(settings.clock_seconds)
        async def clock() -> None:
            """The channel's clock: a tick of the time now to each pass partition this worker owns.
            Ticks go through the log, so expiry and retention are replayed as they happened."""
            now = datetime.now(timezone.utc)
            owned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == names.pass_events)
            for out in (pipeline.clock_tick(now, p) for p in owned):  # a few a minute: each delivery awaited
                await app.producer.send_and_wait(out.topic, out.key, out.value, out.partition, None, None)

    # --- web views ------------------------------------------------------------------------------
    @app.page("/passes/{pass_id}/")
    @app.table_route(table=passes.table, match_info="pass_id")
    async def pass_view(web, request, pass_id: str):
        """A pass's live state, answered by the worker that owns its partition."""
        raw = passes.get(pass_id)
        if raw is None:
            return web.json({"error": f"no pass {pass_id}"}, status=404)
        state = orjson.loads(raw)
        state.pop("scans", None)  # answers kept inside the state by a worker before 0.4
        return web.json(state)

    @app.task
    async def consumer_lag() -> None:
        """gc_consumer_lag per assigned partition: its high watermark less the consumer's position."""
        async def lags() -> dict:
            consumer = app.consumer
            return {(tp.topic, tp.partition): max(0, consumer.highwater(tp) - (await consumer.position(tp) or 0))
                    for tp in consumer.assignment()}
        await sample_lag(meter.lag, lags)

    @app.page("/metrics")
    async def metrics_view(web, request):
        """The worker's series in the Prometheus text format."""
        return web.bytes(render(meter.registry), content_type=CONTENT_TYPE)

    @app.page("/keys/")
    async def keys_view(web, request):
        """This worker's signing keyring now: each key's times and status, which one signs, and
        whether its private key is in GC_KEY_DIR (a worker without it waits: see `signed`)."""
        return web.json({"keys": pipeline.decider.keyring.rows(datetime.now(timezone.utc))})

    @app.page("/checkpoints/")
    async def checkpoints_view(web, request):
        """Live waiting time at each checkpoint this worker tracks."""
        return web.json({"checkpoints": pipeline.board.snapshot()})

    return app

