"""A SIGKILL takeover, with and without standby replicas (the `takeover` suite).

Per run: two workers (`bench.timed_worker`, the same worker with its log's marks) in one group,
`GC_STANDBY_REPLICAS` 1 or 0, decide a backlog of requests into active passes, half each. One is
SIGKILLed; right after, a probe request (approvable) goes to every partition. The figure is the
time from the kill to the last probe's decision (its producer timestamp): every partition,
the killed worker's too, answering again. It holds the group's session timeout (the survivor
is told of the death only then), the rebalance, and the survivor's recovery of the killed
worker's tables: from their changelogs' start without a standby, from where its standby copy
had followed them to with one. The target: the session timeout plus at most 10 s.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from aiokafka import AIOKafkaProducer

from streams.handlers import Topics

from . import workload
from .harness import Proc, run_id, start_process
from .suites import TIMED_WORKER, Context, _cleanup, _fill_state, _first_answer, _prepare_system, _Receiver, worker_env
from .workload import Message

__all__ = ["takeover_runs"]

SESSION_TIMEOUT = 10.0  # GC_SESSION_TIMEOUT of the run's workers (the tests' too)


async def takeover_runs(
    ctx: Context, requests: list[Message], firms: list[Message], risks: list[Message], runs: int
) -> dict:
    """`runs` takeovers with one standby replica, and as many without, alternating."""
    result: dict = {"requests": len(requests), "session_timeout_s": SESSION_TIMEOUT, "standby": [], "none": []}
    for run in range(runs):
        for standby, key in ((1, "standby"), (0, "none")):
            got = await takeover_run(ctx, requests, firms, risks, standby)
            result[key].append(got)
            ctx.log(
                f"  takeover {run + 1}/{runs}, {standby} standby: {got['passes']:,} passes; SIGKILL to every "
                f"partition answering {got['kill_to_all_answering_s']:.1f} s (the survivor's rebalance "
                f"{got['kill_to_assigned_s']:.1f} s after the kill, its tables recovered "
                f"{got['recovery_s']:.1f} s later)"
            )
    return result


async def takeover_run(
    ctx: Context, requests: list[Message], firms: list[Message], risks: list[Message], standby: int
) -> dict:
    rid = run_id()
    prefix = f"bench-{rid}."
    topics = Topics.with_prefix(prefix)
    await _prepare_system(ctx, topics, firms, risks)
    env = {
        **worker_env(ctx, rid, prefix),
        "GC_STANDBY_REPLICAS": str(standby),
        "GC_SESSION_TIMEOUT": str(SESSION_TIMEOUT),
    }
    if ctx.transactions:  # Apache Kafka: the production configuration
        env["GC_PROCESSING_GUARANTEE"] = "exactly_once"
    probes = workload.approvable(ctx.partitions + 1, tag="K")
    procs: list[Proc] = []

    def spawn(name: str) -> Proc:
        return start_process(list(TIMED_WORKER), env, ctx.out_dir / rid / f"{name}.log")

    try:
        await _first_answer(ctx, topics, probes[0], procs, lambda: spawn("killed"))
        procs.append(spawn("survivor"))
        await _marked(procs[1], "recovered", 1, ctx.timeout)  # in the group, its share recovered
        got = await _fill_state(ctx, topics, procs[0], requests)  # both decide; the standbys follow
        got.update(await _kill_and_probe(ctx, topics, procs, probes[1:]))
    finally:
        for p in procs:
            p.stop()
    await _cleanup(ctx, prefix, f"bench-{rid}")
    return {"standby_replicas": standby, "guarantee": env.get("GC_PROCESSING_GUARANTEE", "at_least_once"), **got}


async def _marked(proc: Proc, name: str, count: int, timeout: float, after: float = 0.0) -> list[float]:
    """The times of `proc`'s log marks `name` later than `after`, once there are `count` of them."""
    from .timed_worker import marks

    deadline = time.monotonic() + timeout
    while True:
        found = [at for at in marks(proc.log_path).get(name, []) if at > after]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline or not proc.alive():
            raise TimeoutError(f"{proc.log_path}: {len(found)} '{name}' marks, {count} wanted\n{proc.tail(1500)}")
        await asyncio.sleep(0.2)  # polling the log with a deadline


async def _kill_and_probe(ctx: Context, topics: Topics, procs: list[Proc], probes: list[Message]) -> dict:
    """SIGKILL the first worker, then a probe to every partition: seconds from the kill to each
    partition's answer (producer timestamps), and the survivor's marks after the kill."""
    killed, survivor = procs
    answers = _Receiver(ctx.connection, [topics.decisions, topics.deadletter], ctx.partitions, fetch_wait_ms=500)
    await answers.start()
    producer = AIOKafkaProducer(**ctx.connection.kwargs(), linger_ms=0)
    await producer.start()
    try:
        killed.popen.kill()  # SIGKILL: no leave-group, no commit
        killed_at = time.time()
        killed.popen.wait()
        for partition, probe in enumerate(probes[: ctx.partitions]):
            await producer.send_and_wait(topics.requests, probe.value, key=probe.key, partition=partition)
        idents = [p.key.decode() for p in probes[: ctx.partitions]]
        deadline = time.monotonic() + ctx.timeout
        while any(i not in answers.got for i in idents):
            if time.monotonic() > deadline or not survivor.alive():
                raise TimeoutError(f"{sum(i not in answers.got for i in idents)} probes unanswered\n{survivor.tail()}")
            await asyncio.sleep(0.05)  # polling the receiver with a deadline
    finally:
        await producer.stop()
        await answers.stop()
    for ident in idents:
        topic, value = answers.got[ident][1:]
        if topic != topics.decisions or not orjson.loads(value).get("pass"):
            raise AssertionError(f"probe {ident} was not approved ({topic}): {value[:300]!r}")
    per_partition = [answers.created[i] / 1000 - killed_at for i in idents]
    assigned = (await _marked(survivor, "assigned", 1, ctx.timeout, after=killed_at))[0]
    recovered = (await _marked(survivor, "recovered", 1, ctx.timeout, after=assigned))[0]
    return {
        "kill_to_all_answering_s": max(per_partition),
        "kill_to_answer_by_partition_s": [round(s, 2) for s in per_partition],
        "kill_to_assigned_s": assigned - killed_at,
        "recovery_s": recovered - assigned,
    }
