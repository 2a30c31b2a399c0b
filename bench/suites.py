"""One function per measured row: each does one run and returns its figures.

Throughput runs pre-fill their input topic, start the process under test, and take the rate
from the output records' producer timestamps (first to last), so neither start-up nor the
bench's own reading is inside the measured span. Every run uses fresh topics and a fresh
consumer group, deleted afterwards where the broker allows it.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.connection import Connection
from streams.handlers import RecordMeta, Topics
from streams.settings import Settings
from streams.topics import ensure_topics

from . import workload
from .harness import OUT_DIR, Proc, Stamp, delete_topics, fill, rate_of, run_id, start_process, topic_records
from .workload import Message

__all__ = [
    "Context",
    "limit_run",
    "framework_run",
    "pipeline_run",
    "scan_run",
    "latency_runs",
    "routing_runs",
    "replay_runs",
    "handlers_in_process",
    "risk_change_runs",
    "state_runs",
]

# Faust and aiokafka members join a group only after the broker's join window: Tansu waits half
# the session timeout (Faust's default 60 s → 30 s per worker start). A 10 s session makes it
# 5 s; heartbeats stay at 3 s. This shortens start-up only: no measured span includes it.
FAUST_GROUP_ENV = {"BROKER_SESSION_TIMEOUT": "10", "BROKER_REBALANCE_TIMEOUT": "10"}


@dataclass
class Context:
    broker_url: str
    partitions: int = 4
    out_dir: Path = OUT_DIR
    timeout: float = 300.0
    log: object = print  # progress lines
    transactions: bool = False  # the broker has them (Apache Kafka): also measure exactly_once

    @property
    def connection(self) -> Connection:
        """The broker as every client of the bench reaches it (GC_KAFKA_* from the environment)."""
        return Connection.from_settings(Settings(broker_url=self.broker_url))

    @property
    def bootstrap(self) -> str:
        return self.connection.bootstrap

    @property
    def keys_dir(self) -> Path:
        return self.out_dir / "keys"


@dataclass
class Run:
    """One throughput run."""

    rate: float  # outputs per second, first to last output timestamp
    seconds: float  # that span
    outputs: int
    startup: float | None = None  # process start to first output (s), for information
    cpu_ms_per_output: float | None = None  # CPU of the process(es) under test, per output after the first batch
    extra: dict = field(default_factory=dict)


# --- helpers ----------------------------------------------------------------------------------------


async def _collect(
    ctx: Context,
    topics: list[str],
    procs: list[Proc],
    done,
    kind=lambda topic, value: "",
    isolation_level: str = "read_uncommitted",
) -> tuple[list[Stamp], float | None]:
    """Read the output topics from the beginning until `done(stamps)`; the records' timestamps.

    Records are counted, not end offsets: Tansu 0.6 under-reports a partition's end offset
    (by up to a batch). The rate comes from the records' producer timestamps, so when the
    bench reads them does not matter. Also returns the CPU milliseconds the processes spent
    per record from the first batch read to the last (contention-proof, unlike a rate).
    """
    consumer = AIOKafkaConsumer(
        **ctx.connection.kwargs(),
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
        fetch_max_wait_ms=500,
        isolation_level=isolation_level,
    )
    await consumer.start()
    stamps: list[Stamp] = []
    deadline = time.monotonic() + ctx.timeout
    cpu0 = first = None
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(ctx.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while not done(stamps):
            if time.monotonic() > deadline or not all(p.alive() for p in procs):
                tails = "\n".join(f"--- {p.log_path}\n{p.tail(1500)}" for p in procs)
                raise TimeoutError(
                    f"{len(stamps)} outputs on {', '.join(topics)} after {ctx.timeout:.0f}s, "
                    f"not done (alive: {all(p.alive() for p in procs)})\n{tails}"
                )
            batch = await consumer.getmany(timeout_ms=500, max_records=20000)
            for tp, records in batch.items():
                stamps += [Stamp(tp.topic, tp.partition, r.key, r.timestamp, kind(tp.topic, r.value)) for r in records]
            if cpu0 is None and stamps:
                cpu0, first = sum(p.cpu_seconds() for p in procs), len(stamps)
        cpu1 = sum(p.cpu_seconds() for p in procs)
    finally:
        await consumer.stop()
    per = (cpu1 - cpu0) * 1000 / (len(stamps) - first) if cpu0 is not None and len(stamps) > first else None
    return stamps, per


def _count(n: int):
    return lambda stamps: len(stamps) >= n


async def _cleanup(ctx: Context, *prefixes: str) -> None:
    """Delete a run's topics, and its working directory (database, Faust data, logs: kept only on failure)."""
    import shutil

    for prefix in prefixes:
        rid = prefix.removeprefix("bench-").rstrip(".")
        if len(rid) == 8 and (ctx.out_dir / rid).is_dir():
            shutil.rmtree(ctx.out_dir / rid, ignore_errors=True)
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**ctx.connection.kwargs())
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefixes)]
    finally:
        await admin.close()
    await delete_topics(ctx.connection, names)


def _first_output_after(stamps, started_wall: float) -> float:
    return min(s.timestamp_ms for s in stamps) / 1000.0 - started_wall


# --- 1. the limit: raw aiokafka passthrough ------------------------------------------------------------


async def limit_run(ctx: Context, messages: list[Message]) -> Run:
    return await _forward_run(
        ctx,
        messages,
        lambda rid, source, target: (
            ["-m", "bench.passthrough", ctx.bootstrap, source, target, f"bench-{rid}"],
            {},
            "passthrough.log",
        ),
    )


async def _forward_run(ctx: Context, messages: list[Message], command) -> Run:
    """Fill a fresh input topic, start a forwarder process, time its outputs on a fresh output topic."""
    rid = run_id()
    source, target = f"bench-{rid}.in", f"bench-{rid}.out"
    await ensure_topics(ctx.connection, [source, target], partitions=ctx.partitions)
    await fill(ctx.connection, source, messages, partitions=ctx.partitions)
    args, env, log_name = command(rid, source, target)
    started = time.time()
    proc = start_process(args, env, ctx.out_dir / rid / log_name)
    try:
        stamps, cpu = await _collect(ctx, [target], [proc], _count(len(messages)))
    finally:
        proc.stop()
    await _cleanup(ctx, f"bench-{rid}")
    rate, span = rate_of(stamps)
    return Run(rate, span, len(stamps), _first_output_after(stamps, started), cpu)


