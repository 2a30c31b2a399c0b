"""The gateway's one Kafka producer: each accepted request onto the gateway's requests topic."""

from __future__ import annotations

from typing import Protocol

from aiokafka import AIOKafkaProducer

__all__ = ["Publisher", "KafkaPublisher"]


class Publisher(Protocol):
    async def publish(self, shipment_id: str, value: bytes) -> None:
        """Send the request keyed by its shipment id; return once the broker has it (raise if not)."""


class KafkaPublisher:
    """Requests keyed by the channel's shipment id (so each lands on the partition the worker
    allocates its pass on), acks=all, each awaited: a 202 means the broker has the request."""

    def __init__(self, connection, topic: str) -> None:
        self.connection, self.topic = connection, topic
        self.producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        # A resend (after a timeout) may duplicate a record: the worker answers a shipment id once.
        self.producer = AIOKafkaProducer(**self.connection.kwargs(), acks="all", linger_ms=2)
        await self.producer.start()
        await self.producer.partitions_for(self.topic)  # its metadata now, not on the first firm's request

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def publish(self, shipment_id: str, value: bytes) -> None:
        if self.producer is None:
            raise RuntimeError("the publisher is not started")
        await self.producer.send_and_wait(self.topic, value, key=shipment_id.encode())
