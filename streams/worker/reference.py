"""Whole topics, read outside any consumer group: the reference data every worker loads at start.

Every worker needs all of the risk, key-enterprise and keys topics, not just its partitions; the
operators' commands read whole topics the same way.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from ..connection import Connection
from ..dispatch import Given, handle, handlers
from ..handlers import Pipeline, RecordMeta, Tables
from ..settings import Settings
from .compat import refresh_metadata

__all__ = ["load_reference_data", "read_whole_topics"]


async def load_reference_data(pipeline: Pipeline, settings: Settings) -> int:
    """Read the whole risk, key-enterprise and keys topics into this worker's books and ring.

    Every worker needs all of them, not just its partitions, so this reads outside the
    consumer group; later updates reach each worker through the pass-event broadcast.
    """
    t, table, given = pipeline.topics, handlers(pipeline), Given(Tables.empty())

    def apply(topic: str, partition: int, m) -> None:  # its broadcast is not sent: this worker's books only
        handle(pipeline, table, m.key, m.value, RecordMeta(topic, partition, m.offset, m.timestamp), given)

    return await read_whole_topics(settings.connection, [t.risk, t.enterprises, t.keys], apply)


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