# --- 2. the framework: bare Faust forwarder --------------------------------------------------------------


async def framework_run(ctx: Context, messages: list[Message]) -> Run:
    def command(rid, source, target):
        env = {
            "BENCH_BROKER_URL": ctx.broker_url,
            "BENCH_APP_ID": f"bench-{rid}",
            "BENCH_IN": source,
            "BENCH_OUT": target,
            "BENCH_PARTITIONS": str(ctx.partitions),
            "BENCH_DATA_DIR": str(ctx.out_dir / rid / "faust"),
            **FAUST_GROUP_ENV,
        }
        return ["-m", "bench.bare_faust"], env, "bare_faust.log"

    return await _forward_run(ctx, messages, command)


# --- 3. the pipeline: `greenchannel worker` on realistic requests --------------------------------------


def worker_env(ctx: Context, rid: str, prefix: str) -> dict:
    """As tests/support/system.py system_env, plus a fresh topic prefix, app id and database per run."""
    data = ctx.out_dir / rid
    data.mkdir(parents=True, exist_ok=True)
    return {
        "GC_BROKER_URL": ctx.broker_url,
        "GC_DATA_DIR": str(data),
        "GC_KEY_DIR": str(ctx.keys_dir),
        "GC_APP_ID": f"bench-{rid}",
        "GC_DATABASE_URL": f"sqlite:///{data}/greenchannel.db",
        "GC_PARTITIONS": str(ctx.partitions),
        "GC_TOPIC_PREFIX": prefix,
        "GC_CLOCK_SECONDS": "0",
        **FAUST_GROUP_ENV,
    }  # no clock: the workload's days are in 2020 (see tests/support/system.py system_env)


WORKER = ("-m", "streams.cli", "worker")


def start_workers(ctx: Context, env: dict, rid: str, count: int, command=WORKER) -> list[Proc]:
    return [start_process(list(command), env, ctx.out_dir / rid / f"worker{i}.log") for i in range(count)]


async def _prepare_system(ctx: Context, topics: Topics, firms: list[Message], risks: list[Message]) -> None:
    await ensure_topics(ctx.connection, topics.public() + [topics.pass_events], partitions=ctx.partitions)
    await fill(ctx.connection, topics.enterprises, firms, partitions=ctx.partitions)
    await fill(ctx.connection, topics.risk, risks, partitions=ctx.partitions)


class _PipelineDone:
    """Every request answered, and every approved decision's pass issued by the tracker.

    The tracker's "issued" status is the last output a request causes; a worker fed a backlog
    decides first and tracks later, so a span that stopped at the last decision would leave
    part of the work outside it. A few pass-id collisions are dead-lettered instead of
    issued: when the statuses stop growing for 5 s with everything else in, the run is done.
    """

    def __init__(self, requests: int, topics: Topics) -> None:
        self.requests, self.topics = requests, topics
        self.seen, self.since = -1, time.monotonic()

    @staticmethod
    def kind(topic: str, value: bytes) -> str:
        if topic.endswith(".pass.decisions"):
            return "rejected" if b'"pass":null' in value else "approved"
        return ""

    def __call__(self, stamps: list[Stamp]) -> bool:
        answered = sum(1 for s in stamps if s.topic != self.topics.status)
        approved = sum(1 for s in stamps if s.kind == "approved")
        statuses = len(stamps) - answered
        if statuses != self.seen:
            self.seen, self.since = statuses, time.monotonic()
        return answered >= self.requests and (statuses >= approved or time.monotonic() - self.since > 5)


async def pipeline_run(
    ctx: Context,
    requests: list[Message],
    firms: list[Message],
    risks: list[Message],
    *,
    workers: int = 1,
    guarantee: str = "at_least_once",
) -> Run:
    """decisions/s from the first output to the last (decisions, dead letters, issued statuses); under
    exactly_once the outputs are read committed, as a reader downstream would."""
    rid = run_id()
    prefix = f"bench-{rid}."
    topics = Topics.with_prefix(prefix)
    await _prepare_system(ctx, topics, firms, risks)
    await fill(ctx.connection, topics.requests, requests, partitions=ctx.partitions)
    env = worker_env(ctx, rid, prefix) | {"GC_PROCESSING_GUARANTEE": guarantee}
    started = time.time()
    procs = start_workers(ctx, env, rid, workers)
    done = _PipelineDone(len(requests), topics)
    try:
        stamps, cpu = await _collect(
            ctx, [topics.decisions, topics.deadletter, topics.status], procs, done, done.kind, isolation(guarantee)
        )
    finally:
        for p in procs:
            p.stop()
    await _cleanup(ctx, prefix, f"bench-{rid}")
    answers = [s for s in stamps if s.topic != topics.status]
    times = sorted(s.timestamp_ms for s in stamps)
    span = (times[-1] - times[0]) / 1000.0
    rate = len(answers) / span if span > 0 else float("inf")
    decided_rate, decided_span = rate_of(answers)
    approved = sum(1 for s in answers if s.kind == "approved")
    cpu_per_decision = cpu * len(stamps) / len(answers) if cpu is not None else None
    return Run(
        rate,
        span,
        len(answers),
        _first_output_after(stamps, started),
        cpu_per_decision,
        {
            "dead_letters": sum(1 for s in answers if s.topic == topics.deadletter),
            "approved": approved,
            "issued_statuses": len(stamps) - len(answers),
            "decisions_only_rate": decided_rate,
            "decisions_only_seconds": decided_span,
        },
    )


# --- 3b. scans applied ------------------------------------------------------------------------------------


