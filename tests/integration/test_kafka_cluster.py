"""Real Apache Kafka (KRaft, from Maven Central jars) started by streams.dev.kafka.

Needs java (17+) and mvn on PATH; the first run resolves the jars into
~/.cache/greenchannel/kafka-<version> (or $GC_KAFKA_HOME). Every wait here is
a condition polled against a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.system import BROKER_KIND

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(
        not (shutil.which("java") and shutil.which("mvn")), reason="needs java and mvn on PATH to run real Kafka"
    ),
    pytest.mark.skipif(
        BROKER_KIND == "kafka3", reason="starts Apache Kafka clusters of its own: runs once, in the kafka lane"
    ),
]

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from streams.connection import Connection  # noqa: E402
from streams.dev.kafka import KafkaCluster, KafkaError, broker_ids, ensure_jars  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------
# helpers


async def until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Await ``predicate()`` (sync or async) until truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last = exc
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")
        await asyncio.sleep(interval)


async def consume(bootstrap: str, topic: str, count: int, timeout: float = 30, **kwargs) -> list[bytes]:
    """Read ``count`` values of ``topic`` from the beginning (own group)."""
    consumer = AIOKafkaConsumer(
        topic,
        **Connection(bootstrap).kwargs(),
        auto_offset_reset="earliest",
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        **kwargs,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while len(values) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"got {len(values)}/{count} messages of {topic}: {values}")
            batch = await consumer.getmany(timeout_ms=int(min(left, 1.0) * 1000))
            for records in batch.values():
                values += [r.value for r in records]
    finally:
        await consumer.stop()
    return values


async def cluster_brokers(bootstrap: str) -> set[int]:
    admin = AIOKafkaAdminClient(**Connection(bootstrap).kwargs(), request_timeout_ms=5000)
    await admin.start()
    try:
        info = await admin.describe_cluster()
        return {b["node_id"] for b in info["brokers"]}
    finally:
        await admin.close()


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def jars():
    t0 = time.monotonic()
    libs = ensure_jars()
    print(f"\nkafka jars ready in {time.monotonic() - t0:.1f}s: {libs}")
    return libs


@pytest.fixture(scope="class")
def single(jars):
    t0 = time.monotonic()
    with KafkaCluster(nodes=1) as cluster:
        print(f"\n1-node cluster up in {time.monotonic() - t0:.1f}s: {cluster.bootstrap}")
        yield cluster
    assert cluster.workdir is not None and not cluster.workdir.exists()


# --------------------------------------------------------------------------
# one node (one cluster for the class, stopped before the 3-node test starts)


class TestSingleNode:
    async def test_produce_consume(self, single):
        assert single.bootstrap == f"127.0.0.1:{single.ports[0]}"
        assert single.url == "kafka://" + single.bootstrap
        assert await cluster_brokers(single.bootstrap) == {0}

        producer = AIOKafkaProducer(**single.connection.kwargs(), acks="all")
        await producer.start()
        try:
            for i in range(5):
                # auto.create.topics.enable: the first send creates the topic.
                await producer.send_and_wait("plain", f"m{i}".encode(), key=b"k")
        finally:
            await producer.stop()
        assert await consume(single.bootstrap, "plain", 5) == [f"m{i}".encode() for i in range(5)]

    async def test_transactions(self, single):
        bootstrap = single.bootstrap
        admin = AIOKafkaAdminClient(**Connection(bootstrap).kwargs())
        await admin.start()
        try:
            await admin.create_topics([NewTopic("tx-in", 1, 1), NewTopic("tx-out", 1, 1)])
        finally:
            await admin.close()

        plain = AIOKafkaProducer(**Connection(bootstrap).kwargs(), acks="all")
        await plain.start()
        try:
            for i in range(3):
                await plain.send_and_wait("tx-in", f"in{i}".encode())
        finally:
            await plain.stop()

        # Consume-transform-produce as Faust's exactly_once does: output records
        # and the input offsets commit in one transaction.
        group = "tx-group"
        consumer = AIOKafkaConsumer(
            "tx-in",
            **Connection(bootstrap).kwargs(),
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        producer = AIOKafkaProducer(
            **Connection(bootstrap).kwargs(), transactional_id="gc-tx-1", enable_idempotence=True
        )
        await consumer.start()
        await producer.start()
        try:
            seen = []
            deadline = time.monotonic() + 30
            while len(seen) < 3 and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    seen += records
            assert [r.value for r in seen] == [b"in0", b"in1", b"in2"]
            tp = TopicPartition("tx-in", 0)

            async with producer.transaction():
                for r in seen:
                    await producer.send("tx-out", r.value.replace(b"in", b"out"))
                await producer.send_offsets_to_transaction({tp: seen[-1].offset + 1}, group)

            # An aborted transaction must stay invisible to read_committed.
            await producer.begin_transaction()
            await producer.send_and_wait("tx-out", b"aborted")
            await producer.abort_transaction()

            async with producer.transaction():
                await producer.send("tx-out", b"last")
        finally:
            await producer.stop()
            await consumer.stop()

        got = await consume(bootstrap, "tx-out", 4, isolation_level="read_committed")
        assert got == [b"out0", b"out1", b"out2", b"last"]

        check = AIOKafkaConsumer(**Connection(bootstrap).kwargs(), group_id=group, enable_auto_commit=False)
        await check.start()
        try:
            assert await check.committed(TopicPartition("tx-in", 0)) == 3
        finally:
            await check.stop()


async def test_port_in_use_is_refused(jars):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        cluster = KafkaCluster(nodes=1, port=busy)
        with pytest.raises(KafkaError, match="in use"):
            cluster.start()
        cluster.stop()


async def run_main(workdir: Path, *args: str):
    """``python -m streams.dev.kafka``: return (process, bootstrap line)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams.dev.kafka",
        "--nodes",
        "1",
        "--workdir",
        str(workdir),
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    bootstrap = line.decode().strip()
    if not bootstrap.startswith("127.0.0.1:"):
        proc.kill()
        pytest.fail(f"no bootstrap line: {line!r}\n{(await proc.stderr.read()).decode()}")
    return proc, bootstrap


