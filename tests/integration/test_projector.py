"""`greenchannel projector`: real Kafka records in, database rows out.

The broker tests publish decisions, statuses, risk levels and key-enterprise entries straight to
the output topics, as a worker does (keys, CloudEvents headers), and run `greenchannel projector`
processes on them; no worker is involved. Each test has topics, a consumer group and a database
of its own: SQLite, or PostgreSQL when GC_TEST_DATABASE_URL names a server (the kafka lane).
Shaping and writing batches without a broker: tests/unit/test_projector_batches.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from models.store.db import upgrade
from models.store.tables import Enterprise, Pass, PassEvent, Region, Shipment
from streams.connection import Connection
from streams.handlers import Topics
from streams.topics import ensure_topics
from tests.support.projections import (
    FIRM_A,
    FIRM_B,
    approved,
    ce,
    decision,
    fresh_postgres_database,
    issued,
    pass_id,
    rows,
    status,
    table,
)
from tests.support.system import ON_KAFKA, PARTITIONS, replication_factor, start_projector, stop_processes, system_env

SUMMARY = re.compile(r"projector stopped: (\d+) records written, (\d+) skipped")
ASSIGNED = re.compile(r"projector assigned \d+ partitions: (.*)$", re.M)


# --- a lane of topics, a database and projector processes ------------------------------------------


@pytest.fixture
def database(tmp_path):
    server = os.environ.get("GC_TEST_DATABASE_URL", "")
    if server and make_url(server).get_backend_name() == "postgresql":
        with fresh_postgres_database(server) as url:
            yield url
        return
    yield f"sqlite:///{tmp_path / 'projected.db'}"


@dataclass
class Lane:
    """Fresh topics, a database and a producer writing as the worker does; projectors on them."""

    connection: Connection
    topics: Topics
    env: dict
    data_dir: Path
    producer: AIOKafkaProducer
    procs: list = field(default_factory=list)  # every projector started, stopped ones too
    ends: dict = field(default_factory=dict)  # TopicPartition -> the offset after the last one produced

    @property
    def database_url(self) -> str:
        return self.env["GC_DATABASE_URL"]

    @property
    def group(self) -> str:
        return f"{self.env['GC_APP_ID']}-projector"

    async def publish(self, topic: str, value, key: str | None = None, headers=None, partition: int | None = None):
        if isinstance(value, dict):
            value = orjson.dumps(value)
        meta = await self.producer.send_and_wait(
            topic, value, key=key.encode() if key else None, headers=headers, partition=partition
        )
        self.ends[TopicPartition(topic, meta.partition)] = meta.offset + 1
        return meta

    async def decision(self, d: dict) -> None:
        await self.publish(self.topics.decisions, d, d["shipment_id"], ce(f"decision/{d['shipment_id']}"))

    async def status(self, ce_id: str, s: dict) -> None:
        await self.publish(self.topics.status, s, s["pass_id"], ce(ce_id))

    def start(self, *args: str) -> object:
        proc = start_projector(self.env, self.data_dir, f"projector{len(self.procs)}", *args)
        self.procs.append(proc)
        return proc

    def stop(self, proc) -> tuple[int, int]:
        """SIGTERM it; (records written, skipped) from its last words."""
        stop_processes([proc])
        proc.stopped = True
        log = proc.log_path.read_text(errors="replace")
        assert proc.returncode == 0, log[-3000:]
        found = SUMMARY.findall(log)
        assert found, log[-3000:]
        return tuple(map(int, found[-1]))

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs if not getattr(p, "stopped", False))

    def tails(self) -> str:
        return "\n".join(f"--- {p.log_path}\n{p.log_path.read_text(errors='replace')[-2000:]}" for p in self.procs)

    async def committed(self) -> dict[TopicPartition, int]:
        consumer = AIOKafkaConsumer(**self.connection.kwargs(), group_id=self.group, enable_auto_commit=False)
        await consumer.start()
        try:
            return {tp: await consumer.committed(tp) or 0 for tp in self.ends}
        finally:
            await consumer.stop()

    async def until(self, cond: Callable, what: str, timeout: float = 90) -> None:
        """Poll `cond()` (sync or async) until true; fail with the projectors' logs otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            assert time.monotonic() < deadline and self.alive(), f"no {what} after {timeout}s\n{self.tails()}"
            await _pause()

    async def all_committed(self) -> bool:
        return await self.committed() == self.ends

    def counts(self) -> dict[str, int]:
        counted = rows(
            self.database_url,
            lambda s, t: s.scalar(select(func.count()).select_from(t)),
            (Shipment, PassEvent, Region, Enterprise),
        )
        return {t.__tablename__: n for t, n in counted.items()}


async def _pause() -> None:
    await asyncio.sleep(0.1)  # polling a condition with a deadline


