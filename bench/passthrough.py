"""The limit: a raw aiokafka consume→produce passthrough, no Faust.

`python -m bench.passthrough BOOTSTRAP IN_TOPIC OUT_TOPIC GROUP` copies every record of
IN_TOPIC (key, value, headers unchanged) to OUT_TOPIC until stopped, in a consumer group
like a worker, with the same producer linger as the Faust app (1 ms).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.connection import Connection
from streams.settings import Settings


async def passthrough(bootstrap: str, source: str, target: str, group: str) -> None:
    connection = Connection.from_settings(Settings(broker_url=f"kafka://{bootstrap}"))  # GC_KAFKA_* from the env
    consumer = AIOKafkaConsumer(
        source,
        **connection.kwargs(),
        group_id=group,
        enable_auto_commit=True,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=1024 * 1024,
    )
    producer = AIOKafkaProducer(**connection.kwargs(), linger_ms=1)
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            for records in batch.values():
                for r in records:
                    await producer.send(target, r.value, key=r.key, headers=list(r.headers or ()))
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(passthrough(*sys.argv[1:5]))