async def sigterm(proc) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 60)


async def test_module_main_restarts_on_kept_workdir(jars, tmp_path):
    workdir = tmp_path / "wd"
    proc, bootstrap = await run_main(workdir)
    try:
        host, port = bootstrap.split(":")
        assert broker_ids(host, int(port)) == {0}
        producer = AIOKafkaProducer(**Connection(bootstrap).kwargs(), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait("kept", b"survives a restart")
        finally:
            await producer.stop()
    finally:
        code = await sigterm(proc)
    assert code == 0
    assert (workdir / "node-0" / "data" / "meta.properties").exists()
    with pytest.raises(OSError):  # the broker port is released
        broker_ids(host, int(port), timeout=1)

    # Same workdir again: same cluster id, same port (free again), data kept.
    proc, again = await run_main(workdir)
    try:
        assert again == bootstrap
        assert await consume(again, "kept", 1) == [b"survives a restart"]
    finally:
        assert await sigterm(proc) == 0


# --------------------------------------------------------------------------
# three nodes


async def test_three_nodes_survive_one_node_down(jars):
    t0 = time.monotonic()
    cluster = KafkaCluster(nodes=3)
    await cluster.astart()
    try:
        print(f"\n3-node cluster up in {time.monotonic() - t0:.1f}s: {cluster.bootstrap}")
        bootstrap = cluster.bootstrap
        assert len(bootstrap.split(",")) == 3
        assert await cluster_brokers(bootstrap) == {0, 1, 2}

        admin = AIOKafkaAdminClient(**Connection(bootstrap).kwargs())
        await admin.start()
        try:
            await admin.create_topics([NewTopic("rep3", 3, 3)])

            async def fully_replicated():
                (topic,) = await admin.describe_topics(["rep3"])
                parts = topic["partitions"]
                return len(parts) == 3 and all(
                    sorted(p["replicas"]) == [0, 1, 2] and sorted(p["isr"]) == [0, 1, 2] for p in parts
                )

            await until(fully_replicated, 30, "rep3 to have 3 in-sync replicas")
        finally:
            await admin.close()

        async def produce(values):
            producer = AIOKafkaProducer(**Connection(bootstrap).kwargs(), acks="all", enable_idempotence=True)
            await producer.start()
            try:
                for v in values:
                    await producer.send_and_wait("rep3", v, partition=0)
            finally:
                await producer.stop()

        await produce([b"a0", b"a1"])

        t1 = time.monotonic()
        await asyncio.to_thread(cluster.stop_node, 2)
        print(f"node 2 stopped in {time.monotonic() - t1:.1f}s")
        assert not cluster.is_running(2)
        assert await cluster_brokers(bootstrap) == {0, 1}
        # min.insync.replicas=2: acks=all still works with 2 of 3 replicas.
        await produce([b"b0", b"b1"])
        assert await consume(bootstrap, "rep3", 4) == [b"a0", b"a1", b"b0", b"b1"]

        t1 = time.monotonic()
        await asyncio.to_thread(cluster.start_node, 2)
        print(f"node 2 rejoined in {time.monotonic() - t1:.1f}s")
        assert await cluster_brokers(bootstrap) == {0, 1, 2}

        # SIGKILL of the node that is first in the bootstrap list: clients
        # fall over to the others once the controller fences it.
        t1 = time.monotonic()
        cluster.kill_node(0)
        await asyncio.to_thread(cluster.wait_for_brokers, {1, 2}, 30)
        print(f"node 0 killed and fenced in {time.monotonic() - t1:.1f}s")
        await produce([b"c0"])
        assert await consume(bootstrap, "rep3", 5) == [b"a0", b"a1", b"b0", b"b1", b"c0"]
        t1 = time.monotonic()
        await asyncio.to_thread(cluster.start_node, 0)
        print(f"node 0 rejoined in {time.monotonic() - t1:.1f}s")
        assert await cluster_brokers(bootstrap) == {0, 1, 2}
    finally:
        t1 = time.monotonic()
        await cluster.astop()
        print(f"3-node cluster stopped in {time.monotonic() - t1:.1f}s")
    assert not cluster.workdir.exists()
