"""Making the channel's topics on any broker (`greenchannel topics`, the worker, the projector, the
dashboard and the development tools alike)."""

from __future__ import annotations

import asyncio
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from .connection import Connection

__all__ = ["ensure_topics"]


async def ensure_topics(
    connection: Connection, names: list[str], *, partitions: int, replication_factor: int = 1
) -> dict[str, int]:
    """Create the topics that do not exist yet (an existing topic is left as it is); returns each
    topic's partition count."""
    admin = AIOKafkaAdminClient(**connection.kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, partitions, replication_factor) for n in names if n not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
        # A topic just created may be described before its partitions have leaders (Apache Kafka
        # answers with an error and no partitions): ask again until each one has them.
        deadline = time.monotonic() + 30
        while True:
            described = await admin.describe_topics(names)
            counts = {t["topic"]: len(t["partitions"]) for t in described}
            if all(t.get("error_code", 0) == 0 and t["partitions"] for t in described) or time.monotonic() > deadline:
                return counts
            await asyncio.sleep(0.2)  # polling the topics' metadata, with a deadline
    finally:
        await admin.close()
