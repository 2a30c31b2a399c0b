"""The worker consumer's fetch wait: a setting here, 1,500 ms hard-coded in Faust 0.15.

The fetch wait is how long a broker may hold a fetch that finds no new records. Apache Kafka
answers as soon as records arrive, so there it only paces idle polls; the embedded Tansu holds
each fetch for the whole wait even when records arrive meanwhile, so on Tansu every consumer hop
of the pipeline (request → decision → pass event → status) waited up to that long.
"""

from __future__ import annotations

import functools

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

__all__ = ["install"]


def install(fetch_wait_ms: int) -> None:
    """Make Faust's worker consumer use `fetch_wait_ms` (this process; idempotent)."""
    create = AIOKafkaConsumerThread._create_worker_consumer
    create = getattr(create, "__wrapped__", create)

    @functools.wraps(create)
    def create_worker_consumer(self, transport):
        consumer = create(self, transport)
        # Read by AIOKafkaConsumer.start(), which builds its fetcher from it: set before that.
        consumer._fetch_max_wait_ms = fetch_wait_ms
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer
