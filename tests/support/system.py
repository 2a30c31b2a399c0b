"""The system fixture: a real broker, a real worker and projector, and taps that read topics as clients would.

The broker is the embedded Tansu by default; GC_TEST_BROKER=kafka or kafka3 runs the same
tests on Apache Kafka, GC_TEST_BROKER=kafka-secure on a 1-node secure Apache Kafka (SASL_SSL and
ACLs; every component of a system authenticated as its own principal). GC_TEST_DATABASE_URL
points the worker's projections elsewhere.
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

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.connection import Connection
from streams.dev.broker import TansuBroker, free_port
from streams.handlers import Topics
from streams.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4


BROKER_KIND = os.environ.get("GC_TEST_BROKER", "tansu")
# The workers' table store: memory:// unless the lane says (the kafka lane runs rocksdb://).
STORE = os.environ.get("GC_TEST_STORE", "memory://")
if BROKER_KIND not in ("tansu", "kafka", "kafka3", "kafka-secure"):
    raise pytest.UsageError(f"GC_TEST_BROKER={BROKER_KIND!r}: expected tansu, kafka, kafka3 or kafka-secure")
ON_KAFKA = BROKER_KIND.startswith("kafka")
ON_SECURE = BROKER_KIND == "kafka-secure"


def pytest_collection_modifyitems(config, items):
    """Tests marked `kafka` start Apache Kafka themselves: only in the Kafka lanes; tests marked
    `secure` need the secure cluster: only in the secure lane. No test is ever rerun: a test that
    fails once is a bug to fix at its cause."""
    skip_kafka = pytest.mark.skip(
        reason="starts Apache Kafka: runs with GC_TEST_BROKER=kafka or kafka3 (tests/services/lanes.sh)"
    )
    skip_secure = pytest.mark.skip(
        reason="needs the secure Apache Kafka: runs with GC_TEST_BROKER=kafka-secure (tests/services/lanes.sh secure)"
    )
    for item in items:
        if item.get_closest_marker("kafka") is not None and not ON_KAFKA:
            item.add_marker(skip_kafka)
        if item.get_closest_marker("secure") is not None and not ON_SECURE:
            item.add_marker(skip_secure)


def replication_factor(kind: str = BROKER_KIND) -> int:
    return 3 if kind.startswith("kafka3") else 1


def isolation_level(kind: str = BROKER_KIND) -> str:
    """Readers of a transactional (exactly_once) worker see committed output only."""
    return "read_committed" if kind.startswith("kafka") else "read_uncommitted"


def make_broker(kind: str, workdir: Path):
    """An unstarted broker of `kind` (Apache Kafka keeps its data in `workdir`; a secure one its
    certificates and credentials in workdir/secure, and no ACL until a system asks for its own)."""
    if kind in ("kafka-secure", "kafka3-secure"):
        from streams.dev.kafka import KafkaCluster
        from streams.dev.secure import SecureDir

        cluster = KafkaCluster(
            nodes=3 if kind == "kafka3-secure" else 1, workdir=workdir, secure=SecureDir(workdir / "secure").ensure()
        )
    elif kind.startswith("kafka"):
        from streams.dev.kafka import KafkaCluster

        cluster = KafkaCluster(nodes=3 if kind == "kafka3" else 1, workdir=workdir)
    else:
        cluster = TansuBroker(log_path=workdir / "tansu.log")
    cluster.kind = kind
    return cluster


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    cluster = make_broker(BROKER_KIND, tmp_path_factory.mktemp(BROKER_KIND))
    cluster.start()
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

    connection: Connection
    topics: list[str]
    messages: list[Message] = field(default_factory=list)
    isolation_level: str = field(default_factory=isolation_level)

    async def start(self) -> Tap:
        self._consumer = AIOKafkaConsumer(
            **self.connection.kwargs(), enable_auto_commit=False, isolation_level=self.isolation_level
        )
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
                    self.messages.append(
                        Message(tp.topic, r.key, r.value, dict(r.headers or ()), tp.partition, r.offset)
                    )

    async def stop(self) -> None:
        self._task.cancel()
        await self._consumer.stop()

    async def caught_up(self, topics: list[str] | None = None, timeout: float = 60.0) -> None:
        """Wait until everything readable now (up to the last stable offset when reading
        committed) of `topics` (default: all) is in `messages`."""
        parts = [TopicPartition(t, p) for t in (topics or self.topics) for p in range(PARTITIONS)]
        ends = await self._consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout
        while True:
            behind = {tp: end for tp, end in ends.items() if await self._consumer.position(tp) < end}
            if not behind:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"tap still behind after {timeout}s: {behind}")
            await asyncio.sleep(0.05)  # polling a condition with a deadline

    def where(self, topic: str | None = None, pred: Callable[[Message], bool] = lambda m: True) -> list[Message]:
        return [m for m in list(self.messages) if (topic is None or m.topic == topic) and pred(m)]

    async def wait_for(
        self,
        topic: str,
        pred: Callable[[Message], bool],
        count: int = 1,
        timeout: float = 60.0,
        alive: Callable[[], bool] = lambda: True,
    ) -> list[Message]:
        """Wait until `count` messages of `topic` match; fail with what was seen otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.where(topic, pred)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or not alive():
                raise AssertionError(f"{len(found)}/{count} matching messages on {topic} after {timeout}s")
            await asyncio.sleep(0.05)  # polling a condition with a deadline


def start_projector(env: dict, data_dir: Path, name: str = "projector", *args: str) -> subprocess.Popen:
    """`greenchannel projector` as a process with `env`, its log in data_dir/NAME.log."""
    log_path = data_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "projector", *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc.log_path = log_path
    return proc


@dataclass
class StationProcess:
    """`greenchannel checkpoint` as a process; once it serves, `url` (its address) and `token` (made
    by the station and printed once with the address, as a person reads it), `auth` the header an
    API client sends."""

    proc: subprocess.Popen
    log_path: Path
    url: str = ""
    token: str = ""

    def ready(self, timeout: float = 60) -> StationProcess:
        from urllib.parse import parse_qs, urlsplit

        from streams.station.web import announced_url

        announced = announced_url(self.log_path, lambda: self.proc.poll() is None, timeout)
        self.url = announced.split("?", 1)[0]
        self.token = parse_qs(urlsplit(announced).query)["token"][0]
        return self

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def first_visit(self) -> str:
        """The address a person opens first: with the token, which the page trades for its cookie."""
        return f"{self.url}?token={self.token}"

    def session(self) -> aiohttp.ClientSession:
        """An API client of the station (its token in every request)."""
        return aiohttp.ClientSession(headers=self.auth)


def start_station(
    env: dict, data_dir: Path, ids: list[str], public_key: Path, name: str = "station", *args: str
) -> StationProcess:
    """A checkpoint station for `ids` on a free port, its state in data_dir, its log in data_dir/NAME.log."""
    log_path = data_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "streams.cli", "checkpoint", "--port", "0", "--public-key", str(public_key), *args]
    for checkpoint_id in ids:
        cmd += ["--id", checkpoint_id]
    own = {k: v for k, v in env.items() if k not in ("GC_STATION_TOKEN", "GC_STATION_TOKEN_FILE")}  # it makes one
    if "GC_ROOT_PUBLIC_KEY" not in own and "GC_DATA_DIR" in env:  # the system's development root, pinned
        own["GC_ROOT_PUBLIC_KEY"] = str(Path(env["GC_DATA_DIR"]) / "root" / "root.pub")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, env={**own, "GC_DATA_DIR": str(data_dir)}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    return StationProcess(proc, log_path)


@dataclass
class GatewayProcess:
    """`greenchannel gateway` as a process; once it serves, `url` (its address, ending in /)."""

    proc: subprocess.Popen
    log_path: Path
    url: str = ""

    def ready(self, timeout: float = 60) -> GatewayProcess:
        from streams.station.web import announced_url

        self.url = announced_url(self.log_path, lambda: self.proc.poll() is None, timeout, prefix="gateway at ")
        return self