async def scan_run(ctx: Context, requests: list[Message], firms: list[Message], risks: list[Message]) -> Run:
    """Status events/s answering scans: a worker decides `requests`, then the scans of every pass
    it issued (each pass's in route order, keyed by pass number as checkpoints publish them) are
    produced as fast as the client goes; the rate is from the first scan answer to the last."""
    rid = run_id()
    prefix = f"bench-{rid}."
    topics = Topics.with_prefix(prefix)
    await _prepare_system(ctx, topics, firms, risks)
    decisions = _Receiver(ctx.connection, [topics.decisions], ctx.partitions)
    statuses = _StatusReceiver(ctx.connection, [topics.status], ctx.partitions)
    await decisions.start()
    await statuses.start()
    await fill(ctx.connection, topics.requests, requests, partitions=ctx.partitions)
    procs = start_workers(ctx, worker_env(ctx, rid, prefix), rid, 1)
    try:
        done = _PipelineDone(len(requests), topics)
        await _collect(ctx, [topics.decisions, topics.deadletter, topics.status], procs, done, done.kind)
        rng = random.Random(7)
        scans = []
        for _, _, value in decisions.got.values():
            body = orjson.loads(value)
            if body.get("pass"):
                for scan in workload_scans(body, rng):
                    scans.append((scan["scan_id"], body["pass"]["pass_id"].encode(), orjson.dumps(scan)))
        scans = _interleave(scans)
        cpu0 = procs[0].cpu_seconds()
        await fill(ctx.connection, topics.scans, [Message(k, v) for _, k, v in scans], partitions=ctx.partitions)
        await _wait_answers(statuses, [i for i, _, _ in scans], ctx.timeout, procs[0].alive)
        cpu = procs[0].cpu_seconds() - cpu0
    finally:
        await decisions.stop()
        await statuses.stop()
        for p in procs:
            p.stop()
    await _cleanup(ctx, prefix, f"bench-{rid}")
    times = sorted(statuses.created[i] for i, _, _ in scans)
    span = (times[-1] - times[0]) / 1000.0
    return Run(
        (len(times) - 1) / span if span > 0 else float("inf"),
        span,
        len(times),
        cpu_ms_per_output=1000 * cpu / len(times),
        extra={"passes": len({k for _, k, _ in scans})},
    )


# --- 4. latency at a fixed offered load ----------------------------------------------------------------------


class _Receiver:
    """Reads output topics from their end with a tight poll (`fetch_wait_ms`) and notes each record's receipt time."""

    def __init__(
        self,
        connection: Connection,
        topics: list[str],
        partitions: int,
        *,
        fetch_wait_ms: int = 5,
        isolation_level: str = "read_uncommitted",
    ) -> None:
        self.connection, self.topics, self.partitions = connection, topics, partitions
        self.fetch_wait_ms, self.isolation_level = fetch_wait_ms, isolation_level
        self.got: dict[str, tuple[float, str, bytes]] = {}  # id -> (perf_counter, topic, value)
        self.created: dict[str, int] = {}  # id -> the record's producer timestamp (ms)

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            **self.connection.kwargs(),
            enable_auto_commit=False,
            fetch_max_wait_ms=self.fetch_wait_ms,
            fetch_min_bytes=1,
            isolation_level=self.isolation_level,
        )
        await self.consumer.start()
        parts = [TopicPartition(t, p) for t in self.topics for p in range(self.partitions)]
        self.consumer.assign(parts)
        await self.consumer.seek_to_end(*parts)
        for tp in parts:  # resolve the end now, not at the first fetch
            await self.consumer.position(tp)
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=5)
            now = time.perf_counter()
            for tp, records in batch.items():
                for r in records:
                    ident = self.identify(tp.topic, r)
                    if ident is not None and ident not in self.got:
                        self.got[ident] = (now, tp.topic, r.value)
                        self.created[ident] = r.timestamp

    def identify(self, topic: str, record) -> str | None:
        return record.key.decode() if record.key else None

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        await self.consumer.stop()


class _StatusReceiver(_Receiver):
    def identify(self, topic: str, record) -> str | None:
        cause = orjson.loads(record.value).get("cause", "")
        return cause[5:] if cause.startswith("scan:") else None


async def _paced(
    producer: AIOKafkaProducer, topic: str, items: list[tuple[str, bytes, bytes]], rate: float, sent: dict[str, float]
) -> None:
    """Open-loop sends at a fixed rate: item i leaves at t0 + i/rate, whatever the answers do."""
    t0 = time.perf_counter()
    for i, (ident, key, value) in enumerate(items):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[ident] = time.perf_counter()
        await producer.send(topic, value, key=key)  # enqueued; delivery is not awaited
    await producer.flush()


async def _wait_answers(receiver: _Receiver, idents: list[str], timeout: float, alive) -> None:
    deadline = time.monotonic() + timeout
    while any(i not in receiver.got for i in idents):
        if time.monotonic() > deadline or not alive():
            missing = sum(i not in receiver.got for i in idents)
            raise TimeoutError(f"{missing}/{len(idents)} answers missing after {timeout}s")
        await asyncio.sleep(0.05)


def isolation(guarantee: str) -> str:
    """How a reader of the worker's outputs reads them: under exactly_once only what is committed
    (an output counts when a reader downstream can see it)."""
    return "read_committed" if guarantee == "exactly_once" else "read_uncommitted"


def percentiles(samples_ms: list[float]) -> dict:
    s = sorted(samples_ms)
    if not s:
        return {}

    def q(p: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]

    return {"p50": q(50), "p95": q(95), "p99": q(99), "max": s[-1], "mean": statistics.fmean(s), "n": len(s)}


