"""A worker restarted while holding many active passes: RocksDB tables on its own disk against memory tables.

Deciding a million requests through the pipeline takes most of an hour here, so the passes are put on
the worker's changelog topics directly: real pass states and decisions made by the handlers
(`suites._templates`), cloned with new pass numbers and shipment ids, each on its partition (its
shipment's, as the worker allocates it), the bytes as the worker's tables write them (str keys in
JSON, the values raw). The worker recovers them as its own.

Per store, on one filled log: memory tables (the "before": every start reads the changelogs whole);
RocksDB (a first start reads them whole into the disk, a restart on that disk reads only their tail).
Each start's time to its first answer (a new request, approved), to its partitions being assigned and
to its tables recovered (bench.timed_worker's marks); the worker's RSS then; RocksDB's bytes on disk
per pass.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from models.passes import kafka_partition

from . import workload
from .harness import Proc, run_id, start_process
from .suites import TIMED_WORKER, Context, _cleanup, _first_answer, _prepare_system, _templates, clone_pass, worker_env
from .timed_worker import marks, tails
from .workload import Message

__all__ = ["restart_runs", "state_records"]

TABLES = ("passes", "decided")  # what a pass holds in the worker: its state, its request's decision


def state_records(count: int, partitions: int, run: str) -> Iterator[tuple[str, int, bytes, bytes]]:
    """(table, partition, key, value) of `count` active passes: each pass's state and its shipment's
    decision, on the shipment's partition; the pass number one that Kafka's partitioner puts there."""
    from models.stored import load_pass

    _, tables = _templates()
    states = [load_pass(raw) for raw in tables.passes.values()]
    numbers = _pass_numbers(partitions)
    for i in range(count):
        template = states[i % len(states)]
        shipment_id = f"{run}-{i:07d}"
        partition = kafka_partition(shipment_id.encode(), partitions)
        pass_id = next(numbers[partition])
        state, decision = clone_pass(tables, template, pass_id, shipment_id)
        yield "passes", partition, f'"{pass_id}"'.encode(), state
        yield "decided", partition, f'"{shipment_id}"'.encode(), decision


def _pass_numbers(partitions: int) -> dict[int, Iterator[str]]:
    """Per partition, the 12-digit pass numbers Kafka's partitioner puts there, in order."""

    def on(partition: int) -> Iterator[str]:
        n = 990_000_000_000  # out of every real issuer's range
        while True:
            n += 1
            pass_id = str(n)
            if kafka_partition(pass_id.encode(), partitions) == partition:
                yield pass_id

    return {p: on(p) for p in range(partitions)}


async def _fill_changelogs(ctx: Context, app_id: str, passes: int, run: str) -> int:
    """Create the worker's changelog topics (compacted, as Faust makes them) and put `passes` on them."""
    names = {t: f"{app_id}-{t}-changelog" for t in TABLES}
    admin = AIOKafkaAdminClient(**ctx.connection.kwargs())
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, ctx.partitions, 1, topic_configs={"cleanup.policy": "compact"}) for n in names.values()]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**ctx.connection.kwargs(), linger_ms=20, max_batch_size=512 * 1024, acks=1)
    await producer.start()
    written = 0
    try:
        pending = []
        for table, partition, key, value in state_records(passes, ctx.partitions, run):
            pending.append(await producer.send(names[table], value, key=key, partition=partition))
            written += len(key) + len(value)
            if len(pending) >= 20_000:
                for future in pending:
                    await future
                pending.clear()
        for future in pending:
            await future
    finally:
        await producer.stop()
    return written


def _disk_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file() and ".db" in str(p))


async def _start(ctx: Context, topics, probe: Message, procs: list[Proc], env: dict, log: Path) -> dict:
    """Start a timed worker; its first answer, marks and RSS."""
    first = await _first_answer(ctx, topics, probe, procs, lambda: start_process(list(TIMED_WORKER), env, log))
    found = marks(procs[-1].log_path)
    started_at = first.pop("started_at")
    read = tails(procs[-1].log_path)
    return {
        **first,
        "changelog_records_read": sum(n for n, _ in read),
        "changelog_partitions_read": max((p for _, p in read), default=0),
        "rebalance_s": found["rebalance"][0] - started_at if found.get("rebalance") else None,
        "assigned_s": found["assigned"][0] - started_at if found.get("assigned") else None,
        "rebalances": len(found.get("rebalance", [])),
        "recovered_s": found["recovered"][-1] - started_at if found.get("recovered") else None,
        "rss_mb": procs[-1].rss_bytes() / 1e6,
    }


async def restart_runs(ctx: Context, firms: list[Message], risks: list[Message], passes: int, runs: int) -> dict:
    """Per run: one log of `passes` active passes; a worker on memory tables started on it, then one on
    RocksDB started twice (the second start: a restart on its own disk)."""
    guarantee = "exactly_once" if ctx.transactions else "at_least_once"
    result: dict = {"passes": passes, "guarantee": guarantee, "runs": []}
    for run in range(runs):
        rid = run_id()
        prefix = f"bench-{rid}."
        from streams.handlers import Topics

        topics = Topics.with_prefix(prefix)
        await _prepare_system(ctx, topics, firms, risks)
        env = {**worker_env(ctx, rid, prefix), "GC_PROCESSING_GUARANTEE": guarantee}
        t = time.perf_counter()
        written = await _fill_changelogs(ctx, env["GC_APP_ID"], passes, rid)
        ctx.log(f"  restart {run + 1}/{runs}: {passes:,} passes on the changelogs in {time.perf_counter() - t:.0f} s")
        probes = workload.approvable(3, tag=f"R{run}")
        data = Path(env["GC_DATA_DIR"])
        procs: list[Proc] = []
        got: dict = {"changelog_bytes": written}
        try:
            memory = {**env, "GC_STORE": "memory://"}
            got["memory"] = await _start(ctx, topics, probes[0], procs, memory, data / "memory.log")
            procs[-1].stop(timeout=120)
            rocks = {**env, "GC_STORE": "rocksdb://"}
            got["rocksdb_first"] = await _start(ctx, topics, probes[1], procs, rocks, data / "rocks-first.log")
            procs[-1].stop(timeout=120)
            got["rocksdb_exit_code"] = procs[-1].popen.returncode
            got["rocksdb"] = await _start(ctx, topics, probes[2], procs, rocks, data / "rocks-restart.log")
            got["disk_bytes"] = _disk_bytes(data)
            got["disk_bytes_per_pass"] = got["disk_bytes"] / passes
        finally:
            for p in procs:
                p.stop(timeout=120)
        for log in data.glob("*.log"):  # the workers' logs outlive the run's directory
            (ctx.out_dir / f"restart-{rid}-{log.name}").write_bytes(log.read_bytes())
        await _cleanup(ctx, prefix, f"bench-{rid}")
        result["runs"].append(got)
        mem, first, again = got["memory"], got["rocksdb_first"], got["rocksdb"]
        ctx.log(
            f"  restart {run + 1}/{runs}: first answer, memory {mem['first_answer_s']:.1f} s (RSS {mem['rss_mb']:,.0f}"
            f" MB); RocksDB first start {first['first_answer_s']:.1f} s (RSS {first['rss_mb']:,.0f} MB), restart on"
            f" its disk {again['first_answer_s']:.1f} s (RSS {again['rss_mb']:,.0f} MB);"
            f" {got['disk_bytes_per_pass']:,.0f} bytes on disk per pass"
        )
    return result