def start_gateway(env: dict, data_dir: Path, name: str = "gateway") -> GatewayProcess:
    """The firms' gateway on a free loopback port, its log in data_dir/NAME.log."""
    log_path = data_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "streams.cli", "gateway", "--port", "0"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return GatewayProcess(proc, log_path)


class Client:
    """The station's API, as its page uses it."""

    def __init__(self, session: aiohttp.ClientSession, station: StationProcess) -> None:
        self.session, self.url, self.auth = session, station.url, station.auth

    async def post(self, path: str, body: dict) -> dict:
        async with self.session.post(self.url + path, json=body, headers=self.auth) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def state(self) -> dict:
        async with self.session.get(self.url + "api/state", headers=self.auth) as r:
            assert r.status == 200, await r.text()
            return await r.json()


def stop_processes(procs: list[subprocess.Popen], timeout: float = 30) -> None:
    """SIGTERM them all, then wait for each (SIGKILL after `timeout`)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class System:
    """A running worker and its projector, the way firms, checkpoints and operators reach them."""

    connection: Connection
    topics: Topics
    env: dict
    data_dir: Path
    producer: AIOKafkaProducer
    tap: Tap
    workers: list[subprocess.Popen]
    projectors: list[subprocess.Popen] = field(default_factory=list)
    cluster: object = None  # the broker; a secure one gives each component its own principal

    def env_as(self, principal: str) -> dict:
        """The system's settings with `principal`'s credentials (as they are on a plain broker)."""
        if getattr(self.cluster, "secure", None) is None:
            return dict(self.env)
        return {**self.env, **self.cluster.connection_as(principal).env()}

    async def send(self, topic: str, value: bytes | dict, key: str | bytes | None = None, headers=None) -> None:
        if isinstance(value, dict):
            value = orjson.dumps(value)
        if isinstance(key, str):
            key = key.encode()
        await self.producer.send_and_wait(topic, value, key=key, headers=headers)

    @property
    def public_key_path(self) -> Path:
        return self.data_dir / "keys" / "pass-signing.pub"

    def cli(self, *args: str, principal: str = "operator") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "streams.cli", *args],
            env={**self.env_as(principal), "COLUMNS": "200"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start_worker(self) -> subprocess.Popen:
        log_path = self.data_dir / f"worker{len(self.workers)}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"],
                env=self.env_as("worker"),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        proc.log_path = log_path
        self.workers.append(proc)
        return proc

    async def start_ready_worker(self, timeout: float = 120) -> subprocess.Popen:
        """Start a worker; ready when a probe request has been answered (here: dead-lettered)."""
        proc = self.start_worker()
        probe = f"probe-{uuid.uuid4().hex}"
        await self.send(self.topics.requests, b"not json", key=probe)
        try:
            await self.tap.wait_for(
                self.topics.deadletter,
                lambda m: m.key == probe.encode(),
                timeout=timeout,
                alive=lambda: proc.poll() is None,
            )
        except AssertionError:
            log = proc.log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"worker did not come up; log tail:\n{log}") from None
        return proc

    def start_projector(self) -> subprocess.Popen:
        """One more projector in the system's group (the database projections)."""
        proc = start_projector(self.env_as("projector"), self.data_dir, f"projector{len(self.projectors)}")
        self.projectors.append(proc)
        return proc

    async def close(self) -> None:
        stop_processes(self.workers + self.projectors)
        await self.tap.stop()
        await self.producer.stop()


def system_database(data_dir: Path, name: str) -> str:
    """A database of the system's own: a SQLite file in its data_dir, or, when
    GC_TEST_DATABASE_URL names a PostgreSQL server (the kafka lane), a new database `name` beside
    that one on the same server. Systems never share one: a replay test rebuilding one system's
    log compares against its projection alone."""
    base = os.environ.get("GC_TEST_DATABASE_URL")
    if not base:
        return f"sqlite:///{data_dir}/greenchannel.db"
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(base)
    own = f"{url.database}_{name}"[:63]
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{own}"'))
    finally:
        admin.dispose()
    return url.set(database=own).render_as_string(hide_password=False)


