"""Plumbing shared by the benchmarks: topics, filling them, reading outputs, worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.connection import Connection
from streams.topics import ensure_topics
from streams.worker.compat import refresh_metadata

from .workload import Message

__all__ = [
    "ROOT",
    "OUT_DIR",
    "Stamp",
    "fill",
    "wait_for_count",
    "topic_records",
    "read_stamps",
    "rate_of",
    "Proc",
    "start_process",
    "delete_topics",
    "run_id",
    "rss_bytes",
    "postgres_server",
    "fresh_database",
]

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "bench" / "out"  # working directories and worker logs (git-ignored)

log = logging.getLogger("bench")


def run_id() -> str:
    return uuid.uuid4().hex[:8]


@dataclass(frozen=True, slots=True)
class Stamp:
    """One output record: where it is and when its producer sent it (CreateTime, ms)."""

    topic: str
    partition: int
    key: bytes | None
    timestamp_ms: int
    kind: str = ""  # what the suite needs to know of the value (e.g. an approved decision)


async def fill(connection: Connection, topic: str, messages: Iterable[Message], *, partitions: int) -> int:
    """Produce messages as fast as the client goes, wait for every acknowledgement."""
    await ensure_topics(connection, [topic], partitions=partitions)
    producer = AIOKafkaProducer(
        **connection.kwargs(), linger_ms=5, max_batch_size=256 * 1024, max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    count = 0
    try:
        futures = []
        for m in messages:
            futures.append(await producer.send(topic, m.value, key=m.key, headers=list(m.headers) or None))
            count += 1
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return count


async def _partitions(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    parts = []
    for t in topics:
        found = consumer.partitions_for_topic(t)
        if not found:
            await refresh_metadata(consumer)  # a topic the worker has just created
            found = consumer.partitions_for_topic(t) or ()
        parts += [TopicPartition(t, p) for p in sorted(found)]
    return parts


async def wait_for_count(
    connection: Connection, topics: Sequence[str], count: int, *, timeout: float, alive=lambda: True, poll: float = 0.25
) -> float:
    """Wait until the topics' end offsets add up to `count` (cheap: offsets only, no records).

    Returns the monotonic time it was seen. Raises TimeoutError with the count so far.
    """
    consumer = AIOKafkaConsumer(**connection.kwargs(), enable_auto_commit=False)
    await consumer.start()
    deadline = time.monotonic() + timeout
    total = 0
    try:
        while True:
            parts = await _partitions(consumer, topics)
            if parts:
                total = sum((await consumer.end_offsets(parts)).values())
                if total >= count:
                    return time.monotonic()
            if time.monotonic() > deadline or not alive():
                raise TimeoutError(
                    f"{total}/{count} records on {', '.join(topics)} after "
                    f"{time.monotonic() - deadline + timeout:.0f}s (worker alive: {alive()})"
                )
            await asyncio.sleep(poll)  # polling a counter with a deadline
    finally:
        await consumer.stop()


async def topic_records(connection: Connection, select) -> dict[str, int]:
    """Records on each topic whose name `select(name)` accepts: its partitions' end offsets added
    up (Tansu's can be short by up to a batch a partition)."""
    consumer = AIOKafkaConsumer(**connection.kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        names = sorted(t for t in await consumer.topics() if select(t))
        parts = await _partitions(consumer, names)
        ends = await consumer.end_offsets(parts) if parts else {}
    finally:
        await consumer.stop()
    return {name: sum(end for tp, end in ends.items() if tp.topic == name) for name in names}


async def read_stamps(connection: Connection, topics: Sequence[str]) -> list[Stamp]:
    """Every record now on the topics, from the beginning, with its producer timestamp."""
    consumer = AIOKafkaConsumer(
        **connection.kwargs(),
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    stamps: list[Stamp] = []
    try:
        parts = await _partitions(consumer, topics)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        pending = {tp for tp, end in ends.items() if end > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batch.items():
                stamps += [Stamp(tp.topic, tp.partition, r.key, r.timestamp) for r in records]
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return stamps


def rate_of(stamps: Sequence[Stamp]) -> tuple[float, float]:
    """(records per second, seconds) from the first to the last output timestamp."""
    if len(stamps) < 2:
        return 0.0, 0.0
    times = sorted(s.timestamp_ms for s in stamps)
    span = (times[-1] - times[0]) / 1000.0
    return ((len(times) - 1) / span if span > 0 else float("inf")), span


async def delete_topics(connection: Connection, names: Sequence[str]) -> None:
    """Free the broker's memory after a run; a broker that cannot delete keeps them."""
    admin = AIOKafkaAdminClient(**connection.kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
    except Exception as exc:  # noqa: BLE001 — cleanup only
        log.debug("could not delete topics: %s", exc)
    finally:
        await admin.close()


def rss_bytes(pid: int | str = "self") -> int:
    """A process's resident memory now (VmRSS in /proc/<pid>/status), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"/proc/{pid}/status has no VmRSS (a zombie?)")


@dataclass
class Proc:
    """A child process with its log file."""

    popen: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (all its threads); 0 once it has exited."""
        try:
            with open(f"/proc/{self.popen.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def rss_bytes(self) -> int:
        return rss_bytes(self.popen.pid)

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start_process(args: Sequence[str], env: dict, log_path: Path) -> Proc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    popen = subprocess.Popen([sys.executable, *args], env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return Proc(popen, log_path)


def postgres_server() -> tuple[str | None, str]:
    """(URL, "") of the tests' private PostgreSQL on loopback (tests/services/postgres.sh starts or
    reuses it), or (None, why not)."""
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "tests" / "services" / "postgres.sh")], capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"tests/services/postgres.sh: {exc}"
    url = done.stdout.strip()
    if done.returncode or not url:
        return None, "tests/services/postgres.sh: " + (done.stderr.strip().splitlines() or ["failed"])[-1]
    return url, ""


@contextmanager
def fresh_database(server_url: str, name: str) -> Iterator[str]:
    """A new database `name` on the PostgreSQL server, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(server_url)
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