@pytest.fixture
async def lane(broker, database, tmp_path):
    prefix = f"pj{uuid.uuid4().hex[:6]}."
    topics = Topics.with_prefix(prefix)
    await ensure_topics(
        broker.connection,
        [topics.decisions, topics.status, topics.risk, topics.enterprises],
        partitions=PARTITIONS,
        replication_factor=replication_factor(),
    )
    upgrade(database)  # the schema exists before the tests read it (the projector upgrades too)
    env = system_env(broker.bootstrap, tmp_path, f"gc-pj-{uuid.uuid4().hex[:6]}")
    env.update(GC_TOPIC_PREFIX=prefix, GC_DATABASE_URL=database)
    durable = {"acks": "all", "enable_idempotence": True} if ON_KAFKA else {}
    producer = AIOKafkaProducer(**broker.connection.kwargs(), linger_ms=1, **durable)
    await producer.start()
    lane = Lane(broker.connection, topics, env, tmp_path, producer)
    yield lane
    stop_processes(lane.procs)
    await producer.stop()


async def publish_passes(lane: Lane, numbers: range) -> None:
    """An approved decision and its `issued` status for each number."""
    for n in numbers:
        await lane.decision(approved(n))
        await lane.status(*issued(n))


# --- (a) rows out ------------------------------------------------------------------------------------


async def test_a_projector_fills_the_database_from_the_topics(lane):
    t = lane.topics
    for n in range(4):
        await lane.decision(approved(n))
    for sid in ("S-R1", "S-R2"):
        await lane.decision(decision(sid, None))
    events = {}
    for n in range(4):
        events[issued(n)[0]] = "issued"
        await lane.status(*issued(n))
    for n in (1, 2):
        ce_id = f"status/{pass_id(n)}/scan-a"
        events[ce_id] = "at_checkpoint"
        await lane.status(
            ce_id, status(pass_id(n), "at_checkpoint", "2020-02-20T09:00:00+08:00", checkpoint_id="BX-4403-0001")
        )
    # A status without CloudEvents headers is kept under its place in the log.
    bare = await lane.publish(
        t.status,
        status(pass_id(3), "in_transit", "2020-02-20T10:00:00+08:00", checkpoint_id="BX-4403-0001", dwell=600.0),
        pass_id(3),
    )
    events[f"{t.status}/{bare.partition}/{bare.offset}"] = "in_transit"
    at = "2020-02-20T00:00:00+08:00"
    await lane.publish(t.risk, {"adcode": "4201", "level": "high", "effective_at": at}, "4201")
    await lane.publish(t.risk, {"adcode": "4403", "level": "medium", "effective_at": at}, "4403")
    await lane.publish(t.risk, {"adcode": "4403", "level": "low", "effective_at": "2020-02-21T00:00:00+08:00"}, "4403")
    await lane.publish(t.risk, {"adcode": "4403", "level": "extreme", "effective_at": at}, "4403")  # dead-lettered
    await lane.publish(t.enterprises, {"credit_code": FIRM_A, "name": "A", "action": "add", "effective_at": at}, FIRM_A)
    await lane.publish(t.enterprises, {"credit_code": FIRM_B, "name": "B", "action": "add", "effective_at": at}, FIRM_B)
    await lane.publish(
        t.enterprises,
        {"credit_code": FIRM_B, "name": "B", "action": "remove", "effective_at": "2020-02-21T00:00:00Z"},
        FIRM_B,
    )
    await lane.publish(t.enterprises, {"credit_code": "123", "name": "?", "action": "add", "effective_at": at}, "123")

    proc = lane.start()
    await lane.until(
        lambda: lane.counts() == {"shipment": 6, "pass_event": len(events), "region": 2, "enterprise": 2},
        "complete projection",
    )
    await lane.until(lane.all_committed, "offsets committed")
    assert lane.stop(proc) == (6 + len(events) + 3 + 3, 2)

    url = lane.database_url
    shipments = table(url, Shipment)
    assert {sid: (s.decision, s.pass_id) for sid, s in shipments.items()} == {
        **{f"S-{n:05d}": ("approved", pass_id(n)) for n in range(4)},
        "S-R1": ("rejected", None),
        "S-R2": ("rejected", None),
    }
    passes = table(url, Pass)
    assert {pid: p.status for pid, p in passes.items()} == {
        pass_id(0): "issued",
        pass_id(1): "at_checkpoint",
        pass_id(2): "at_checkpoint",
        pass_id(3): "in_transit",
    }
    assert passes[pass_id(1)].plate == "粤B12345" and passes[pass_id(1)].token == "Y2xhaW1zQQ.c2lnQQ"
    assert {e: row.status for e, row in table(url, PassEvent).items()} == events
    assert {a: r.level for a, r in table(url, Region).items()} == {"4201": "high", "4403": "low"}
    assert {c: e.listed for c, e in table(url, Enterprise).items()} == {FIRM_A: True, FIRM_B: False}


# --- (b) a group of projectors ---------------------------------------------------------------------------


def assignments(lane: Lane) -> list[set[str]]:
    """Each projector's partitions, from its latest assignment."""
    found = [ASSIGNED.findall(p.log_path.read_text(errors="replace")) for p in lane.procs]
    return [set(f[-1].split()) if f else set() for f in found]


