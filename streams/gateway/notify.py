"""Telling each firm what happened to its own requests and passes: webhooks and server-sent events.

Two readers of the decisions and status topics, because they answer different questions:
- the **webhook feed** reads in the gateway's consumer group (`<app id>-gateway`): each event once
  across the gateway's processes. Every event of a firm with a webhook becomes a `WebhookDelivery`
  row (unique per firm and event, so a record read twice is one delivery), committed before the
  offsets; the **deliverer** POSTs due rows, signed (models.firms.webhook_signature), and retries a
  failure with a doubling backoff;
- the **live feed** reads every partition from the end, with no group: each gateway process tells
  the event streams (`GET /v1/events`) it serves, whichever process the firm's browser reached.

A firm is known by the shipment id alone (`gw:<firm>:<its own id>`): no lookup decides whose an event is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from models.firms import channel_shipment_id, split_channel_id, webhook_signature
from models.records import GATEWAY_PREFIX
from models.store.tables import Firm, GatewayRequest, WebhookDelivery

from ..worker.compat import refresh_metadata

__all__ = ["Envelope", "envelope_of", "Hub", "Feed", "Deliverer", "store_deliveries", "retry_after"]

log = logging.getLogger("greenchannel.gateway")
MAX_ATTEMPTS = 10
_GATEWAY_KEY = GATEWAY_PREFIX.encode()


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event for one firm, as webhooks and event streams carry it."""

    firm_id: str
    event_id: str
    kind: str  # decision | status | dead_letter
    shipment_id: str  # the firm's own
    pass_id: str | None
    data: dict

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "type": self.kind,
                "shipment_id": self.shipment_id,
                "pass_id": self.pass_id,
                "data": self.data,
            }
        )


def envelope_of(kind: str, value: bytes | None, headers, position: str) -> Envelope | None:
    """The envelope of a decision, status or dead-letter record, or None: not JSON, or not a
    gateway firm's."""
    try:
        data = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return None
    if kind == "dead_letter":
        return _dead_letter(data)
    if not isinstance(data, dict) or not isinstance(data.get("shipment_id"), str):
        return None
    owner = split_channel_id(data["shipment_id"])
    if owner is None:
        return None
    firm_id, client_id = owner
    ce = next((v.decode() for k, v in headers or () if k == "ce_id" and v), None)
    if kind == "decision":
        pass_id = (data.get("pass") or {}).get("pass_id")
        event_id = f"decision:{data['shipment_id']}"
    else:
        pass_id = data.get("pass_id")
        event_id = ce or f"status:{position}"
    return Envelope(firm_id, event_id, kind, client_id, pass_id, data | {"shipment_id": client_id})


def _dead_letter(data) -> Envelope | None:
    """A request of the gateway's the worker could not take (its key is the channel's id): the
    firm is told why, not shown the record (it has it)."""
    if not isinstance(data, dict) or not str(data.get("topic", "")).endswith("gateway.requests"):
        return None
    owner = split_channel_id(data.get("key") or "")
    if owner is None:
        return None
    firm_id, client_id = owner
    told = {"shipment_id": client_id, "error": str(data.get("error"))[:512], "at": data.get("at")}
    return Envelope(firm_id, f"dead_letter:{data['key']}", "dead_letter", client_id, None, told)


def retry_after(attempts: int, base: float) -> float | None:
    """Seconds until the next try after `attempts` failed ones; None: give up."""
    return None if attempts >= MAX_ATTEMPTS else min(base * 2 ** (attempts - 1), 3600.0)


# --- the live feed: per firm, the event streams open now ------------------------------------------


