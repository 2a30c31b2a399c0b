"""`python -m bench.soak` (`make soak`): one worker under a steady open-loop load for a long time.

Requests at a fixed rate (by default half the maximum a short pipeline run measures on the same
broker first), the checkpoint scans of issued passes at a fixed share of that rate, a risk change
every minute (an operator raising, then lowering, a prefecture that about 6% of the routes cross)
and worker restarts spread over the run (by default a SIGKILL at a third, a graceful restart at two
thirds). By default the production configuration: Apache Kafka, exactly_once, RocksDB tables. Every
request and scan is counted by its id: each must end as exactly one decision, status or dead letter.
Writes bench/out/soak.json and bench/soak.png.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from models.records import format_time, parse_time
from streams.connection import Connection
from streams.handlers import Topics
from streams.metrics import group_lag

from . import workload
from .__main__ import conditions, start_broker
from .harness import OUT_DIR, ROOT, Proc, run_id, start_process
from .report import write_json
from .suites import (
    TIMED_WORKER,
    Context,
    _cleanup,
    _prepare_system,
    _Receiver,
    pipeline_run,
    worker_env,
    workload_scans,
)
from .timed_worker import marks

# The workload's day: request n is submitted n/rate seconds after it, and the risk changes take
# effect at the same clock, so the scenario's time runs at the wall clock's pace.
SCENARIO_START = datetime(2020, 2, 25, 8, 0, tzinfo=UTC)
# Sanmenxia (Henan), on the Xi'an–Zhengzhou corridor: on about 6% of the workload's routes and never
# an end of one, so a raise reroutes the active passes through it and nothing is refused outright.
REGION = "4112"
INTERNAL = "internal error"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="minutes of load (default 30)")
    p.add_argument("--rate", type=float, help="requests/s (default: --load × the measured maximum)")
    p.add_argument("--load", type=float, default=0.5, help="share of the measured maximum (default 0.5)")
    p.add_argument(
        "--max-requests",
        type=int,
        default=6000,
        help="requests of each pipeline run that measures the maximum (default 6000)",
    )
    p.add_argument("--max-runs", type=int, default=3, help="pipeline runs measuring the maximum (median; default 3)")
    p.add_argument("--scan-ratio", type=float, default=0.25, help="scans sent per request sent (default 0.25)")
    p.add_argument(
        "--broker",
        choices=["kafka", "tansu"],
        default="kafka",
        help="a 1-node Apache Kafka on disk (default) or the embedded Tansu, which keeps its log in memory",
    )
    p.add_argument("--broker-url", help="kafka://host:port of a running broker instead")
    p.add_argument("--guarantee", choices=["at_least_once", "exactly_once"], default="exactly_once")
    p.add_argument("--store", default="rocksdb://", help="the worker's tables (GC_STORE; default rocksdb://)")
    p.add_argument(
        "--restarts",
        type=_restarts,
        default=("kill", "graceful"),
        help="worker restarts, evenly spread over the load, comma-separated: kill (SIGKILL and a new one) or "
        "graceful (SIGTERM, a new one once it has exited); default kill,graceful; none: no restart",
    )
    p.add_argument("--risk-every", type=float, default=60.0, help="seconds between risk changes (default 60)")
    p.add_argument("--region", default=REGION, help=f"the prefecture whose risk changes (default {REGION})")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between RSS and lag samples (default 5)")
    p.add_argument(
        "--drain", type=float, default=300.0, help="seconds after the load to wait for the last answers (default 300)"
    )
    p.add_argument(
        "--max-rss-mb",
        type=int,
        default=12000,
        help="end the load early if the worker's RSS passes this (default 12000: the machine has 24 GB)",
    )
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--json", type=Path, default=OUT_DIR / "soak.json")
    p.add_argument("--png", type=Path, default=ROOT / "bench" / "soak.png")
    return p.parse_args(argv)


def _restarts(text: str) -> tuple[str, ...]:
    hows = tuple(h.strip() for h in text.split(",") if h.strip() and h.strip() != "none")
    bad = [h for h in hows if h not in ("kill", "graceful")]
    if bad:
        raise argparse.ArgumentTypeError(f"not kill or graceful: {', '.join(bad)}")
    return hows


# --- what came back, by input id --------------------------------------------------------------------


@dataclass(frozen=True)
class Via:
    """A pass issued on a route through the region: what decides whether a raise must re-evaluate it."""

    decided_at: str
    decided_ms: int  # the decision record's time
    region_at: int  # the region's first index on the route
    checkpoints: dict  # checkpoint id -> its index on the route
    multi: bool  # a multi-trip pass drives its whole route again: every region stays ahead
    valid_until: str

    @classmethod
    def of(cls, decision: dict, timestamp_ms: int, region: str) -> Via | None:
        the_pass = decision["pass"]
        adcodes = the_pass["route"]["adcodes"]
        at = next((i for i, a in enumerate(adcodes) if a.startswith(region)), None)
        if at is None:
            return None
        index = {a: i for i, a in enumerate(adcodes)}
        checkpoints = {c["checkpoint_id"]: index.get(c["adcode"], -1) for c in the_pass["route"]["checkpoints"]}
        return cls(
            decision["decided_at"], timestamp_ms, at, checkpoints, the_pass["trip"] == "multi", the_pass["valid_until"]
        )

    def behind_it(self, road: list, effective: datetime, applied_ms: float) -> bool:
        """Had the pass no more road through the region when the raise was applied (by `applied_ms`,
        the record time of the raise's last status): its truck scanned at or past the region (a single
        trip), or it ended; or had its validity ended when the raise took effect? Then the raise
        rightly leaves it alone. (The soak's trucks report their scans at once, each dated at its
        checkpoint's ETA: what the worker had read is what counts, not the scans' dates.)"""
        if parse_time(self.valid_until) <= effective:
            return True
        for _at, index, ended, ms in road:
            if ms <= applied_ms and (ended or (not self.multi and index >= self.region_at)):
                return True
        return False


@dataclass
class Tally:
    """Answers per input id, and the outputs that answer no input of ours."""

    t0: float  # unix time of the first send
    bin_s: float
    requests: collections.Counter = field(default_factory=collections.Counter)  # request id -> answers
    scans: collections.Counter = field(default_factory=collections.Counter)  # scan id -> answers
    issued: collections.Counter = field(default_factory=collections.Counter)  # pass id -> issued statuses
    risk_events: collections.Counter = field(default_factory=collections.Counter)  # risk cause -> statuses
    risk_passes: dict = field(default_factory=lambda: collections.defaultdict(set))  # risk cause -> pass ids
    through: dict = field(default_factory=dict)  # pass id -> Via: issued on a route via the region
    # pass id (of `through`) -> [(at, route index of a checkpoint scanned there, or -1; ended)]: when its
    # truck reached a checkpoint of its route, and when it ended (delivered, expired, revoked)
    road: dict = field(default_factory=lambda: collections.defaultdict(list))
    risk_applied_ms: dict = field(default_factory=dict)  # risk cause -> the record time of its last status
    other: collections.Counter = field(default_factory=collections.Counter)  # outputs of anything else
    internal_errors: list = field(default_factory=list)
    answered_bins: collections.Counter = field(default_factory=collections.Counter)  # (kind, bin) -> answers
    # unix time a restarted worker started -> the record time (ms) of the first answer made after it
    first_after: dict = field(default_factory=dict)

    def count(self, kind: str, ident: str, timestamp_ms: int) -> int:
        table = self.requests if kind == "request" else self.scans
        table[ident] += 1
        for started, first in self.first_after.items():
            if first is None and timestamp_ms >= started * 1000:
                self.first_after[started] = timestamp_ms
        self.answered_bins[kind, int((timestamp_ms / 1000 - self.t0) // self.bin_s)] += 1
        return table[ident]


class AnswerReader(_Receiver):
    """Reads the decisions, dead letters and statuses from their start, counting each answer by the
    id of the input it answers; passes issued for the first time go to `on_pass`."""

    def __init__(
        self,
        connection: Connection,
        topics: Topics,
        partitions: int,
        tally: Tally,
        on_pass,
        isolation: str,
        region: str,
    ):
        super().__init__(
            connection,
            [topics.decisions, topics.deadletter, topics.status],
            partitions,
            fetch_wait_ms=100,
            isolation_level=isolation,
        )
        self.names, self.tally, self.on_pass, self.region = topics, tally, on_pass, region
        self.records = 0

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, records in batch.items():
                for r in records:
                    self.take(tp.topic, r)
                    self.records += 1

    def take(self, topic: str, r) -> None:
        if topic == self.names.decisions:
            if self.tally.count("request", r.key.decode(), r.timestamp) == 1 and b'"pass":null' not in r.value:
                decision = orjson.loads(r.value)
                self.tally.answered_bins["approval", int((r.timestamp / 1000 - self.tally.t0) // self.tally.bin_s)] += 1
                self.on_pass(decision)
                via = Via.of(decision, r.timestamp, self.region)
                if via is not None:
                    self.tally.through[decision["pass"]["pass_id"]] = via
        elif topic == self.names.deadletter:
            self.dead_letter(orjson.loads(r.value), r.timestamp)
        else:
            self.status(orjson.loads(r.value), r.timestamp)

    def dead_letter(self, body: dict, timestamp_ms: int) -> None:
        if body["error"].startswith(INTERNAL):
            self.tally.internal_errors.append(
                {k: body.get(k) for k in ("topic", "partition", "offset", "key", "error")}
            )
        if body["topic"] == self.names.requests:
            self.tally.count("request", body["key"] or "", timestamp_ms)
        elif body["topic"] == self.names.scans:
            self.tally.count("scan", _scan_id(body), timestamp_ms)
        else:
            self.tally.other[f"dead letter of {body['topic']}"] += 1

    def status(self, body: dict, timestamp_ms: int) -> None:
        cause = body.get("cause") or ""
        via = self.tally.through.get(body.get("pass_id"))
        if via is not None:
            ended = body.get("status") in ("delivered", "expired", "revoked")
            index = via.checkpoints.get(body.get("checkpoint_id"), -1) if cause.startswith("scan:") else -1
            if ended or index >= 0:
                self.tally.road[body["pass_id"]].append((body["at"], index, ended, timestamp_ms))
        if cause.startswith("scan:"):
            self.tally.count("scan", cause[5:], timestamp_ms)
        elif cause.startswith("decision:"):
            self.tally.issued[body["pass_id"]] += 1
        elif cause.startswith("risk:"):
            self.tally.risk_events[cause] += 1
            self.tally.risk_passes[cause].add(body["pass_id"])
            self.tally.risk_applied_ms[cause] = max(self.tally.risk_applied_ms.get(cause, 0), timestamp_ms)
        else:
            self.tally.other[f"status {body.get('status')} ({cause.split(':', 1)[0]})"] += 1


def _scan_id(dead_letter: dict) -> str:
    try:
        return str(orjson.loads(dead_letter.get("value") or "")["scan_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"unreadable@{dead_letter.get('partition')}/{dead_letter.get('offset')}"


# --- the load -------------------------------------------------------------------------------------------


@dataclass
class Load:
    """Open-loop senders: requests at `rate`, scans at `scan_rate` from the passes issued so far."""

    producer: AIOKafkaProducer
    topics: Topics
    rate: float
    scan_rate: float
    t0: float  # monotonic start
    until: float  # monotonic end (brought forward if the worker outgrows its memory)
    bin_s: float
    queue_cap: int  # pending scans at most (passes beyond it are not scanned)
    sent_requests: set = field(default_factory=set)
    sent_scans: set = field(default_factory=set)
    pending: collections.deque = field(default_factory=collections.deque)
    passes_scanned: int = 0
    passes_not_scanned: int = 0
    scan_slots_empty: int = 0  # a scan was due and no issued pass had one left
    sent_bins: collections.Counter = field(default_factory=collections.Counter)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def on_pass(self, decision: dict) -> None:
        """A truck starts its route: its scans, in route order, keyed by pass number."""
        if len(self.pending) >= self.queue_cap:
            self.passes_not_scanned += 1
            return
        key = decision["pass"]["pass_id"].encode()
        self.pending.extend((s["scan_id"], key, orjson.dumps(s)) for s in workload_scans(decision, self.rng))
        self.passes_scanned += 1

    async def run(self) -> None:
        stream = workload.request_stream(tag="S", submitted=lambda n: SCENARIO_START + timedelta(seconds=n / self.rate))
        scans_due = 0
        while (now := time.monotonic()) < self.until:
            bin_ = int((now - self.t0) // self.bin_s)
            while len(self.sent_requests) < int((now - self.t0) * self.rate):
                m = next(stream)
                await self.producer.send(self.topics.requests, m.value, key=m.key)
                self.sent_requests.add(m.key.decode())
                self.sent_bins["request", bin_] += 1
            while scans_due < int((now - self.t0) * self.scan_rate):
                scans_due += 1
                if not self.pending:
                    self.scan_slots_empty += 1
                    continue
                ident, key, value = self.pending.popleft()
                await self.producer.send(self.topics.scans, value, key=key)
                self.sent_scans.add(ident)
                self.sent_bins["scan", bin_] += 1
            await asyncio.sleep(0.02)  # the next slice of sends is due in 20 ms
        await self.producer.flush()


async def risk_changes(
    producer: AIOKafkaProducer, topic: str, region: str, every: float, load: Load, changes: list[dict], log
) -> None:
    """An operator's entry every `every` seconds, raising the region to high, then lowering it to low;
    the first after a quarter period (so that none falls on the restart, at half the run)."""
    while (at := load.t0 + every * (len(changes) + 0.25)) < load.until:
        await asyncio.sleep(at - time.monotonic())
        level = "high" if len(changes) % 2 == 0 else "low"
        effective = format_time(SCENARIO_START + timedelta(seconds=time.monotonic() - load.t0))
        body = {"adcode": region, "level": level, "effective_at": effective, "note": "bench.soak"}
        sent_ms = time.time() * 1000
        await producer.send_and_wait(topic, orjson.dumps(body), key=region.encode())
        changes.append(
            {
                "t": time.monotonic() - load.t0,
                "level": level,
                "effective_at": effective,
                "sent_ms": sent_ms,
                "cause": f"risk:{region}:{level}:{effective}",
            }
        )
        log(f"  risk change {len(changes)}: {region} {level}")


def risk_escapes(changes: list[dict], tally: Tally) -> list[dict]:
    """Per raise, the passes it should have re-evaluated and did not: passes on a route through the
    region, active with the region still ahead of them when the raise took effect (not ended, not
    past it, still valid: `Via.behind_it`), that got no status of the raise. Those decided before it
    took effect (`not_reevaluated`; how many of them the worker decided after the raise was on the
    broker), and those decided while it was high (`decided_while_high_left`: decided without
    knowing it and never rerouted after). `decided_while_high` counts every pass decided through
    the region while it was high (event time), rerouted after or not; `left_alone_rightly`, the
    passes the raise rightly did not touch."""
    out = []
    bounds = [parse_time(c["effective_at"]) for c in changes] + [datetime.max.replace(tzinfo=UTC)]
    for k, change in enumerate(changes):
        if change["level"] != "high":
            continue
        since = bounds[k - 1] if k else datetime.min.replace(tzinfo=UTC)
        visited = tally.risk_passes.get(change["cause"], set())
        effective, applied_ms = bounds[k], tally.risk_applied_ms.get(change["cause"], change["sent_ms"])

        def left(p: str, via: Via) -> bool:
            return p not in visited and not via.behind_it(tally.road.get(p, []), effective, applied_ms)  # noqa: B023

        before = [(p, v) for p, v in tally.through.items() if since <= parse_time(v.decided_at) < effective]
        during = [(p, v) for p, v in tally.through.items() if effective <= parse_time(v.decided_at) < bounds[k + 1]]
        escaped = [(p, v) for p, v in before if left(p, v)]
        late = [(p, (v.decided_ms - change["sent_ms"]) / 1000) for p, v in escaped if v.decided_ms > change["sent_ms"]]
        out.append(
            {
                "change": change["cause"],
                "not_reevaluated": len(escaped),
                "decided_after_the_raise": len(late),
                "decided_after_s_median": _median([s for _, s in late]),
                "examples": late[:5] or [(p, v.decided_at, tally.road.get(p, [])) for p, v in escaped[:5]],
                "left_alone_rightly": sum(p not in visited for p, _ in before) - len(escaped),
                "decided_while_high": len(during),
                "decided_while_high_left": sum(left(p, v) for p, v in during),
                "while_high_examples": [p for p, v in during if left(p, v)][:5],
            }
        )
    return out


# --- watching the worker -------------------------------------------------------------------------------


class Watch:
    """Every `every` s: the worker's RSS, its group's lag, what was sent and answered so far."""

    def __init__(self, connection: Connection, group: str, inputs: list[str], partitions: int) -> None:
        self.connection, self.group = connection, group
        self.parts = [TopicPartition(t, p) for t in inputs for p in range(partitions)]
        self.samples: list[dict] = []

    async def start(self) -> None:
        self.admin = AIOKafkaAdminClient(**self.connection.kwargs())
        await self.admin.start()
        self.consumer = AIOKafkaConsumer(**self.connection.kwargs(), enable_auto_commit=False)
        await self.consumer.start()

    async def lag(self) -> tuple[int, int]:
        """(records on the worker's inputs not yet committed by its group, the group's committed total)."""
        lag = await group_lag(self.admin, self.consumer, self.group, self.parts)
        return sum(behind for behind, _ in lag.values()), sum(done for _, done in lag.values())

    async def sample(self, t: float, worker: Proc | None, load: Load, reader: AnswerReader) -> dict:
        try:
            rss = worker.rss_bytes() / 1e6 if worker is not None and worker.alive() else None
        except (OSError, ValueError):
            rss = None
        try:
            lag, committed = await self.lag()
        except Exception as exc:  # noqa: BLE001 — a sample missed is reported as missing, not fatal
            lag = committed = None
            print(f"lag sample failed: {exc}", file=sys.stderr)
        row = {
            "t": round(t, 1),
            "rss_mb": rss,
            "lag": lag,
            "committed": committed,
            "sent_requests": len(load.sent_requests),
            "sent_scans": len(load.sent_scans),
            "answered_requests": len(reader.tally.requests),
            "answered_scans": len(reader.tally.scans),
            "pending_scans": len(load.pending),
            "worker_cpu_s": worker.cpu_seconds() if worker else None,
        }
        self.samples.append(row)
        return row

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()


# --- the run -----------------------------------------------------------------------------------------------


async def measure_max(ctx: Context, args) -> dict:
    """Decisions/s of one worker on a pre-filled requests topic (the bench's pipeline run) on this
    broker: the median of `--max-runs` runs (the shared machine's load moves a single one a lot)."""
    firms, risks = workload.reference()
    rates = []
    for n in range(args.max_runs):
        run = await pipeline_run(
            ctx, workload.requests(args.max_requests, tag=f"M{n}"), firms, risks, guarantee=args.guarantee
        )
        rates.append(run.rate)
        ctx.log(
            f"maximum, run {n + 1}/{args.max_runs}: {run.rate:,.0f} decisions/s over {run.seconds:.1f} s "
            f"({run.outputs:,} requests, {run.cpu_ms_per_output:.2f} ms CPU/decision)"
        )
    return {"median": statistics.median(rates), "runs": rates}


async def restart(procs: list[Proc], how: str, spawn, t0: float, tally: Tally, log) -> dict:
    """Stop the worker (SIGTERM and wait for its exit, or SIGKILL) and start a new one on the same
    data directory; the tally notes the new worker's first answer."""
    old = procs[-1]
    began = time.monotonic()
    if how == "kill":
        old.popen.kill()
        old.popen.wait()
    else:
        await asyncio.to_thread(old.stop, 60)
    stopped = time.monotonic()
    started_at = time.time()
    tally.first_after[started_at] = None
    procs.append(spawn())
    log(f"  worker restarted ({how}): old one gone after {stopped - began:.1f} s, exit code {old.popen.returncode}")
    return {
        "how": how,
        "t": began - t0,
        "stop_s": stopped - began,
        "exit_code": old.popen.returncode,
        "started_at": started_at,
        "new_started_t": stopped - t0,
    }


def _restart_figures(
    restarted: dict, worker: Proc, tally: Tally, samples: list[dict], wall0: float, per_s: float
) -> dict:
    """A restart's figures once the run is over: the new worker's log marks, its first answer (the
    record time of the first answer made after it started) and its catch-up: the first sample after
    that answer whose lag is back to its level before the restart (twice the median lag of the
    minute before, and at least a second of inputs, `per_s`)."""
    started_at = restarted.pop("started_at")
    out = restarted | _recovery(worker, started_at, wall0)
    first = tally.first_after.get(started_at)
    out["first_answer_s"] = None if first is None else first / 1000 - started_at
    t, since = restarted["t"], restarted["new_started_t"]
    before = [s["lag"] for s in samples if t - 60 <= s["t"] < t and s["lag"] is not None]
    normal = out["lag_before"] = max(2 * statistics.median(before or [0]), per_s)
    answered = None if first is None else since + out["first_answer_s"]
    back = None
    if answered is not None:
        late = (s for s in samples if s["t"] >= answered and s["lag"] is not None and s["lag"] <= normal)
        back = next((s["t"] for s in late), None)
    out["caught_up_s"] = None if back is None else back - since
    return out


async def soak(ctx: Context, args, rate: float) -> dict:
    rid = run_id()
    prefix = f"bench-{rid}."
    topics = Topics.with_prefix(prefix)
    firms, risks = workload.reference()
    await _prepare_system(ctx, topics, firms, risks)
    env = worker_env(ctx, rid, prefix) | {"GC_PROCESSING_GUARANTEE": args.guarantee, "GC_STORE": args.store}

    def spawn() -> Proc:
        return start_process(list(TIMED_WORKER), env, ctx.out_dir / rid / f"worker{len(procs)}.log")

    isolation = "read_committed" if args.guarantee == "exactly_once" else "read_uncommitted"
    producer = AIOKafkaProducer(**ctx.connection.kwargs(), linger_ms=5)
    watch = Watch(
        ctx.connection,
        env["GC_APP_ID"],
        [topics.requests, topics.scans, topics.risk, topics.pass_events],
        ctx.partitions,
    )
    procs: list[Proc] = []
    tasks: list[asyncio.Task] = []
    try:
        await producer.start()
        await watch.start()
        procs.append(spawn())
        await _ready(ctx, producer, topics, procs[-1], isolation)
        return await _load_with_restart(ctx, args, rate, rid, topics, producer, watch, procs, spawn, tasks, isolation)
    finally:
        for task in tasks:
            task.cancel()
        for p in procs:
            p.stop()
        await watch.stop()
        await producer.stop()
        await _cleanup(ctx, prefix, f"bench-{rid}")


async def _load_with_restart(
    ctx: Context,
    args,
    rate: float,
    rid: str,
    topics: Topics,
    producer: AIOKafkaProducer,
    watch: Watch,
    procs: list[Proc],
    spawn,
    tasks: list[asyncio.Task],
    isolation: str,
) -> dict:
    """The load on the ready worker, its restarts, the drain: the soak's result. The tasks
    started go into `tasks` (the caller cancels them), the new workers into `procs`."""
    seconds = args.minutes * 60
    t0, wall0 = time.monotonic(), time.time()
    tally = Tally(wall0, args.sample)
    load = Load(
        producer,
        topics,
        rate,
        rate * args.scan_ratio,
        t0,
        t0 + seconds,
        args.sample,
        queue_cap=int(60 * rate * args.scan_ratio),
    )
    reader = AnswerReader(ctx.connection, topics, ctx.partitions, tally, load.on_pass, isolation, args.region)
    await reader.start()
    at = [seconds * (k + 1) / (len(args.restarts) + 1) for k in range(len(args.restarts))]
    _announce(ctx, args, rate, at)
    changes: list[dict] = []
    notes: dict = {}
    restarting = asyncio.Event()
    sender = asyncio.create_task(load.run())
    tasks.extend(
        [
            sender,
            asyncio.create_task(_sampling(ctx, args, watch, procs, load, reader, t0, restarting, notes)),
            asyncio.create_task(
                risk_changes(producer, topics.risk, args.region, args.risk_every, load, changes, ctx.log)
            ),
        ]
    )
    restarts = []
    for how, t in zip(args.restarts, at, strict=True):
        await _watch_tasks(tasks, seconds=t0 + t - time.monotonic())
        restarting.set()
        restarts.append((await restart(procs, how, spawn, t0, tally, ctx.log), procs[-1]))
        restarting.clear()
    await _watch_tasks(tasks, until=sender)
    tasks[2].cancel()
    drained = await _drain(load, tally, args.drain, procs[-1], watch, ctx.log)
    await asyncio.sleep(args.sample + 5)  # late duplicates and a last lag sample after the drain
    tasks[1].cancel()
    await reader.stop()
    per_s = rate * (1 + args.scan_ratio)
    restarted = [_restart_figures(r, worker, tally, watch.samples, wall0, per_s) for r, worker in restarts]
    return _result(rid, args, rate, seconds, load, tally, watch, changes, restarted, drained, reader) | notes


def _announce(ctx: Context, args, rate: float, at: list[float]) -> None:
    ctx.log(
        f"soak: {rate:,.0f} requests/s and {rate * args.scan_ratio:,.0f} scans/s for {args.minutes:g} min, "
        f"{args.guarantee}, {args.store} tables, a risk change every {args.risk_every:g} s, restarts: "
        + (", ".join(f"{how} at {t / 60:.1f} min" for how, t in zip(args.restarts, at, strict=True)) or "none")
    )


async def _sampling(
    ctx: Context,
    args,
    watch: Watch,
    procs: list[Proc],
    load: Load,
    reader: AnswerReader,
    t0: float,
    restarting: asyncio.Event,
    notes: dict,
) -> None:
    """Every `args.sample` s, a sample of the current worker; fails when the worker dies outside a
    restart, and ends the load early (noted in `notes`) when its RSS passes `args.max_rss_mb`."""
    while True:
        row = await watch.sample(time.monotonic() - t0, procs[-1], load, reader)
        if len(watch.samples) % 12 == 0:
            ctx.log(
                f"  {row['t'] / 60:5.1f} min: sent {row['sent_requests']:,}/{row['sent_scans']:,}, "
                f"answered {row['answered_requests']:,}/{row['answered_scans']:,}, lag {row['lag']}, "
                f"RSS {row['rss_mb'] or 0:,.0f} MB"
            )
        if not procs[-1].alive() and not restarting.is_set():
            raise RuntimeError(f"the worker died:\n{procs[-1].tail(2000)}")
        if (row["rss_mb"] or 0) > args.max_rss_mb and time.monotonic() < load.until:
            load.until = time.monotonic()
            notes["stopped_early"] = f"worker RSS {row['rss_mb']:,.0f} MB > {args.max_rss_mb:,} MB at {row['t']:.0f} s"
            ctx.log(f"[stopping the load: {notes['stopped_early']}]")
        await asyncio.sleep(args.sample - (time.monotonic() - t0) % args.sample)


async def _watch_tasks(
    tasks: list[asyncio.Task], *, until: asyncio.Task | None = None, seconds: float | None = None
) -> None:
    """Wait for the task `until`, or `seconds`; a task of `tasks` failing meanwhile (the sampler
    seeing the worker dead) raises its error."""
    deadline = None if seconds is None else time.monotonic() + seconds
    pending = set(tasks)
    while pending and not (until is not None and until.done()):
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    if until is not None:
        until.result()


async def _ready(ctx: Context, producer: AIOKafkaProducer, topics: Topics, worker: Proc, isolation: str) -> None:
    """The worker answers a warm-up request (started, group joined): the soak starts on a live worker."""
    from .suites import _wait_answers

    probe = workload.approvable(1, tag="W")[0]
    answers = _Receiver(
        ctx.connection, [topics.decisions], ctx.partitions, fetch_wait_ms=200, isolation_level=isolation
    )
    await answers.start()
    try:
        await producer.send_and_wait(topics.requests, probe.value, key=probe.key)
        await _wait_answers(answers, [probe.key.decode()], ctx.timeout, worker.alive)
    finally:
        await answers.stop()


async def _drain(load: Load, tally: Tally, timeout: float, worker: Proc, watch: Watch, log) -> dict:
    """Wait until every request and scan sent has an answer, and the worker has committed every input
    (the risk changes' broadcasts on the pass topic too: a raise's re-evaluations are counted only
    once they are done), or `timeout`: seconds it took."""
    began = time.monotonic()
    while True:
        missing = (len(load.sent_requests - tally.requests.keys()), len(load.sent_scans - tally.scans.keys()))
        lag = (await watch.lag())[0] if missing == (0, 0) else None
        if lag == 0 or time.monotonic() - began > timeout or not worker.alive():
            log(f"drained in {time.monotonic() - began:.0f} s; unanswered requests/scans: {missing}; lag {lag}")
            return {"seconds": time.monotonic() - began, "complete": missing == (0, 0), "lag": lag}
        await asyncio.sleep(1)  # polling the answers and the group's lag, with a deadline


def _recovery(worker: Proc, started_at: float, wall0: float) -> dict:
    """The restarted worker's log marks: partitions assigned, tables recovered (seconds after its start)."""
    found = marks(worker.log_path)
    out = {}
    for name in ("assigned", "recovered"):
        if found.get(name):
            out[f"{name}_s"] = found[name][-1] - started_at
            out[f"{name}_t"] = found[name][-1] - wall0
    return out


def _exactly_once(sent: set, answers: collections.Counter) -> dict:
    """How the answers match what was sent: each answered once, none missing, none unexpected."""
    dup = [i for i, n in answers.items() if n > 1 and i in sent]
    missing = sorted(sent - answers.keys())
    unexpected = sorted(answers.keys() - sent)
    return {
        "sent": len(sent),
        "answered": len(sent & answers.keys()),
        "answers": sum(answers.values()),
        "duplicates": len(dup),
        "duplicate_answers": sum(answers[i] - 1 for i in dup),
        "missing": len(missing),
        "unexpected": len(unexpected),
        "examples": {"duplicates": dup[:10], "missing": missing[:10], "unexpected": unexpected[:10]},
    }


def _rates(args, load: Load, tally: Tally) -> list[dict]:
    """Requests and scans sent and answered, and approvals, per second in each sampling bin."""
    bins = sorted({b for _, b in load.sent_bins} | {b for _, b in tally.answered_bins})
    return [
        {
            "t": b * args.sample,
            **{
                f"{d}_{k}": c[k, b] / args.sample
                for d, c in (("sent", load.sent_bins), ("answered", tally.answered_bins))
                for k in ("request", "scan")
            },
            "approvals": tally.answered_bins["approval", b] / args.sample,
        }
        for b in bins
        if b >= 0
    ]


def _lag_figures(samples: list[dict], seconds: float, restarted: list[dict]) -> dict:
    """The worker group's lag: its peak, its peak after the first restart, at the end of the load, last."""
    first = restarted[0]["t"] if restarted else 0.0
    after = [s["lag"] for s in samples if s["lag"] is not None and s["t"] >= first]
    return {
        "peak": max((s["lag"] for s in samples if s["lag"] is not None), default=None),
        "peak_after_restart": max(after, default=None),
        "end_of_load": next((s["lag"] for s in samples if s["t"] >= seconds and s["lag"] is not None), None),
        "last": after[-1] if after else None,
    }


def _result(
    rid, args, rate, seconds, load: Load, tally: Tally, watch: Watch, changes, restarted, drained, reader
) -> dict:
    for change in changes:
        change["statuses"] = tally.risk_events.get(change["cause"], 0)
    samples = watch.samples
    rates = _rates(args, load, tally)
    rss = [s["rss_mb"] for s in samples if s["rss_mb"] is not None]
    return {
        "run": rid,
        "minutes": args.minutes,
        "rate": rate,
        "scan_rate": rate * args.scan_ratio,
        "requests": _exactly_once(load.sent_requests, tally.requests),
        "scans": _exactly_once(load.sent_scans, tally.scans),
        "internal_errors": len(tally.internal_errors),
        "internal_error_examples": tally.internal_errors[:10],
        "issued": {"passes": len(tally.issued), "issued_twice": sum(1 for n in tally.issued.values() if n > 1)},
        "approvals": sum(n for (kind, _), n in tally.answered_bins.items() if kind == "approval"),
        "passes_scanned": load.passes_scanned,
        "passes_not_scanned": load.passes_not_scanned,
        "scan_slots_empty": load.scan_slots_empty,
        "other_outputs": dict(tally.other),
        "risk_changes": changes,
        "risk_escapes": risk_escapes(changes, tally),
        "restarts": restarted,
        "drain": drained,
        "rss_mb": {"start": rss[0] if rss else None, "end": rss[-1] if rss else None, "peak": max(rss, default=None)},
        "lag": _lag_figures(samples, seconds, restarted),
        "answered_per_s_median": {
            k: _median([r[f"answered_{k}"] for r in rates if r["t"] < seconds]) for k in ("request", "scan")
        },
        "samples": samples,
        "rates": rates,
        "records_read": reader.records,
    }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --- the report ---------------------------------------------------------------------------------------------


def _risk_rows(changes: list[dict], escapes: list[dict]) -> list[tuple[str, str]]:
    """The table's rows about the risk changes and the passes they should have re-evaluated."""
    return [
        ("risk changes (statuses they caused)", f"{len(changes)} ({', '.join(str(c['statuses']) for c in changes)})"),
        (
            "raises: passes via the region not re-evaluated (decided after the raise was sent)",
            ", ".join(f"{e['not_reevaluated']} ({e['decided_after_the_raise']})" for e in escapes) or "none",
        ),
        (
            "passes decided via the region while it was high (left there, never rerouted)",
            f"{sum(e['decided_while_high'] for e in escapes)} ({sum(e['decided_while_high_left'] for e in escapes)})",
        ),
        (
            "risk escapes: passes left on a route through the high region (passes rightly left alone)",
            f"{sum(e['not_reevaluated'] + e['decided_while_high_left'] for e in escapes)} "
            f"({sum(e['left_alone_rightly'] for e in escapes)})",
        ),
    ]


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def table_rows(res: dict) -> list[tuple[str, str]]:
    """(figure, value) for the console and the README."""

    def inputs(name: str) -> list[tuple[str, str]]:
        x = res[name]
        return [
            (f"{name} sent / answered", f"{x['sent']:,} / {x['answered']:,}"),
            (f"{name} answered twice (duplicates) / missing", f"{x['duplicates']:,} / {x['missing']:,}"),
        ]

    rss, lag = res["rss_mb"], res["lag"]
    per_s = res["answered_per_s_median"]
    changes = res["risk_changes"]
    escapes = res["risk_escapes"]
    maximum = res.get("measured_max_per_s")
    return [
        (
            "maximum measured (median of runs)",
            f"{maximum['median']:,.0f} decisions/s ({', '.join(f'{x:,.0f}' for x in maximum['runs'])})"
            if maximum
            else "not measured (--rate)",
        ),
        (
            "load",
            f"{res['rate']:,.0f} requests/s + {res['scan_rate']:,.0f} scans/s for {res['minutes']:g} min"
            + (f"; stopped early: {res['stopped_early']}" if res.get("stopped_early") else ""),
        ),
        *inputs("requests"),
        *inputs("scans"),
        ("internal errors (dead letters)", f"{res['internal_errors']:,}"),
        (
            "approved decisions; passes issued (issued twice)",
            f"{res['approvals']:,}; {res['issued']['passes']:,} ({res['issued']['issued_twice']:,})",
        ),
        *_risk_rows(changes, escapes),
        *[
            (
                f"restart {n}: {rs['how']} at {rs['t'] / 60:.1f} min",
                f"stopped in {rs['stop_s']:.1f} s; new worker assigned {_s(rs.get('assigned_s'))}, recovered "
                f"{_s(rs.get('recovered_s'))}, first answer {_s(rs.get('first_answer_s'))} after its start; "
                f"caught up {_s(rs.get('caught_up_s'))} after its start "
                f"(lag ≤ {rs['lag_before']:,.0f}: its level before)",
            )
            for n, rs in enumerate(res["restarts"], 1)
        ],
        ("worker RSS start → end (peak)", f"{rss['start']:,.0f} → {rss['end']:,.0f} MB ({rss['peak']:,.0f})"),
        (
            "consumer lag peak / after the first restart / at the end",
            f"{lag['peak']:,} / {lag['peak_after_restart']:,} / {lag['last']:,} records",
        ),
        (
            "answered per s, median of 5-s bins (requests / scans)",
            f"{per_s['request'] or 0:,.0f} / {per_s['scan'] or 0:,.0f}",
        ),
        ("drain after the load", f"{res['drain']['seconds']:.0f} s, complete: {res['drain']['complete']}"),
    ]


def plot(res: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, r = res["samples"], res["rates"]
    fig, axes = plt.subplots(3, 1, figsize=(12, 9), sharex=True)
    minutes = [x["t"] / 60 for x in s]
    axes[0].plot(minutes, [x["rss_mb"] for x in s], color="tab:purple")
    axes[0].set_ylabel("worker RSS, MB")
    axes[1].plot(minutes, [x["lag"] for x in s], color="tab:red")
    axes[1].set_ylabel("consumer lag, records")
    t = [x["t"] / 60 for x in r]
    for key, style in (
        ("sent_request", "tab:gray"),
        ("answered_request", "tab:blue"),
        ("approvals", "tab:cyan"),
        ("sent_scan", "tab:olive"),
        ("answered_scan", "tab:green"),
    ):
        axes[2].plot(
            t, [x[key] for x in r], label=key.replace("_", " ").removesuffix("s") + "s/s", color=style, linewidth=0.9
        )
    axes[2].set_ylabel("per second (5-s bins)")
    axes[2].set_xlabel("minutes")
    axes[2].legend(loc="upper right", fontsize=8, ncol=4)
    for ax in axes:
        ax.grid(alpha=0.3)
        for rs in res["restarts"]:
            ax.axvline(rs["t"] / 60, color="black", linewidth=1.5)
        for c in res["risk_changes"]:
            ax.axvline(
                c["t"] / 60, color="tab:red" if c["level"] == "high" else "tab:green", linewidth=0.9, linestyle=":"
            )
    for rs in res["restarts"]:
        axes[0].text(rs["t"] / 60, axes[0].get_ylim()[1], f" {rs['how']} restart", va="top", fontsize=8)
    axes[0].set_title(title + "\nrisk changes: red dotted raise, green dotted lower", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    broker, url, kind = start_broker(args.broker, args.broker_url)
    before = conditions(kind)
    log(f"broker: {kind} at {url}; load average {before['load_average']}")
    try:
        ctx = Context(broker_url=url, partitions=args.partitions, log=log)
        res = asyncio.run(_measured_soak(ctx, args))
    finally:
        if broker:
            broker.stop()
    res["conditions"] = {"before": before, "after": conditions(kind)}
    res["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    rows = table_rows(res)
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    write_json(args.json, res)
    plot(
        res,
        args.png,
        f"greenchannel soak, {before['at']}: {kind}, {args.guarantee}, {args.store} tables; "
        f"{res['rate']:,.0f} requests/s + {res['scan_rate']:,.0f} scans/s",
    )
    log(f"wrote {args.json}, {args.png}")
    ok = not (res["requests"]["missing"] or res["scans"]["missing"] or res["internal_errors"])
    return 0 if ok else 1


async def _measured_soak(ctx: Context, args) -> dict:
    maximum = None if args.rate else await measure_max(ctx, args)
    rate = args.rate or args.load * maximum["median"]
    return await soak(ctx, args, rate) | {"measured_max_per_s": maximum}


if __name__ == "__main__":
    sys.exit(main())
