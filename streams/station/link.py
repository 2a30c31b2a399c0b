"""The station process and its link to the broker: a consumer of the decisions, status events and
keys into the store, a forwarder publishing the outbox in order (each scan marked sent once the broker
acknowledged it), a probe of the connection, and the clock; what the page asks goes through it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from models.keyring import Keyring
from models.records import MAX_MESSAGE_BYTES, Unparseable, format_time, normalise_plate, parse_scan, parse_time

from ..handlers import Topics, cloudevent_headers
from ..settings import Settings
from ..web import Hub
from .checks import check, keyring_of
from .freshness import VIEWS, freshness, stale_warning
from .store import Store

__all__ = ["Link", "Station", "NEVER_SENDABLE", "unsendable", "NOTE_FRESH_EVERY", "FRESHNESS_EVERY"]

log = logging.getLogger("greenchannel.station")

# What the broker (or the producer, before sending) says of a scan itself: sending it again can never
# succeed, so the forwarder sets it aside and goes on with the queue. Every other error (the broker
# away, credentials, ACLs) concerns every scan alike: the head waits, the page says offline and why.
NOTE_FRESH_EVERY = 10.0  # seconds: how often the store notes a view's freshness (a write; ages are minutes)
FRESHNESS_EVERY = 5.0  # seconds: how often open pages hear the views' ages when nothing else changes
NEVER_SENDABLE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, CorruptRecordException)


def unsendable(item) -> str | None:
    """Why an outbox item can never be sent, found without the broker: over the message limit or
    refused by the worker's own rules (an item recorded by a station before it checked them), else None."""
    if len(item["body"]) > MAX_MESSAGE_BYTES:
        return f"too_large: the scan is {len(item['body'])} bytes, more than {MAX_MESSAGE_BYTES}"
    try:
        parse_scan(orjson.loads(item["body"]))
    except (Unparseable, ValueError, TypeError) as exc:
        return f"refused by the input limits: {exc}"
    return None


@dataclass
class Link:
    """What the page shows of the connection: reachable or not, and why not."""

    online: bool = False
    error: str | None = None
    since: float = field(default_factory=time.time)

    def set(self, online: bool, error: str | None = None) -> bool:
        changed = online != self.online
        if changed:
            self.since = time.time()
        self.online, self.error = online, error
        return changed