@dataclass
class Hub:
    """Each firm's open event streams, and each pass's (the drivers' pages); a stream that falls 1,000
    events behind is closed (its page reconnects and reads the state anew)."""

    streams: dict[str, set[asyncio.Queue]] = field(default_factory=lambda: defaultdict(set))
    passes: dict[str, set[asyncio.Queue]] = field(default_factory=lambda: defaultdict(set))  # by pass id
    # Set once the live feed has its position at the end of every partition: a stream opened
    # after that misses nothing that happens after it opened.
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def open(self, firm_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self.streams[firm_id].add(queue)
        return queue

    def close(self, firm_id: str, queue: asyncio.Queue) -> None:
        self.streams[firm_id].discard(queue)

    def open_pass(self, pass_id: str) -> asyncio.Queue:
        """A stream of one pass's events (a driver's page, streams.gateway.driver)."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self.passes[pass_id].add(queue)
        return queue

    def close_pass(self, pass_id: str, queue: asyncio.Queue) -> None:
        self.passes[pass_id].discard(queue)
        if not self.passes[pass_id]:
            del self.passes[pass_id]

    def tell(self, envelope: Envelope) -> None:
        for queue in list(self.streams.get(envelope.firm_id, ())):
            if not _put(queue, envelope):
                self.close(envelope.firm_id, queue)
        for queue in list(self.passes.get(envelope.pass_id or "", ())):
            if not _put(queue, envelope):
                self.close_pass(envelope.pass_id or "", queue)


def _put(queue: asyncio.Queue, envelope: Envelope) -> bool:
    """False when the queue is full: its stream is told to end (None) and is to be closed."""
    try:
        queue.put_nowait(envelope)
        return True
    except asyncio.QueueFull:
        with contextlib.suppress(asyncio.QueueFull):
            queue.get_nowait()
            queue.put_nowait(None)  # the end: the stream closes
        return False


# --- reading the topics ------------------------------------------------------------------------------


class Feed:
    """A reader of the decision and status topics handing each batch's envelopes to `take`: in the
    consumer `group` from its committed offsets, committed after `take` returns; or (no group) every
    partition from the end."""

    def __init__(
        self,
        connection,
        topics,
        *,
        group: str | None,
        isolation: str,
        take: Callable,
        ready: asyncio.Event | None = None,
    ) -> None:
        self.kinds = {topics.decisions: "decision", topics.status: "status", topics.deadletter: "dead_letter"}
        self.connection, self.group, self.isolation, self.take = connection, group, isolation, take
        self.consumer: AIOKafkaConsumer | None = None
        self.ready = ready  # set once positioned (no group: at the end of every partition)

    async def run(self) -> None:
        kwargs = dict(enable_auto_commit=False, isolation_level=self.isolation)
        if self.group is not None:
            self.consumer = AIOKafkaConsumer(*self.kinds, **self.connection.kwargs(), group_id=self.group,
                                             auto_offset_reset="earliest", **kwargs)  # fmt: skip
            await self.consumer.start()
        else:
            self.consumer = AIOKafkaConsumer(**self.connection.kwargs(), **kwargs)
            await self.consumer.start()
            await self._at_the_end()
        if self.ready is not None:
            self.ready.set()
        try:
            while True:
                batch = await self.consumer.getmany(timeout_ms=1000, max_records=1000)
                envelopes = [
                    e
                    for tp, records in batch.items()
                    for r in records
                    if self._maybe_ours(tp.topic, r.key)
                    and (
                        e := envelope_of(
                            self.kinds[tp.topic], r.value, r.headers, f"{tp.topic}:{tp.partition}:{r.offset}"
                        )
                    )
                ]
                if envelopes:
                    await self.take(envelopes)
                if self.group and batch:
                    await self.consumer.commit()
        finally:
            await self.consumer.stop()

    def _maybe_ours(self, topic: str, key: bytes | None) -> bool:
        """Whether a record may be a gateway firm's, from its key alone: a decision and a dead
        letter of the gateway's requests are keyed by the channel's shipment id (`gw:…`), so the
        rest of the country's records are not decoded. A status is keyed by its pass: decoded."""
        return self.kinds[topic] == "status" or (key is not None and key.startswith(_GATEWAY_KEY))

    async def _at_the_end(self) -> None:
        """Every partition of the topics assigned and positioned at its end, now."""
        await refresh_metadata(self.consumer)  # Apache Kafka's bootstrap answer names no topic
        parts = [TopicPartition(t, p) for t in self.kinds for p in sorted(self.consumer.partitions_for_topic(t) or ())]
        self.consumer.assign(parts)
        await self.consumer.seek_to_end(*parts)
        for tp in parts:
            await self.consumer.position(tp)


def store_deliveries(engine: Engine, envelopes: Iterable[Envelope], now: datetime) -> int:
    """A delivery row for each envelope of a firm with a webhook (once per firm and event); a dead
    letter is also kept on its request, which will have no decision."""
    envelopes = list(envelopes)
    with Session(engine) as s:
        for e in envelopes:
            if e.kind == "dead_letter" and (
                row := s.get(GatewayRequest, channel_shipment_id(e.firm_id, e.shipment_id))
            ):
                row.dead_letter = e.data["error"]
                s.add(row)
        firms = {f.firm_id for f in s.exec(select(Firm).where(col(Firm.firm_id).in_({e.firm_id for e in envelopes})))
                 if f.webhook_url}  # fmt: skip
        wanted = [e for e in envelopes if e.firm_id in firms]
        have = set()
        if wanted:
            q = select(WebhookDelivery.firm_id, WebhookDelivery.event_id).where(
                col(WebhookDelivery.event_id).in_({e.event_id for e in wanted})
            )
            have = set(s.exec(q))
        new = {(e.firm_id, e.event_id): e for e in wanted if (e.firm_id, e.event_id) not in have}
        for e in new.values():
            s.add(
                WebhookDelivery(
                    firm_id=e.firm_id,
                    event_id=e.event_id,
                    kind=e.kind,
                    shipment_id=e.shipment_id,
                    pass_id=e.pass_id,
                    body=e.body().decode(),
                    next_at=now,
                )
            )
        s.commit()
    return len(new)


# --- delivering the webhooks ----------------------------------------------------------------------


class Deliverer:
    """POSTs each due delivery to its firm's webhook; 2xx is delivered, anything else is tried again
    after `retry_after` (base `retry_s`), MAX_ATTEMPTS at most."""

    def __init__(self, engine: Engine, *, retry_s: float = 5.0, now=lambda: datetime.now(UTC)) -> None:
        self.engine, self.retry_s, self.now = engine, retry_s, now
        self.wake = asyncio.Event()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                due = await asyncio.to_thread(self._due)
                for delivery, url, secret in due:
                    error = await self._post(http, url, secret, delivery)
                    await asyncio.to_thread(self._record, delivery.id, error)
                if not due:
                    self.wake.clear()
                    wait = await asyncio.to_thread(self._until_next)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), timeout=wait)

    def _due(self) -> list[tuple[WebhookDelivery, str, str]]:
        with Session(self.engine) as s:
            q = (
                select(WebhookDelivery, Firm.webhook_url, Firm.webhook_secret)
                .join(Firm, col(Firm.firm_id) == col(WebhookDelivery.firm_id))
                .where(col(WebhookDelivery.delivered_at).is_(None), col(WebhookDelivery.next_at) <= self.now())
                .order_by(col(WebhookDelivery.next_at), col(WebhookDelivery.id))
                .limit(50)
            )
            return [(d, url, secret) for d, url, secret in s.exec(q) if url and secret]

    def _until_next(self) -> float:
        with Session(self.engine) as s:
            q = select(WebhookDelivery.next_at).where(col(WebhookDelivery.delivered_at).is_(None),
                                                       col(WebhookDelivery.next_at).is_not(None))  # fmt: skip
            first = s.exec(q.order_by(col(WebhookDelivery.next_at)).limit(1)).first()
        if first is None:
            return 60.0
        return min(60.0, max(0.05, (first - self.now()).total_seconds()))

    async def _post(self, http: aiohttp.ClientSession, url: str, secret: str, d: WebhookDelivery) -> str | None:
        body = d.body.encode()
        headers = {
            "Content-Type": "application/json",
            "Greenchannel-Event-Id": d.event_id,
            "Greenchannel-Signature": webhook_signature(secret, int(time.time()), body),
        }
        try:
            async with http.post(url, data=body, headers=headers, allow_redirects=False) as r:
                return None if 200 <= r.status < 300 else f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"[:500]

    def _record(self, delivery_id: int | None, error: str | None) -> None:
        with Session(self.engine) as s:
            d = s.get(WebhookDelivery, delivery_id)
            if d is None:
                return
            d.attempts += 1
            now = self.now()
            if error is None:
                d.delivered_at, d.next_at, d.last_error = now, None, None
            else:
                wait = retry_after(d.attempts, self.retry_s)
                d.last_error = error if wait is not None else f"{error}; gave up after {d.attempts} attempts"
                d.next_at = None if wait is None else now + timedelta(seconds=wait)
            s.add(d)
            s.commit()
