"""Fixtures: a real broker, a real worker process, and taps that read topics as clients would.

The broker is the embedded Tansu by default; GC_TEST_BROKER=kafka or kafka3 runs the same
tests on Apache Kafka. GC_TEST_DATABASE_URL points the worker's projections elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.broker import TansuBroker, ensure_topics, free_port
from streams.handlers import Topics

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    kind = os.environ.get("GC_TEST_BROKER", "tansu")
    if kind.startswith("kafka"):
        from streams.kafka import KafkaCluster
        cluster = KafkaCluster(nodes=3 if kind == "kafka3" else 1, workdir=tmp_path_factory.mktemp("kafka"))
    else:
        cluster = TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    cluster.start()
    cluster.kind = kind
    yield cluster
    cluster.stop()


@dataclass
class Message:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict
    partition: int
    offset: int

    @property
    def json(self):
        return orjson.loads(self.value)


@dataclass
class Tap:
    """Reads topics from the beginning, outside any consumer group, into a list."""
    bootstrap: str
    topics: list[str]
    messages: list[Message] = field(default_factory=list)

    async def start(self) -> Tap:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self._consumer.start()
        parts = [TopicPartition(t, p) for t in self.topics for p in range(PARTITIONS)]
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for r in records:
                    self.messages.append(Message(tp.topic, r.key, r.value, dict(r.headers or ()), tp.partition,
                                                 r.offset))

    async def stop(self) -> None:
        self._task.cancel()
        await self._consumer.stop()

    def where(self, topic: str | None = None, pred: Callable[[Message], bool] = lambda m: True) -> list[Message]:
        return [m for m in list(self.messages) if (topic is None or m.topic == topic) and pred(m)]

    async def wait_for(self, topic: str, pred: Callable[[Message], bool], count: int = 1,
                       timeout: float = 60.0, alive: Callable[[], bool] = lambda: True) -> list[Message]:
        """Wait until `count` messages of `topic` match; fail with what was seen otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.where(topic, pred)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or not alive():
                raise AssertionError(f"{len(found)}/{count} matching messages on {topic} after {timeout}s")
            await asyncio.sleep(0.05)  # polling a condition with a deadline


@dataclass
class System:
    """A running worker, the way firms, checkpoints and operators reach it."""
    bootstrap: str
    topics: Topics
    env: dict
    data_dir: Path
    producer: AIOKafkaProducer
    tap: Tap
    workers: list[subprocess.Popen]

    async def send(self, topic: str, value: bytes | dict, key: str | bytes | None = None, headers=None) -> None:
        if isinstance(value, dict):
            value = orjson.dumps(value)
        if isinstance(key, str):
            key = key.encode()
        await self.producer.send_and_wait(topic, value, key=key, headers=headers)

    @property
    def public_key_path(self) -> Path:
        return self.data_dir / "keys" / "pass-signing.pub"

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streams.cli", *args], env={**self.env, "COLUMNS": "200"}, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    def start_worker(self) -> subprocess.Popen:
        log = open(self.data_dir / f"worker{len(self.workers)}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=self.env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc


def system_env(bootstrap: str, data_dir: Path, app_id: str) -> dict:
    database = os.environ.get("GC_TEST_DATABASE_URL") or f"sqlite:///{data_dir}/greenchannel.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GC_")}
    env.update({
        "GC_BROKER_URL": f"kafka://{bootstrap}", "GC_DATA_DIR": str(data_dir), "GC_APP_ID": app_id,
        "GC_DATABASE_URL": database, "GC_PARTITIONS": str(PARTITIONS), "PYTHONPATH": str(ROOT),
        "GC_WEB_ENABLED": "true", "GC_WEB_PORT": str(free_port()),
    })
    return env


@pytest.fixture(scope="session")
async def system(broker, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("system")
    topics = Topics.with_prefix("gc.")
    await ensure_topics(broker.bootstrap, topics.public() + [topics.pass_events], partitions=PARTITIONS)
    env = system_env(broker.bootstrap, data_dir, f"gc-test-{uuid.uuid4().hex[:6]}")
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=1)
    await producer.start()
    tap = await Tap(broker.bootstrap, topics.public()).start()
    sysm = System(broker.bootstrap, topics, env, data_dir, producer, tap, [])
    sysm.start_worker()
    # Ready when a probe request has been answered (here: dead-lettered).
    probe = f"probe-{uuid.uuid4().hex}"
    await sysm.send(topics.requests, b"not json", key=probe)
    try:
        await tap.wait_for(topics.deadletter, lambda m: m.key == probe.encode(), timeout=120,
                           alive=lambda: sysm.workers[0].poll() is None)
    except AssertionError:
        log = (data_dir / "worker0.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"worker did not come up; log tail:\n{log}") from None
    yield sysm
    for proc in sysm.workers:
        proc.terminate()
    for proc in sysm.workers:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    await tap.stop()
    await producer.stop()