def system_env(bootstrap: str, data_dir: Path, app_id: str, kind: str = BROKER_KIND) -> dict:
    database = system_database(data_dir, app_id.replace("-", "_"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GC_")}
    env.update(
        {
            "GC_BROKER_URL": f"kafka://{bootstrap}",
            "GC_DATA_DIR": str(data_dir),
            "GC_APP_ID": app_id,
            "GC_DATABASE_URL": database,
            "GC_PARTITIONS": str(PARTITIONS),
            "PYTHONPATH": str(ROOT),
            "GC_WEB_ENABLED": "true",
            "GC_WEB_PORT": str(free_port()),
            "GC_REPLICATION_FACTOR": str(replication_factor(kind)),
            # A killed worker's partitions move on within seconds, not half a minute.
            "GC_SESSION_TIMEOUT": "10",
            # The scenarios' days are in February 2020: ticks of the wall clock would expire every pass
            # (and dead-letter every request as older than the retention). Tests tick as they need.
            "GC_CLOCK_SECONDS": "0",
        }
    )
    if kind.startswith("kafka"):  # Apache Kafka has transactions: Tansu has none
        env["GC_PROCESSING_GUARANTEE"] = "exactly_once"
    if kind.startswith("kafka3"):  # as the 3-node compose: a second worker keeps each table too
        env["GC_STANDBY_REPLICAS"] = "1"
    env["GC_STORE"] = STORE
    return env


async def start_system(
    broker, data_dir: Path, kind: str = BROKER_KIND, prefix: str = "gc.", env: dict | None = None
) -> System:
    """Topics, a client producer, a tap, one ready worker and one projector beside it on `broker`
    (`env`: settings of its own, over those of `system_env`)."""
    topics = Topics.with_prefix(prefix)
    await ensure_topics(
        broker.connection,
        topics.public() + [topics.pass_events],
        partitions=PARTITIONS,
        replication_factor=replication_factor(kind),
    )
    env = {
        **system_env(broker.bootstrap, data_dir, f"gc-test-{uuid.uuid4().hex[:6]}", kind),
        "GC_TOPIC_PREFIX": prefix,
        **(env or {}),
    }
    if getattr(broker, "secure", None) is not None:  # the system's own ACLs: its topic prefix, its app id
        from streams.dev.secure import acls

        await asyncio.to_thread(broker.create_acls, acls(broker.secure.principals(), prefix, env["GC_APP_ID"]))
    # On Kafka the clients write as a careful firm would: every replica, no duplicates on retry.
    durable = {"acks": "all", "enable_idempotence": True} if kind.startswith("kafka") else {}
    producer = AIOKafkaProducer(**broker.connection.kwargs(), linger_ms=1, **durable)
    await producer.start()
    tap = await Tap(broker.connection, topics.public(), isolation_level=isolation_level(kind)).start()
    sysm = System(broker.connection, topics, env, data_dir, producer, tap, [], cluster=broker)
    try:
        sysm.start_projector()  # joins its group while the worker starts
        await sysm.start_ready_worker()
    except BaseException:
        await sysm.close()
        raise
    return sysm


@pytest.fixture(scope="session")
async def system(broker, tmp_path_factory):
    sysm = await start_system(broker, tmp_path_factory.mktemp("system"))
    yield sysm
    await sysm.close()


@pytest.fixture(scope="module")
async def own_system(broker, tmp_path_factory, request):
    """A system with topics of its own (prefix from the test module's name), for tests that set
    reference data "now": kept out of the shared log, which the replay tests audit whole (a risk
    change effective now, followed in arrival order by requests of 2020, is a live order the replay
    rightly reports as not reproducible)."""
    prefix = f"{request.module.__name__.rsplit('.', 1)[-1].removeprefix('test_')}."
    sysm = await start_system(broker, tmp_path_factory.mktemp(prefix.rstrip(".")), prefix=prefix)
    yield sysm
    await sysm.close()
