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

import faust

from models.keyring import SigningKeyMissing

from ..handlers import Out, Pipeline, RecordMeta, Tables
from ..metrics import PrometheusMeter
from ..settings import Settings
from .compat import send_in_partition_transaction
from .eos import CommitGate

__all__ = ["Runtime", "meta", "signed"]

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

    def __post_init__(self) -> None:
        self.exactly_once = self.settings.processing_guarantee == "exactly_once"

    def in_flight(self):
        """exactly_once: Faust commits offsets only between events (see streams.worker.eos)."""
        if not self.exactly_once:
            return contextlib.nullcontext()
        self.gate.install(self.app.consumer)
        return self.gate.event()

    async def guarded(self, event, handle) -> None:
        """`handle()` for one event, and its table writes and outputs sent (under exactly_once, in its
        partition's transaction). An agent never dies on a message: an unexpected error dead-letters it."""
        pipeline, meter, topic = self.pipeline, self.meter, event.message.topic
        started = time.perf_counter()
        try:
            outs = await signed(handle, where=self.settings.keys_path)
            meter.handled(topic, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 — the message is kept, with the error
            log.exception("failed on %s@%s", topic, event.message.offset)
            outs = [
                pipeline.dead_letter(
                    meta(event), event.key, event.value, f"internal error: {type(exc).__name__}: {exc}"
                )
            ]
        outs = self.table_writes(event) + outs  # taken before any await: the next event's are its own
        if self.exactly_once:  # the event's table writes and outputs, in its partition's transaction
            await send_in_partition_transaction(self.app, event, outs)
        else:
            await self.send_all(outs)

    def table_writes(self, event) -> list[Out]:
        """The changelog records of the table writes just made, on the event's partition."""
        writes = [Out(name, key, value, partition=event.message.partition) for name, key, value in self.changelog]
        self.changelog.clear()
        return writes

    async def send_all(self, outs: list[Out]) -> None:
        """Straight to the producer: the values are bytes already, so Faust's topic layer (its
        serializers and message futures) has nothing to add. Delivery is not awaited here; Faust
        flushes the producer before it commits the offsets these outputs came from."""
        for out in outs:
            await self.app.producer.send(out.topic, out.key, out.value, out.partition, None, list(out.headers))


def meta(event) -> RecordMeta:
    """The record metadata of a Faust event, as the handlers take it."""
    m = event.message
    return RecordMeta(m.topic, m.partition, m.offset, int(m.timestamp * 1000))


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
