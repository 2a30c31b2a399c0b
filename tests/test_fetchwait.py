"""streams.fetchwait: the worker's consumer takes its fetch wait from the settings.

Broker-free: the consumer is built, never started. The effect on latency is measured by
`make bench` (latency rows), not here.
"""

from __future__ import annotations

import inspect

import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams.fetchwait import install


async def worker_consumer():
    app = faust.App("gc-test-fetchwait", broker="kafka://127.0.0.1:1")
    return app.consumer._thread._create_worker_consumer(app.transport)


async def test_worker_consumer_uses_the_setting():
    install(25)
    install(40)  # installing again replaces the value, it does not stack wrappers
    consumer = await worker_consumer()
    try:
        assert consumer._fetch_max_wait_ms == 40
    finally:
        await consumer.stop()
    # the premise: Faust passes its own constant, so without this the setting would be ignored
    source = inspect.getsource(AIOKafkaConsumerThread._create_worker_consumer.__wrapped__)
    assert "fetch_max_wait_ms=1500" in source