async def latency_runs(
    ctx: Context,
    rate: float,
    seconds: float,
    runs: int,
    *,
    seed: int = 2020,
    fetch_wait_ms: int | None = None,
    guarantee: str = "at_least_once",
) -> dict:
    """One worker; per run, requests then the scans of the passes they got, each at `rate`/s.

    `fetch_wait_ms`: run the worker with that fetch wait (GC_FETCH_WAIT_MS) instead of its default.
    `guarantee`: the worker's processing guarantee (exactly_once needs Apache Kafka).
    """
    rid = run_id()
    prefix = f"bench-{rid}."
    topics = Topics.with_prefix(prefix)
    firms, risks = workload.reference(seed)
    await _prepare_system(ctx, topics, firms, risks)
    env = _latency_worker_env(ctx, rid, prefix, guarantee, fetch_wait_ms)
    procs = start_workers(ctx, env, rid, 1)
    producer = AIOKafkaProducer(**ctx.connection.kwargs(), linger_ms=0)
    await producer.start()
    decisions = _Receiver(
        ctx.connection, [topics.decisions, topics.deadletter], ctx.partitions, isolation_level=isolation(guarantee)
    )
    statuses = _StatusReceiver(ctx.connection, [topics.status], ctx.partitions, isolation_level=isolation(guarantee))
    rng = random.Random(seed)
    wait = int(env.get("GC_FETCH_WAIT_MS") or Settings.model_fields["fetch_wait_ms"].default)
    result = {
        "offered_per_second": rate,
        "seconds_per_phase": seconds,
        "worker_fetch_wait_ms": wait,
        "guarantee": guarantee,
        "runs": [],
    }
    try:
        await decisions.start()
        await statuses.start()
        await _warm_up(ctx, producer, topics, decisions, procs[0], rate, seed)
        count = max(10, int(rate * seconds))
        for run in range(runs):
            batch = workload.requests(count, seed=seed, start=run * count, tag=f"L{run}")
            row, busy = await _latency_run(producer, topics, decisions, statuses, procs[0], batch, rate, rng)
            result["runs"].append(row)
            _log_latency_run(ctx, run, runs, row, busy)
    finally:
        await decisions.stop()
        await statuses.stop()
        await producer.stop()
        for p in procs:
            p.stop()
    await _cleanup(ctx, prefix, f"bench-{rid}")
    return result


def _latency_worker_env(ctx: Context, rid: str, prefix: str, guarantee: str, fetch_wait_ms: int | None) -> dict:
    """The worker's environment for the latency runs: its guarantee and, if given, its fetch wait."""
    env = worker_env(ctx, rid, prefix)
    env["GC_PROCESSING_GUARANTEE"] = guarantee
    if fetch_wait_ms is not None:
        env["GC_FETCH_WAIT_MS"] = str(fetch_wait_ms)
    return env


async def _warm_up(
    ctx: Context, producer: AIOKafkaProducer, topics: Topics, decisions: _Receiver, worker: Proc, rate: float, seed: int
) -> None:
    """Ready when a warm-up batch is answered (start-up, group join, route cache of the mix),
    then a pause for the tracker and the projections to catch up with it."""
    warm = workload.requests(max(50, int(rate * 2)), seed=seed, tag="W")
    sent: dict[str, float] = {}
    await _paced(producer, topics.requests, [(m.key.decode(), m.key, m.value) for m in warm], rate, sent)
    await _wait_answers(decisions, list(sent), ctx.timeout, worker.alive)
    await asyncio.sleep(3)


async def _latency_run(
    producer: AIOKafkaProducer,
    topics: Topics,
    decisions: _Receiver,
    statuses: _Receiver,
    worker: Proc,
    batch: list[Message],
    rate: float,
    rng: random.Random,
) -> tuple[dict, tuple]:
    """One run: `batch` of requests at `rate`/s, then as many scans of the passes they got.
    (The run's figures; the worker's CPU busy share in each phase.)"""
    items = [(m.key.decode(), m.key, m.value) for m in batch]
    sent, req_ms, req_busy = await _timed_phase(producer, topics.requests, items, rate, decisions, worker)
    scans = _scans_of(_approved(decisions, sent, topics.decisions), rng)[: len(batch)]
    _, scan_ms, scan_busy = await _timed_phase(producer, topics.scans, scans, rate, statuses, worker)
    return {
        "request_decision_ms": percentiles(req_ms),
        "scan_status_ms": percentiles(scan_ms),
        "requests": len(req_ms),
        "scans": len(scan_ms),
        # a queue that grows through the phase shows as a later quarter much slower
        "request_p50_by_quarter_ms": _quarters(req_ms),
        "scan_p50_by_quarter_ms": _quarters(scan_ms),
        "worker_cpu_busy": {"requests": round(req_busy, 3), "scans": round(scan_busy, 3)},
        "samples": {"request_decision_ms": req_ms, "scan_status_ms": scan_ms},
    }, (req_busy, scan_busy)