class Station:
    """The station process: store, keys, the broker links (consumer, forwarder, probe) and a clock."""

    producer = AIOKafkaProducer  # what the forwarder publishes with (a stand-in in the unit tests)

    def __init__(
        self,
        settings: Settings,
        checkpoint_ids: list[str],
        store: Store,
        keys: Keyring | dict,
        *,
        clock_start: datetime | None = None,
        dwell_target: int = 900,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.ids = checkpoint_ids
        self.store = store
        self.keys = keyring_of(keys)
        self.topics = Topics.with_prefix(settings.topic_prefix)
        self.hub = Hub()
        self.link = Link()
        self.dwell_target = dwell_target
        self._offset = (clock_start - datetime.now(UTC)) if clock_start else timedelta(0)
        # Freshness (streams/station/freshness.py) is of the real time: `wall`, the consumer's own
        # clock (aiokafka stamps its fetches with time.time()), not the station's replayed one.
        self.wall = wall
        self.fresh_as_of: dict[str, float | None] = {**dict.fromkeys(VIEWS), **store.fresh_as_of()}
        self._noted = {v: at for v, at in self.fresh_as_of.items() if at is not None}
        self._partition_fresh: dict = {}
        self._told_freshness = 0.0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    # --- what the page asks -------------------------------------------------------------------------
    def check(self, checkpoint_id: str, token: str | None, plate: str | None, driver_id: str | None = None) -> dict:
        """The verdict (streams/station/checks.py), and beside it how old the view it rests on is:
        `stale_view` and what to tell the officer when a view is past its limit."""
        verdict = check(
            self.store,
            self.keys,
            checkpoint_id=self._here(checkpoint_id),
            at=self.now(),
            token=token,
            plate=plate,
            driver_id=driver_id,
        )
        fresh = self.freshness()
        warning = stale_warning(fresh)
        return {**verdict, "freshness": fresh, "stale_view": warning is not None, "stale_warning": warning}

    def freshness(self) -> dict:
        return freshness(self.fresh_as_of, self.wall())

    def scan(
        self, kind: str, checkpoint_id: str, pass_id: str, plate: str | None = None, token: str | None = None
    ) -> dict:
        """Record an arrival or departure in the outbox (the forwarder publishes it). ValueError, and
        nothing recorded, for a scan the worker would refuse (README "Input limits")."""
        given = {"kind": kind, "checkpoint_id": checkpoint_id, "pass_id": pass_id, "plate": plate, "token": token}
        for name, value in given.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
        if kind not in ("arrival", "departure"):
            raise ValueError("kind must be arrival or departure")
        checkpoint_id = self._here(checkpoint_id)
        before = self.store.arrival(pass_id, checkpoint_id)
        plate = normalise_plate(plate) if plate else (before["plate"] if before else None)
        if not plate or not pass_id:
            raise ValueError("a scan needs the pass and the plate")
        at = self.now()
        body = {
            "scan_id": f"{checkpoint_id}-{uuid.uuid4().hex[:20]}",
            "checkpoint_id": checkpoint_id,
            "pass_id": pass_id,
            "plate": plate,
            "kind": kind,
            "scanned_at": format_time(at),
        }
        if token:
            body["token"] = token
        _within_limits(body)
        self.store.record(body)
        self._wake.set()
        self.publish()
        dwell = None
        if kind == "departure" and before is not None and before["kind"] == "arrival":
            dwell = round((at - parse_time(before["scanned_at"])).total_seconds(), 1)
        return {**body, "dwell_seconds": dwell, "dwell_exceeded": dwell is not None and dwell > self.dwell_target}

    def _here(self, checkpoint_id: str | None) -> str:
        if not checkpoint_id:
            return self.ids[0]
        if checkpoint_id not in self.ids:
            raise ValueError(f"this station is {', '.join(self.ids)}, not {checkpoint_id}")
        return checkpoint_id

    def state(self) -> dict:
        return {
            "checkpoints": self.store.checkpoint_names(),
            "now": format_time(self.now()),
            "online": self.link.online,
            "error": self.link.error,
            "queued": self.store.queued(),
            "set_aside": self.store.set_aside_scans(),
            "dwell_target": self.dwell_target,
            "present": self.store.present(),
            "recent": self.store.recent(),
            "arrivals": self.store.expected(self.now()),
            "freshness": self.freshness(),
        }

    def publish(self) -> None:
        self._told_freshness = self.wall()
        if self.hub.subscribers:
            self.hub.publish("state", self.state())

    def tell_freshness(self) -> None:
        """Open pages hear the views' ages every FRESHNESS_EVERY seconds (their own clocks count between)."""
        if self.wall() - self._told_freshness >= FRESHNESS_EVERY:
            self._told_freshness = self.wall()
            if self.hub.subscribers:
                self.hub.publish("freshness", self.freshness())

    # --- the broker ----------------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(c) for c in (self._consume(), self._forward(), self._probe())]
        for task in self._tasks:
            task.add_done_callback(_fatal)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _started(self, make):
        """A started aiokafka client, retried until the broker answers."""
        while True:
            client = make()
            try:
                await client.start()
                return client
            except KafkaError as exc:
                self._offline(exc)
                await client.stop()
                await asyncio.sleep(1)

    def _offline(self, exc: Exception) -> None:
        if self.link.set(False, f"{type(exc).__name__}: {exc}"):
            self.publish()

    async def _consume(self) -> None:
        s = self.settings
        consumer = await self._started(
            lambda: AIOKafkaConsumer(
                self.topics.decisions,
                self.topics.status,
                self.topics.keys,
                **s.connection.kwargs(),
                group_id=f"{s.app_id}-station-{'+'.join(sorted(self.ids))}-{self.store.uid}",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level=s.isolation_level,
            )
        )
        try:
            await self.read(consumer)
        finally:
            await consumer.stop()

    async def read(self, consumer: AIOKafkaConsumer) -> None:
        """Take what `consumer` reads of decisions, statuses and keys into the store, for good,
        committing after each batch."""
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            if not batch:
                await self.note_caught_up(consumer)
                self.tell_freshness()
                continue
            await self._take_in_order(consumer, batch)
            await self.note_caught_up(consumer)
            try:
                await consumer.commit()
            except KafkaError as exc:  # read again after a restart: the store's writes are idempotent
                log.warning("offsets not committed: %s", exc)
            self.publish()

    async def note_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        """Each view is fresh as of the last fetch after which every partition of its topic was read to
        its end (the last stable offset, reading committed; else the high watermark), everything read
        having been taken into the store. A record received says nothing of what waits behind it;
        a fetch that finds nothing new, at the end, does (streams/station/freshness.py)."""
        committed = self.settings.isolation_level == "read_committed"
        assigned = consumer.assignment()
        for tp in assigned:
            polled = consumer.last_poll_timestamp(tp)
            end = consumer.last_stable_offset(tp) if committed else None
            if end is None or end < 0:  # not told (an older broker, or reading uncommitted)
                end = consumer.highwater(tp)
            if polled is not None and end is not None and await consumer.position(tp) >= end:
                self._partition_fresh[tp] = polled / 1000
        views = {self.topics.decisions: "decisions", self.topics.status: "statuses", self.topics.keys: "keys"}
        for topic, view in views.items():
            moments = [self._partition_fresh.get(tp) for tp in assigned if tp.topic == topic]
            if not moments or None in moments:
                continue
            at = min(moments)
            before = self.fresh_as_of[view]
            if before is None or at > before:
                self.fresh_as_of[view] = at
                if at - self._noted.get(view, 0.0) >= NOTE_FRESH_EVERY:
                    self.store.note_fresh(view, at)
                    self._noted[view] = at

    async def _take_in_order(self, consumer: AIOKafkaConsumer, batch: dict) -> None:
        """Take a batch, its statuses last, once the decisions are read up to where they ended when
        the statuses had been fetched. A status follows its pass's decision in time (under
        exactly_once, in the same transaction or a later one), but on another topic, read at its own
        pace: a status taken before its decision would match no pass here and be lost, and the
        decision then taken as `issued` (a pass revoked before a fresh station started, shown GREEN).
        Decisions read to catch up are taken as they come, so a station reading the whole log from
        the beginning holds at most one batch of statuses."""
        statuses = {tp: rs for tp, rs in batch.items() if tp.topic == self.topics.status}
        self._take({tp: rs for tp, rs in batch.items() if tp.topic != self.topics.status})
        if not statuses:
            return
        decisions = [tp for tp in consumer.assignment() if tp.topic == self.topics.decisions]
        ends = await self._end_offsets(consumer, decisions)
        while behind := [tp for tp in decisions if await consumer.position(tp) < ends[tp]]:
            self._take(await consumer.getmany(*behind, timeout_ms=500, max_records=2000))
        self._take(statuses)

    async def _end_offsets(self, consumer: AIOKafkaConsumer, partitions: list) -> dict:
        """Their end offsets (last stable, reading committed), asked again while the broker is away."""
        while True:
            try:
                return await consumer.end_offsets(partitions)
            except KafkaError as exc:
                self._offline(exc)
                await asyncio.sleep(1)  # the broker is away: ask again, as _started does

    def _take(self, batch: dict) -> None:
        with self.store.transaction():
            for tp, records in batch.items():
                for r in records:
                    try:
                        obj = orjson.loads(r.value)
                        if tp.topic == self.topics.decisions:
                            self.store.take_decision(obj, self.keys.public_keys)
                        elif tp.topic == self.topics.keys:
                            self.keys.apply(self.store.take_key(obj, self.keys.root, timestamp_ms=r.timestamp))
                        else:
                            self.store.take_status(obj, self.keys.public_keys)
                    except (ValueError, KeyError, TypeError, AttributeError, sqlite3.IntegrityError) as exc:
                        log.warning("skipped %s/%s@%s: %r", tp.topic, tp.partition, r.offset, exc)

    async def _forward(self) -> None:
        """Publish the outbox in order, one scan at a time, each marked sent once acknowledged."""
        s = self.settings
        # Idempotence (no duplicate on the producer's own retries) needs a broker with producer ids:
        # Apache Kafka, where the system runs exactly_once; Tansu has none.
        producer = await self._started(
            lambda: self.producer(
                **s.connection.kwargs(),
                acks="all",
                request_timeout_ms=15000,
                enable_idempotence=s.processing_guarantee == "exactly_once",
            )
        )
        try:
            while True:
                item = self.store.next_unsent()
                if item is None:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), 1.0)
                    except TimeoutError:
                        pass
                    continue
                if await self._send(producer, item):
                    self.publish()
        finally:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, item) -> bool:
        """Publish one outbox item: True once the broker acknowledged it or it was set aside (it can
        never be sent: NEVER_SENDABLE, or `unsendable`), False when it is to be tried again."""
        why = unsendable(item)
        if why is None:
            try:
                await producer.send_and_wait(
                    self.topics.scans, item["body"], key=item["pass_id"].encode(), headers=list(_scan_headers(item))
                )
            except NEVER_SENDABLE as exc:
                why = f"{type(exc).__name__}: {exc}"
            except KafkaError as exc:
                self._offline(exc)
                await asyncio.sleep(1)  # a pause before trying the broker again
                return False
            else:
                self.store.mark_sent(item["seq"], format_time(datetime.now(UTC)))
                self.link.set(True)
                return True
        log.error("scan %s set aside, it can never be sent: %s", item["scan_id"], why)
        self.store.set_aside(item["seq"], format_time(datetime.now(UTC)), why)
        return True

    async def _probe(self) -> None:
        """Online is: a bootstrap server accepts a connection and the last send did not fail."""
        while True:
            reachable = await _reachable(self.settings.bootstrap)
            if not reachable:
                self._offline(ConnectionError("broker unreachable"))
            elif not self.link.online and self.store.queued() == 0:
                self.link.set(True)
                self.publish()
            await asyncio.sleep(1.0)


def _within_limits(body: dict) -> None:
    """ValueError unless the worker would take `body` as a scan: its own parse and the message limit."""
    try:
        parse_scan(body)
    except Unparseable as exc:
        raise ValueError(f"not recorded: {exc}") from None
    if len(orjson.dumps(body)) > MAX_MESSAGE_BYTES:
        raise ValueError(f"not recorded: too_large: the scan is over {MAX_MESSAGE_BYTES} bytes")


def _fatal(task: asyncio.Task) -> None:
    """A link task that dies would leave the page saying nothing: end the station, loudly."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("station task failed", exc_info=task.exception())
        raise SystemExit(1)


def _scan_headers(item) -> tuple:
    return cloudevent_headers(
        f"scan/{item['scan_id']}",
        "cn.greenchannel.checkpoint.scan",
        f"/greenchannel/station/{item['checkpoint_id']}",
        item["scanned_at"],
    )


async def _reachable(bootstrap: str) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1.0)
        except (TimeoutError, OSError):
            continue
        writer.close()
        return True
    return False