def shared(lane: Lane) -> bool:
    every = {
        f"{topic}/{p}"
        for topic in (lane.topics.decisions, lane.topics.status, lane.topics.risk, lane.topics.enterprises)
        for p in range(PARTITIONS)
    }
    a, b = assignments(lane)
    return bool(a) and bool(b) and not (a & b) and a | b == every


async def test_two_projectors_share_the_partitions_and_write_each_record_once(lane):
    first, second = lane.start(), lane.start()
    await lane.until(lambda: shared(lane), "partitions split between the two projectors", timeout=120)
    await publish_passes(lane, range(200))
    await lane.until(lambda: lane.counts()["pass_event"] == 200 and lane.counts()["shipment"] == 200, "400 rows")
    await lane.until(lane.all_committed, "offsets committed")
    (a, _), (b, _) = lane.stop(first), lane.stop(second)
    assert a > 0 and b > 0, (a, b)
    assert a + b == 400  # no record written by both
    assert set(table(lane.database_url, PassEvent)) == {issued(n)[0] for n in range(200)}
    assert {p.status for p in table(lane.database_url, Pass).values()} == {"issued"}


# --- (c) stop and restart ---------------------------------------------------------------------------------


async def test_a_restarted_projector_resumes_from_its_committed_offsets(lane):
    await publish_passes(lane, range(300))
    first = lane.start("--batch-size", "50")
    await lane.until(lambda: lane.counts()["shipment"] + lane.counts()["pass_event"] > 0, "a first batch")
    written, _ = lane.stop(first)  # stopped mid-stream, most likely
    committed = await lane.committed()
    assert sum(committed.values()) == written  # what was written was committed, and only that
    await publish_passes(lane, range(300, 350))
    second = lane.start("--batch-size", "50")
    await lane.until(lambda: lane.counts()["shipment"] == 350 and lane.counts()["pass_event"] == 350, "700 rows")
    await lane.until(lane.all_committed, "offsets committed")
    more, _ = lane.stop(second)
    assert written + more == 700  # resumed where the first stopped: nothing twice, nothing lost
    assert set(table(lane.database_url, Shipment)) == {f"S-{n:05d}" for n in range(350)}


# --- (d) malformed records ---------------------------------------------------------------------------------


async def test_malformed_records_are_skipped_and_the_projector_goes_on(lane):
    t = lane.topics
    await publish_passes(lane, range(10))
    await lane.publish(t.decisions, b"not json", "BAD-1")
    await lane.publish(t.decisions, b"[1, 2]", "BAD-2")
    await lane.publish(t.decisions, {"shipment_id": "BAD-3", "decision": "approved"}, "BAD-3")  # fields missing
    await lane.publish(
        t.decisions,
        {**decision("BAD-4", pass_id(99)), "pass": {**approved(99)["pass"], "plate": {"not": "text"}}},
        "BAD-4",
    )
    await lane.publish(t.status, {**issued(98)[1], "at": "yesterday"}, pass_id(98), ce("status/bad-time"))
    await lane.publish(t.status, None, pass_id(97))  # a tombstone
    await lane.publish(t.risk, {"adcode": "4403", "level": "extreme", "effective_at": "2020-02-20T00:00:00Z"}, "4403")
    await publish_passes(lane, range(10, 20))

    proc = lane.start()  # everything is waiting: the bad records are in the projector's first batches
    await lane.until(lambda: lane.counts()["shipment"] == 20 and lane.counts()["pass_event"] == 20, "the good rows")
    await lane.until(lane.all_committed, "offsets committed past the bad records")
    assert proc.poll() is None
    assert lane.stop(proc) == (40, 7)
    shipments = table(lane.database_url, Shipment)
    assert set(shipments) == {f"S-{n:05d}" for n in range(20)}
    assert pass_id(98) not in table(lane.database_url, Pass)


# --- read_committed on Apache Kafka ------------------------------------------------------------------------


@pytest.mark.skipif(not ON_KAFKA, reason="Tansu has no transactions (GC_TEST_BROKER=kafka runs this)")
async def test_on_kafka_an_aborted_transaction_never_reaches_the_database(lane):
    producer = AIOKafkaProducer(**lane.connection.kwargs(), transactional_id=f"pj-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        for sid, commit in (("S-ABORTED", False), ("S-COMMITTED", True)):
            await producer.begin_transaction()
            await producer.send_and_wait(
                lane.topics.decisions, orjson.dumps(decision(sid, None)), key=sid.encode(), partition=0
            )
            await (producer.commit_transaction() if commit else producer.abort_transaction())
    finally:
        await producer.stop()
    await lane.decision(decision("S-AFTER", None))  # the same partition could hold it: read past both
    proc = lane.start()
    await lane.until(lambda: {"S-COMMITTED", "S-AFTER"} <= set(table(lane.database_url, Shipment)), "committed rows")
    assert lane.env["GC_PROCESSING_GUARANTEE"] == "exactly_once"
    assert "S-ABORTED" not in table(lane.database_url, Shipment)
    assert lane.stop(proc)[0] == 2