async def _timed_phase(
    producer: AIOKafkaProducer,
    topic: str,
    items: list[tuple[str, bytes, bytes]],
    rate: float,
    receiver: _Receiver,
    worker: Proc,
) -> tuple[list[str], list[float], float]:
    """Send `items` at `rate`/s and wait for their answers: (their idents in send order, their
    latencies in ms, the worker's CPU busy share meanwhile)."""
    sent: dict[str, float] = {}
    cpu0, t0 = worker.cpu_seconds(), time.perf_counter()
    await _paced(producer, topic, items, rate, sent)
    await _wait_answers(receiver, list(sent), 60, worker.alive)
    busy = (worker.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
    return list(sent), [(receiver.got[i][0] - t) * 1000 for i, t in sent.items()], busy


def _approved(decisions: _Receiver, idents: list[str], decisions_topic: str) -> list[dict]:
    """The decisions, among the answers to `idents`, that issued a pass."""
    approved = []
    for i in idents:
        _, topic, value = decisions.got[i]
        if topic == decisions_topic:
            body = orjson.loads(value)
            if body.get("pass"):
                approved.append(body)
    return approved


def _scans_of(approved: list[dict], rng: random.Random) -> list[tuple[str, bytes, bytes]]:
    """The workload's scans of the passes issued, as (ident, key, value), in an order trucks could scan in."""
    scans = []
    for body in approved:
        for scan in workload_scans(body, rng):
            scans.append((scan["scan_id"], body["pass"]["pass_id"].encode(), orjson.dumps(scan)))
    # Trucks scan in route order; interleave the passes so each pass's scans keep their order.
    return _interleave(scans)


def _log_latency_run(ctx: Context, run: int, runs: int, last: dict, busy: tuple[float, float]) -> None:
    req_busy, scan_busy = busy
    ctx.log(
        f"  latency run {run + 1}/{runs}: request→decision p50/p99 "
        f"{last['request_decision_ms']['p50']:.0f}/{last['request_decision_ms']['p99']:.0f} ms "
        f"(p50 by quarter {last['request_p50_by_quarter_ms']}), scan→status p50/p99 "
        f"{last['scan_status_ms']['p50']:.0f}/{last['scan_status_ms']['p99']:.0f} ms; "
        f"worker CPU {req_busy:.0%} / {scan_busy:.0%} of a core"
    )


def _quarters(samples: list[float]) -> list[float]:
    """Median latency of each quarter of a phase, in send order."""
    n = len(samples)
    return [round(statistics.median(samples[i * n // 4 : (i + 1) * n // 4]), 1) for i in range(4)] if n >= 4 else []


def workload_scans(decision: dict, rng: random.Random) -> list[dict]:
    from streams.dev.simulator import scans_for

    return scans_for(decision, rng)


def _interleave(scans: list[tuple[str, bytes, bytes]]) -> list[tuple[str, bytes, bytes]]:
    by_pass: dict[bytes, list] = {}
    for s in scans:
        by_pass.setdefault(s[1], []).append(s)
    queues = list(by_pass.values())
    out = []
    depth = 0
    while True:
        row = [q[depth] for q in queues if depth < len(q)]
        if not row:
            return out
        out += row
        depth += 1


# --- 5. routing alone ----------------------------------------------------------------------------------------


def routing_runs(routes: int, runs: int, *, seed: int = 2020) -> dict:
    """Routes/s on the full prefecture graph: cold (every pair a cache miss), then warm (all hits).

    Random county pairs over the whole gazetteer, Wuhan (4201) blocked as in the workload.
    """
    from routing import Gazetteer, RegionGraph, RoutePlanner

    graph = RegionGraph.default()
    counties = list(Gazetteer.default().counties())
    blocked = graph.prefectures_in("4201")
    departure = datetime(2020, 2, 25, 10, 0, tzinfo=UTC)
    cold, warm, found = [], [], []
    for run in range(runs):
        rng = random.Random(seed + run)
        pairs = list(dict.fromkeys((rng.choice(counties), rng.choice(counties)) for _ in range(routes)))
        planner = RoutePlanner(graph, cache_size=len(pairs) + 10)
        t = time.perf_counter()
        got = [planner.plan(o, d, blocked=blocked, departure=departure) for o, d in pairs]
        cold.append(len(pairs) / (time.perf_counter() - t))
        t = time.perf_counter()
        for _ in range(3):
            for o, d in pairs:
                planner.plan(o, d, blocked=blocked, departure=departure)
        warm.append(3 * len(pairs) / (time.perf_counter() - t))
        found.append(sum(r is not None for r in got) / len(got))
    return {
        "cold": cold,
        "warm": warm,
        "pairs": routes,
        "counties": len(counties),
        "graph_nodes": len(graph),
        "routed_fraction": statistics.fmean(found),
    }


# --- 6. audit replay ---------------------------------------------------------------------------------------


async def replay_runs(ctx: Context, events: int, runs: int, *, seed: int = 2020) -> dict:
    """events/s of `streams.audit.run_replay` on a log filled by `streams.dev.loggen.generate_log`."""
    try:
        from streams.audit import run_replay
        from streams.dev.loggen import generate_log
    except ImportError as exc:
        return {"available": False, "reason": f"streams.audit not usable: {exc}"}
    from streams.bootstrap import build_pipeline

    rid = run_id()
    data = ctx.out_dir / rid
    data.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        broker_url=ctx.broker_url,
        topic_prefix=f"bench-{rid}.",
        partitions=ctx.partitions,
        data_dir=data,
        key_dir=ctx.keys_dir,
        database_url=f"sqlite:///{data}/greenchannel.db",
    )
    try:
        made = await generate_log(settings, events, seed=seed)
        total, core, ok = [], [], []
        for _ in range(runs):
            pipeline = build_pipeline(settings)  # fresh caches each run; built outside the timing
            report = await run_replay(settings, pipeline=pipeline)
            timing = report["timing"]
            total.append(timing["events_per_second"])
            core.append(timing["replay_events_per_second"])
            ok.append(report["ok"])
            ctx.log(
                f"  replay: {report['events']['total']} events, {timing['events_per_second']:.0f}/s end to end, "
                f"{timing['replay_events_per_second']:.0f}/s re-deciding, ok={report['ok']}"
            )
        return {
            "available": True,
            "events": report["events"],
            "generated": made,
            "end_to_end": total,
            "re_deciding": core,
            "ok": ok,
        }
    except Exception as exc:  # noqa: BLE001 — a module in progress: report, do not abort the bench
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        await _cleanup(ctx, f"bench-{rid}.")


# --- 7. the projector catching up ----------------------------------------------------------------------------


async def projector_runs(ctx: Context, log: list[tuple[str, Message]], runs: int) -> dict:
    """rows/s of `greenchannel projector` on a pre-filled decisions + status log, into a fresh SQLite
    file and a fresh PostgreSQL database (rounds alternate the two); PostgreSQL from
    tests/services/postgres.sh, or reported unavailable with the reason."""
    from .harness import postgres_server

    server, why = postgres_server()
    result = {"records": len(log), "sqlite": [], "postgresql": [] if server else None, "postgresql_reason": why}
    for run in range(runs):
        for backend in ("sqlite", "postgresql") if server else ("sqlite",):
            got = await _projector_backend_run(ctx, log, backend, server)
            result[backend].append(vars(got))
            ctx.log(
                f"  projector into {backend} ({run + 1}/{runs}): {got.rate:,.0f} rows/s over {got.seconds:.1f} s, "
                f"{got.cpu_ms_per_output:.3f} ms CPU/row, first commit {got.startup:.1f} s after start"
            )
    return result


async def _projector_backend_run(ctx: Context, log: list[tuple[str, Message]], backend: str, server: str | None) -> Run:
    from .harness import fresh_database

    if backend == "sqlite":
        return await projector_run(ctx, log)
    with fresh_database(server, f"bench_{run_id()}") as url:
        return await projector_run(ctx, log, url)


async def projector_run(ctx: Context, log: list[tuple[str, Message]], database_url: str | None = None) -> Run:
    """Fill fresh decisions and status topics, start one projector, time its committed offsets from
    the first commit to the last (a commit follows its batch's database transaction)."""
    rid = run_id()
    prefix = f"bench-{rid}."
    topics = Topics.with_prefix(prefix)
    await ensure_topics(
        ctx.connection, [topics.decisions, topics.status, topics.risk, topics.enterprises], partitions=ctx.partitions
    )
    for kind, topic in (("decisions", topics.decisions), ("statuses", topics.status)):
        await fill(ctx.connection, topic, [m for k, m in log if k == kind], partitions=ctx.partitions)
    env = worker_env(ctx, rid, prefix)
    env.update(GC_SESSION_TIMEOUT="10", **({"GC_DATABASE_URL": database_url} if database_url else {}))
    started = time.monotonic()
    proc = start_process(["-m", "streams.cli", "projector"], env, ctx.out_dir / rid / "projector.log")
    try:
        commits = await _commits(ctx, f"bench-{rid}-projector", [topics.decisions, topics.status], len(log), proc)
        cpu = proc.cpu_seconds()
    finally:
        proc.stop()
    _check_rows(env["GC_DATABASE_URL"], log)
    await _cleanup(ctx, prefix, f"bench-{rid}")
    (t0, n0, cpu0), (t1, n1, _) = commits[0], commits[-1]
    rows, span = n1 - n0, t1 - t0
    return Run(
        rows / span if span > 0 else float("inf"),
        span,
        n1,
        t0 - started,
        (cpu - cpu0) * 1000 / rows if rows else None,
        {"commits": len(commits), "first_commit_rows": n0},
    )


async def _commits(ctx: Context, group: str, topics: list[str], total: int, proc: Proc) -> list[tuple]:
    """(monotonic time, records committed, process CPU s) at each change of the group's committed
    offsets, polled every 20 ms, until all `total` records are committed."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**ctx.connection.kwargs())
    await admin.start()
    parts = [TopicPartition(t, p) for t in topics for p in range(ctx.partitions)]
    seen: list[tuple] = []
    deadline = time.monotonic() + ctx.timeout
    try:
        while not seen or seen[-1][1] < total:
            offsets = await admin.list_consumer_group_offsets(group, partitions=parts)
            done = sum(max(0, o.offset) for o in offsets.values())
            if done and (not seen or done != seen[-1][1]):
                seen.append((time.monotonic(), done, proc.cpu_seconds()))
            if time.monotonic() > deadline or not proc.alive():
                raise TimeoutError(
                    f"projector committed {done}/{total} records after {ctx.timeout:.0f}s "
                    f"(alive: {proc.alive()})\n{proc.tail(1500)}"
                )
            await asyncio.sleep(0.02)  # polling a counter with a deadline
    finally:
        await admin.close()
    return seen


def _check_rows(url: str, log: list[tuple[str, Message]]) -> None:
    """Every decision a shipment row, every status a pass_event row: the figure counts real rows."""
    from sqlmodel import Session, func, select

    from models.store.db import make_engine
    from models.store.tables import PassEvent, Shipment

    engine = make_engine(url)
    try:
        with Session(engine) as session:
            got = {
                k: session.exec(select(func.count()).select_from(t)).one()
                for k, t in (("decisions", Shipment), ("statuses", PassEvent))
            }
    finally:
        engine.dispose()
    want = {k: sum(1 for kind, _ in log if kind == k) for k in ("decisions", "statuses")}
    if got != want:
        raise AssertionError(f"projector wrote {got}, expected {want}")


# --- the handlers alone, in process (the worker's ceiling) ----------------------------------------------------


def build_bench_pipeline():
    """A Pipeline with a fixed signing key and the workload's reference data, no broker."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from models.passes import Signer
    from streams.bootstrap import build_pipeline
    from streams.settings import Settings

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    settings = Settings(_env_file=None, topic_prefix="gc.", partitions=4, geocoder="offline")
    pipeline = build_pipeline(settings, signer=Signer(key, "bench"), keys=key.public_key())
    firms, risks = workload.reference()
    for i, m in enumerate(firms):
        pipeline.on_enterprise(m.key, m.value, RecordMeta(pipeline.topics.enterprises, 0, i, 0))
    for i, m in enumerate(risks):
        pipeline.on_risk(m.key, m.value, RecordMeta(pipeline.topics.risk, 0, i, 0))
    return pipeline


def run_handlers(pipeline, requests: list[Message]) -> int:
    """What one worker's agents compute per request: the decision and the pass's `issued` status."""
    from models.passes import kafka_partition
    from streams.handlers import Tables

    tables = Tables.empty()
    outputs = 0
    for offset, m in enumerate(requests):
        partition = kafka_partition(m.key, pipeline.partitions) if m.key else 0
        meta = RecordMeta(pipeline.topics.requests, partition, offset, 1582617600000)
        outputs += len(pipeline.on_request(m.key, m.value, meta, tables=tables))
    return outputs


def handlers_in_process(requests: list[Message], runs: int) -> list[float]:
    """Requests/s through the handlers with no Kafka and no Faust (fresh caches each run)."""
    rates = []
    for _ in range(runs):
        pipeline = build_bench_pipeline()
        t = time.perf_counter()
        run_handlers(pipeline, requests)
        rates.append(len(requests) / (time.perf_counter() - t))
    return rates


# --- the tracker's state at scale, in process ---------------------------------------------------------------


def _templates(count: int = 1500):
    """Real pass states (and their decisions) from the workload, decided by the handlers."""
    from models.passes import kafka_partition
    from streams.handlers import Tables

    pipeline = build_bench_pipeline()
    tables = Tables.empty()
    for offset, m in enumerate(workload.requests(count, seed=2023)):
        partition = kafka_partition(m.key, pipeline.partitions) if m.key else 0
        meta = RecordMeta(pipeline.topics.requests, partition, offset, 1582617600000)
        pipeline.on_request(m.key, m.value, meta, tables=tables)
    return pipeline, tables


def _clone_tables(tables, inside: list, outside: list, total: int, touched: int):
    """`total` active passes on one partition, `touched` of them cloned from passes through the
    changed region (`inside`), the others from passes not touching it."""
    from models.stored import load_pass
    from streams.handlers import Tables

    inside, outside = ([load_pass(raw) for raw in group] for group in (inside, outside))
    out = Tables.empty()
    for i in range(total):
        template = inside[i % len(inside)] if i < touched else outside[i % len(outside)]
        pass_id, shipment_id = f"{i:012d}", f"bench-{i}"
        out.passes[pass_id], out.decided[shipment_id] = clone_pass(tables, template, pass_id, shipment_id)
        out.serials[pass_id] = shipment_id.encode()
    return out


def clone_pass(tables, template, pass_id: str, shipment_id: str) -> tuple[bytes, bytes]:
    """(pass state, decision) of a pass cloned from `template` (a PassState held in `tables`) with a
    new pass number and shipment id: the bytes the worker's tables hold."""
    from msgspec.structs import replace as _replace

    from models.stored import dump, load_decided

    state = _replace(template, pass_id=pass_id, shipment_id=shipment_id)
    decided = load_decided(tables.decided[template.shipment_id])  # its body a copy of its own
    return dump(state), dump(_replace(decided, pass_id=pass_id))  # as the worker stores them (models.stored)


def risk_change_runs(total: int, runs: int, *, share: float = 0.01) -> dict:
    """One risk change on a region crossed by `share` of `total` active passes of a partition:
    the time to re-evaluate, beside the same change with a tenth of the untouched passes (equal
    when untouched passes cost nothing), the one-off index build after a (re)assignment, and
    what visiting every pass (the design before) costs. Also bytes per active pass and memory."""
    from models.records import RegionRisk, parse_time
    from streams.commands import RiskChanged, encode
    from streams.handlers import Pipeline

    base, tables = _templates()
    pipeline = Pipeline(base.decider, base.tracker, base.topics, partitions=1)  # one partition holds them all
    region, inside, outside = _changed_region(base, tables)
    touched = int(total * share)
    change = encode(RiskChanged(RegionRisk(region.ljust(6, "0"), "high", parse_time("2020-02-25T06:00:00Z"))))
    result = {"total": total, "touched": touched, "region": region, "runs": []}
    for _ in range(runs):
        row = {}
        for label, n in (("full", total), ("tenth", touched + (total - touched) // 10)):
            row |= _risk_change_run(pipeline, _clone_tables(tables, inside, outside, n, touched), change, label)
        result["runs"].append(row)
    result |= _state_memory(pipeline, tables, inside, outside, total, touched)
    result["visit_every_pass_us_per_pass"] = _visit_every_pass_us(pipeline, tables, inside, outside, region)
    return result


def _changed_region(base, tables) -> tuple[str, list, list]:
    """The changed region: the busiest one that is on routes but is rarely an end; (it, the
    template passes crossing it, those that do not)."""
    from collections import Counter as _Counter

    from models.stored import load_pass

    states = {pid: load_pass(raw) for pid, raw in tables.passes.items()}
    regions = {pid: base.tracker.regions_of(state) for pid, state in states.items()}
    node_of = base.decider.graph.node_of
    ends = _Counter(r for state in states.values() for r in (node_of(state.origin), node_of(state.destination)))
    crossing = _Counter(r for rs in regions.values() for r in rs)
    region = max(crossing, key=lambda r: crossing[r] - 3 * ends[r])
    inside = [tables.passes[p] for p, rs in regions.items() if region in rs]
    outside = [tables.passes[p] for p, rs in regions.items() if region not in rs]
    return region, inside, outside


def _risk_change_run(pipeline, state, change: bytes, label: str) -> dict:
    """The index build and the change on the active passes `state`, timed; the risk is reset after."""
    import gc

    row = {}
    gc.collect()
    t = time.perf_counter()
    pipeline.index(0, state)
    row[f"index_build_ms_{label}"] = (time.perf_counter() - t) * 1000
    # The steady state of a worker: the index was built at the first change after the
    # partition was assigned, and the collector has since looked at it once. (The first
    # change pays the build and that one full collection, ~0.1 s per 100,000 passes.)
    gc.collect()
    t = time.perf_counter()
    outs = pipeline.on_pass_event(change, partition=0, tables=state)
    row[f"change_ms_{label}"] = (time.perf_counter() - t) * 1000
    row[f"events_{label}"] = len(outs)
    pipeline.decider.risk = type(pipeline.decider.risk)()  # the next run starts from no risk
    return row


def _state_memory(pipeline, tables, inside: list, outside: list, total: int, touched: int) -> dict:
    """Bytes per active pass in the worker's tables, and the memory they and the index take: what
    Python allocated for them (tracemalloc), not the RSS, which the earlier runs' freed memory
    hides (the allocator reuses it without growing the process)."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    state = _clone_tables(tables, inside, outside, total, touched)
    index = pipeline.index(0, state)
    gc.collect()
    allocated, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "memory_per_100k_mb": allocated / 1e6 * 100_000 / total,
        "bytes_per_pass": sum(
            len(k) + len(v) for t in (state.passes, state.serials, state.decided) for k, v in t.items()
        )
        / total,
        "indexed": len(index),
    }


def _visit_every_pass_us(pipeline, tables, inside: list, outside: list, region: str) -> float:
    """The design before: decode and re-evaluate every pass of the partition; µs per pass."""
    from models.records import RegionRisk, parse_time
    from models.stored import load_pass

    sample = _clone_tables(tables, inside, outside, 10_000, 100)
    risk = RegionRisk(region.ljust(6, "0"), "high", parse_time("2020-02-25T06:00:00Z"))
    pipeline.decider.risk.apply(risk)
    t = time.perf_counter()
    for pid in sorted(sample.passes):
        pipeline.tracker.risk_changed(load_pass(sample.passes[pid]), risk)
    us = (time.perf_counter() - t) * 1e6 / 10_000
    pipeline.decider.risk = type(pipeline.decider.risk)()
    return us


# --- the worker's state, in a real worker: memory and a restart's recovery -------------------------------

TIMED_WORKER = ("-m", "bench.timed_worker")  # the same worker, logging its assignment and recovery


async def state_runs(
    ctx: Context, requests: list[Message], firms: list[Message], risks: list[Message], runs: int
) -> dict:
    """Per run, one worker decides `requests` into active passes (its RSS before and after, per
    100,000 passes issued), then is stopped and a new one started on the same tables: the time
    until it answers a new request, and until its tables were recovered (its log's marks)."""
    probes = workload.approvable(2)  # one answered by each worker: new shipment ids, approved
    result = {"requests": len(requests), "runs": []}
    for run in range(runs):
        got = await state_run(ctx, requests, firms, risks, probes)
        result["runs"].append(got)
        again = got["restart"]
        ctx.log(
            f"  state {run + 1}/{runs}: {got['passes']:,} passes, worker RSS +{got['rss_growth_mb']:,.0f} MB "
            f"({got['rss_per_100k_mb']:,.0f} MB per 100,000; recovered: {got['rss_recovered_per_100k_mb']:,.0f}; "
            f"fill at {got['fill_rate']:,.0f} decisions/s); restarted: assigned {again['assigned_s']:.1f} s after "
            f"start, tables recovered {again['recovered_s']:.1f} s, first answer {again['first_answer_s']:.1f} s "
            f"after {again['answered_before']} others (an empty worker's: {got['cold_first_answer_s']:.1f} s)"
        )
    return result


async def state_run(
    ctx: Context, requests: list[Message], firms: list[Message], risks: list[Message], probes: list[Message]
) -> dict:
    rid = run_id()
    prefix = f"bench-{rid}."
    topics = Topics.with_prefix(prefix)
    await _prepare_system(ctx, topics, firms, risks)
    env = worker_env(ctx, rid, prefix)
    procs: list[Proc] = []
    try:
        # Ready when it has answered a first request; the fill then comes in faster than it decides.
        cold = await _first_answer(ctx, topics, probes[0], procs, lambda: start_workers(ctx, env, rid, 1)[0])
        got = await _fill_state(ctx, topics, procs[0], requests)
        got["restart"] = await _restart(
            ctx,
            topics,
            procs,
            probes[1],
            lambda: start_process(list(TIMED_WORKER), env, ctx.out_dir / rid / "worker-restarted.log"),
        )
        got["restart"]["changelog_records"] = await topic_records(
            ctx.connection, lambda t: t.startswith(env["GC_APP_ID"] + "-") and t.endswith("-changelog")
        )
        got["rss_recovered_per_100k_mb"] = (procs[-1].rss_bytes() - got["rss_before"]) / 1e6 * 100_000 / got["passes"]
    finally:
        for p in procs:
            p.stop()
    await _cleanup(ctx, prefix, f"bench-{rid}")
    return {**got, "cold_first_answer_s": cold["first_answer_s"]}


async def _first_answer(ctx: Context, topics: Topics, probe: Message, procs: list[Proc], spawn) -> dict:
    """Seconds from `spawn()` starting a worker (added to `procs`) to its decision on `probe`, sent
    right after (it waits on its topic until the worker is up): to the decision's producer
    timestamp, and to its receipt here; with the unix time of the spawn and how many other
    requests the worker answered first (again: ones its predecessor had not committed). The probe
    must be approved (a pass issued from the state the worker holds)."""
    # The time taken is the producer timestamp's: a long poll will do, and spares the broker that
    # the worker reads its changelogs from (seen here: receipts up to a minute behind, polled tightly).
    answers = _Receiver(ctx.connection, [topics.decisions, topics.deadletter], ctx.partitions, fetch_wait_ms=500)
    await answers.start()
    producer = AIOKafkaProducer(**ctx.connection.kwargs(), linger_ms=0)
    await producer.start()
    ident = probe.key.decode()
    try:
        started, started_at = time.perf_counter(), time.time()
        procs.append(spawn())
        await producer.send_and_wait(topics.requests, probe.value, key=probe.key)
        await _wait_answers(answers, [ident], ctx.timeout, procs[-1].alive)
    finally:
        await producer.stop()
        await answers.stop()
    received, topic, value = answers.got[ident]
    if topic != topics.decisions or not orjson.loads(value).get("pass"):
        raise AssertionError(f"probe {ident} was not approved ({topic}): {value[:300]!r}")
    return {
        "first_answer_s": answers.created[ident] / 1000 - started_at,
        "received_s": received - started,
        "started_at": started_at,
        "answered_before": sum(1 for at, _, _ in answers.got.values() if at < received),
    }


async def _fill_state(ctx: Context, topics: Topics, proc: Proc, requests: list[Message]) -> dict:
    """The worker's RSS growth over deciding `requests`, per 100,000 passes it issued (the `issued`
    statuses: refusals and dead letters hold no pass)."""
    rss0 = proc.rss_bytes()
    await fill(ctx.connection, topics.requests, requests, partitions=ctx.partitions)
    done = _PipelineDone(len(requests) + 1, topics)  # the topics hold the first probe's answer too
    stamps, _ = await _collect(ctx, [topics.decisions, topics.deadletter, topics.status], [proc], done, done.kind)
    growth = proc.rss_bytes() - rss0
    passes = sum(1 for s in stamps if s.topic == topics.status) - 1
    rate, _ = rate_of([s for s in stamps if s.topic != topics.status])
    return {
        "passes": passes,
        "rss_before": rss0,
        "rss_growth_mb": growth / 1e6,
        "rss_per_100k_mb": growth / 1e6 * 100_000 / passes,
        "fill_rate": rate,
    }


async def _restart(ctx: Context, topics: Topics, procs: list[Proc], probe: Message, spawn) -> dict:
    """Stop the worker (SIGTERM, wait for its exit), start another on its tables: seconds to its
    first answer, and to the marks of its log (partitions assigned, tables recovered)."""
    from .timed_worker import marks

    old = procs[-1]
    t = time.perf_counter()
    old.stop(timeout=60)
    stopped = {"stop_s": time.perf_counter() - t, "exit_code": old.popen.returncode}
    first = await _first_answer(ctx, topics, probe, procs, spawn)
    found = marks(procs[-1].log_path)
    if not found.get("recovered"):
        raise AssertionError(f"no recovery mark in {procs[-1].log_path}")
    started_at = first.pop("started_at")
    return {
        **stopped,
        **first,
        "assigned_s": found["assigned"][0] - started_at,
        "recovered_s": found["recovered"][-1] - started_at,
        "rebalances": len(found["assigned"]),
    }
