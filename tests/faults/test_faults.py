"""Faults on Apache Kafka, with the worker's exactly_once guarantee on.

* a 3-node cluster loses a broker (the coordinator of the worker's group) in the middle of a
  steady stream of requests and checkpoint scans: the worker keeps deciding, and every request
  gets exactly one decision, every scan exactly one answer;
* a 1-node cluster is stopped and restarted on the same data directory mid-stream: every request
  sent before the stop (and after the restart) gets exactly one decision;
* the worker is SIGKILLed mid-stream and another one started: exactly one decision each.

Each shipment_id is sent once (a resent id is answered again with the stored decision, which
is not a duplicate in the exactly-once sense), so any shipment_id with two decisions on the
topic is a duplicate. Readers use read_committed, as consumers of a transactional producer do.

These tests start their own clusters and workers (module-scoped clusters, one system per test
on topics of its own) whatever GC_TEST_BROKER names; tests/support/system.py skips them on Tansu,
which keeps nothing across a restart and has no transactions. The figures of each test are
printed (pytest -s) and written to <pytest basetemp>/fault-figures.json.

Every wait is a condition polled against a deadline; the only sleeps pace the load generator.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.connection import Connection
from streams.dev.broker import free_port
from streams.dev.simulator import Scenario
from tests.support.factories import until
from tests.support.faults import (
    DECIDE_TIMEOUT,
    Load,
    assert_passes_clean,
    decided_now,
    decision_counts,
    load_enterprises,
    pass_figures,
    record,
    settle,
    status_counts_by_cause,
    tally,
    worker_alive,
    worker_killed_mid_stream,
)
from tests.support.metrics import http_get, samples
from tests.support.system import System, make_broker, start_system

BURST = 50  # requests sent at once right before the broker stops (test_single_broker_restart_keeps_every_request)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(
        not (shutil.which("java") and shutil.which("mvn")), reason="needs java and mvn on PATH to run real Kafka"
    ),
    pytest.mark.timeout(900),
]


# --------------------------------------------------------------------------
# clusters (module-scoped: one start each for the whole file)


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory):
    cluster = make_broker("kafka3", tmp_path_factory.mktemp("faults-kafka3"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster1(tmp_path_factory):  # one test only: gone before the 3 nodes start
    cluster = make_broker("kafka", tmp_path_factory.mktemp("faults-kafka1"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def figures_file(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "fault-figures.json"


# --------------------------------------------------------------------------
# helpers


def scan_answer_counts(system: System, scan_ids: list[str]) -> Counter:
    return status_counts_by_cause(system, "scan", scan_ids)


async def topic_replicas(connection: Connection, prefixes: tuple[str, ...]) -> dict[str, set[int]]:
    """Replica counts of every partition of the topics named with one of `prefixes`."""
    admin = AIOKafkaAdminClient(**connection.kwargs())
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        return {t["topic"]: {len(p["replicas"]) for p in t["partitions"]} for t in await admin.describe_topics(names)}
    finally:
        await admin.close()


async def group_coordinator(connection: Connection, group: str) -> int:
    admin = AIOKafkaAdminClient(**connection.kwargs())
    await admin.start()
    try:
        return await admin.find_coordinator(group)
    finally:
        await admin.close()


# --------------------------------------------------------------------------
# (b) 1 node: the broker stops and restarts on its data directory


async def test_single_broker_restart_keeps_every_request(cluster1, tmp_path, figures_file):
    system = await start_system(cluster1, tmp_path, kind="kafka", prefix=f"fb{uuid.uuid4().hex[:4]}.")
    load = None
    try:
        scenario = Scenario(seed=32)
        await load_enterprises(system, scenario)
        count = 400
        load = Load(system, scenario, count).start()
        await until(
            lambda: decided_now(system, load) >= count // 4,
            DECIDE_TIMEOUT,
            "a quarter of the decisions before the restart",
            worker_alive(system),
        )
        await load.pause()  # every request counted as sent has been acknowledged by the broker
        # Then a burst, acknowledged, right before the stop: requests still in flight when the broker
        # goes (with 100 ms transactions a steady 20/s stream is often all decided by then).
        burst = [scenario.request(count + i) for i in range(BURST)]
        await asyncio.gather(*(system.send(system.topics.requests, b, key=b["shipment_id"]) for b in burst))
        before = list(load.sent) + [b["shipment_id"] for b in burst]
        decided_at_stop = len(decision_counts(system, before))

        t0 = time.monotonic()
        await asyncio.to_thread(cluster1.stop_node, 0)
        stop_s = time.monotonic() - t0
        assert not cluster1.is_running(0)
        t0 = time.monotonic()
        await asyncio.to_thread(cluster1.start_node, 0)  # same config and data dir
        restart_s = time.monotonic() - t0

        await until(
            lambda: len(decision_counts(system, before)) == len(before),
            DECIDE_TIMEOUT,
            f"a decision for each of the {len(before)} requests sent before the stop",
            worker_alive(system),
        )
        load.resume()
        await load.finished()
        await until(
            lambda: len(decision_counts(system, load.sent)) == count,
            DECIDE_TIMEOUT,
            f"a decision for each of {count} requests",
            worker_alive(system),
        )
        await settle(system, worker_alive(system))

        early = tally(decision_counts(system, before), before)
        every_request = list(load.sent) + before[-BURST:]
        everything = tally(decision_counts(system, every_request), every_request)
        figures = {
            "nodes": 1,
            "stop_seconds": round(stop_s, 1),
            "restart_seconds": round(restart_s, 1),
            "requests_sent_before_stop": early["sent"],
            "decided_before_stop": decided_at_stop,
            "decisions_received_for_those": early["received"],
            "duplicates_among_those": early["duplicates"],
            "missing_among_those": early["missing"],
            "requests_sent": everything["sent"],
            "decisions_received": everything["received"],
            "duplicates": everything["duplicates"],
            "missing": everything["missing"],
            **pass_figures(system, load.sent),
        }
        record(figures_file, "single_broker_restart", figures)
        assert decided_at_stop < len(before), "every decision was made before the stop"
        assert early["duplicates"] == early["missing"] == 0, figures
        assert everything["duplicates"] == everything["missing"] == 0, figures
        assert_passes_clean(system, figures)
        assert all(p.poll() is None for p in system.workers), "the worker died"
    finally:
        if load is not None:
            await load.cancel()
        await system.close()
        if not cluster1.is_running(0):
            await asyncio.to_thread(cluster1.start_node, 0)


# --------------------------------------------------------------------------
# (a) 3 nodes: one broker stops during a steady stream


async def test_three_nodes_keep_deciding_when_a_broker_stops(cluster3, tmp_path, figures_file):
    system = await start_system(cluster3, tmp_path, kind="kafka3", prefix=f"fa{uuid.uuid4().hex[:4]}.")
    app_id = system.env["GC_APP_ID"]
    stopped = None
    load = None
    try:
        # Replication 3 everywhere: the public topics and Faust's changelog and leader topics.
        replicas = await topic_replicas(cluster3.connection, (system.topics.requests.split(".")[0] + ".", app_id))
        assert any(t.startswith(app_id) for t in replicas) and all(r == {3} for r in replicas.values()), replicas

        scenario = Scenario(seed=31)
        await load_enterprises(system, scenario)
        count = 400
        load = Load(system, scenario, count, scans=True).start()
        await until(
            lambda: decided_now(system, load) >= count // 4,
            DECIDE_TIMEOUT,
            "a quarter of the decisions before the fault",
            worker_alive(system),
        )

        # The node that coordinates the worker's consumer group (and so holds the leaders of
        # its offsets): the most disruptive one to lose.
        stopped = await group_coordinator(cluster3.connection, app_id)
        sent_at_stop, decided_at_stop = len(load.sent), decided_now(system, load)
        t0 = time.monotonic()
        await asyncio.to_thread(cluster3.stop_node, stopped)
        stop_s = time.monotonic() - t0

        await load.finished()
        after_stop = load.sent[sent_at_stop:]
        deadline = time.monotonic() + DECIDE_TIMEOUT
        while (
            len(decision_counts(system, load.sent)) < count and time.monotonic() < deadline and worker_alive(system)()
        ):
            await asyncio.sleep(0.2)  # polling a condition with a deadline
        all_decided = len(decision_counts(system, load.sent)) == count
        if all_decided:
            await load.send_scans_for(load.approved_unscanned())
            await until(
                lambda: len(scan_answer_counts(system, load.scans_sent)) == len(load.scans_sent),
                DECIDE_TIMEOUT,
                f"an answer to each of {len(load.scans_sent)} scans",
                worker_alive(system),
            )
            await settle(system, worker_alive(system))
        else:
            await load.cancel()
            await system.tap.caught_up([system.topics.decisions, system.topics.status, system.topics.deadletter])
        still_down = not cluster3.is_running(stopped)  # all of it happened with the node down

        requests = tally(decision_counts(system, load.sent), load.sent)
        scans = tally(scan_answer_counts(system, load.scans_sent), load.scans_sent)
        figures = {
            "nodes": 3,
            "stopped_node": stopped,
            "stop_seconds": round(stop_s, 1),
            "requests_sent": requests["sent"],
            "decisions_received": requests["received"],
            "duplicates": requests["duplicates"],
            "missing": requests["missing"],
            "requests_sent_before_stop": sent_at_stop,
            "decided_before_stop": decided_at_stop,
            "requests_sent_after_stop": len(after_stop),
            "scans_sent": scans["sent"],
            "scan_answers_received": scans["received"],
            "scan_duplicates": scans["duplicates"],
            "scans_missing": scans["missing"],
            **pass_figures(system, load.sent),
        }
        record(figures_file, "three_nodes_broker_stop", figures)
        assert after_stop, "the stream ended before the broker stopped"
        assert still_down
        assert decided_at_stop < count, "every decision was made before the fault"
        assert requests["duplicates"] == requests["missing"] == 0, figures
        assert scans["duplicates"] == scans["missing"] == 0, figures
        assert_passes_clean(system, figures)
        assert all(p.poll() is None for p in system.workers), "the worker died"
    finally:
        if load is not None:
            await load.cancel()
        await system.close()
        if stopped is not None and not cluster3.is_running(stopped):
            await asyncio.to_thread(cluster3.start_node, stopped)


# --------------------------------------------------------------------------
# (c) the worker is SIGKILLed mid-stream and another one takes over


async def test_worker_killed_mid_stream_decides_each_request_exactly_once(cluster3, tmp_path, figures_file):
    system = await start_system(cluster3, tmp_path, kind="kafka3", prefix=f"fc{uuid.uuid4().hex[:4]}.")
    await worker_killed_mid_stream(system, figures_file, nodes=3)


def _worker_log(system: System, n: int) -> list[str]:
    return system.workers[n].log_path.read_text(errors="replace").splitlines()


# --------------------------------------------------------------------------
# (d) the worker is SIGKILLed in the middle of a burst: many records in open transactions


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
async def test_worker_killed_in_a_burst_decides_each_request_exactly_once(cluster3, tmp_path, figures_file, store):
    """A steady 20/s stream leaves a few requests in flight at a kill; a backlog of 1,500 leaves
    hundreds, their records in open transactions, kept during a commit or not yet delivered
    (exactly_once, batched: streams/worker/eos.py). Another worker takes over: each decided once.
    On RocksDB it takes over the killed one's disk, written by transactions that never committed:
    those partitions are wiped and recovered from their changelogs (streams.worker.compat)."""
    system = await start_system(
        cluster3, tmp_path, kind="kafka3", prefix=f"fk{uuid.uuid4().hex[:4]}.", env={"GC_STORE": store}
    )
    try:
        scenario = Scenario(seed=35)
        await load_enterprises(system, scenario)
        burst = [scenario.request(i) for i in range(1500)]
        await asyncio.gather(*(system.send(system.topics.requests, b, key=b["shipment_id"]) for b in burst))
        ids = [b["shipment_id"] for b in burst]
        await until(
            lambda: len(decision_counts(system, ids)) >= 400, DECIDE_TIMEOUT, "400 decisions", worker_alive(system)
        )
        first = system.workers[0]
        first.kill()  # SIGKILL: no commit, no flush
        first.wait()
        decided_at_kill = len(decision_counts(system, ids))
        t0 = time.monotonic()
        system.start_worker()
        every = f"a decision for each of the {len(ids)} requests"
        await until(lambda: len(decision_counts(system, ids)) == len(ids), DECIDE_TIMEOUT, every, worker_alive(system))
        await settle(system, worker_alive(system))
        requests = tally(decision_counts(system, ids), ids)
        figures = {
            "nodes": 3,
            **{f"requests_{k}": v for k, v in requests.items()},
            "decided_before_kill": decided_at_kill,
            "seconds_from_restart_to_last_decision": round(time.monotonic() - t0, 1),
            **pass_figures(system, ids),
        }
        if store != "memory://":
            figures["store"] = store
            # Written but never committed: the kill left partitions marked, the new worker wiped them.
            figures["partitions_wiped"] = sum("recovering it whole" in line for line in _worker_log(system, 1))
        record(figures_file, "worker_sigkill_in_a_burst" + ("" if store == "memory://" else "_rocksdb"), figures)
        assert decided_at_kill < len(ids) - 100, "the kill was not in the burst"
        if store != "memory://":
            assert figures["partitions_wiped"] > 0, "no write of the killed worker's open transactions was marked"
        assert requests["duplicates"] == requests["missing"] == 0, figures
        assert_passes_clean(system, figures)
    finally:
        await system.close()


# --------------------------------------------------------------------------
# (e) two workers, each the other's standby: one is SIGKILLed under load, the survivor takes over


TAKEN_OVER = "taken over from its standby copy: changelog read on from offset "  # streams.worker.compat


def assigned_changelogs(port: str) -> set[str]:
    """The changelog partitions a worker samples the consumer lag of (its assignment, standbys too)."""
    try:
        text, _ = http_get(f"http://127.0.0.1:{port}/metrics")
    except OSError:  # not serving yet
        return set()
    return {
        f"{labels['topic']}/{labels['partition']}"
        for (name, pairs) in samples(text)
        if name == "gc_consumer_lag" and (labels := dict(pairs))["topic"].endswith("-changelog")
    }


def log_after(proc, start: int) -> str:
    return proc.log_path.read_bytes()[start:].decode(errors="replace")


async def test_standby_takes_over_a_killed_worker_each_request_once(cluster3, tmp_path, figures_file):
    """Two workers with one standby replica (the kafka3 lane's GC_STANDBY_REPLICAS=1, as the 3-node
    compose): each follows the changelogs of the other's partitions. The first is SIGKILLed under a
    steady stream; the survivor takes its partitions over from its standby copies (it reads each
    changelog on from the offset it had followed to, not from the start) and answers every request
    once; a shipment decided before the kill, resent, gets its stored decision back."""
    system = await start_system(cluster3, tmp_path, kind="kafka3", prefix=f"fs{uuid.uuid4().hex[:4]}.")
    load = None
    try:
        assert system.env["GC_STANDBY_REPLICAS"] == "1"
        first = system.workers[0]
        system.env["GC_WEB_PORT"] = str(free_port())  # its own web server beside the first's
        survivor = system.start_worker()
        # In the group, with partitions of its own and the other's standbys: its consumer lag
        # (sampled per assigned partition, changelogs too) names a changelog.
        await until(
            lambda: assigned_changelogs(system.env["GC_WEB_PORT"]),
            DECIDE_TIMEOUT,
            "the second worker assigned changelog partitions",
            lambda: survivor.poll() is None,
        )
        scenario = Scenario(seed=36)
        await load_enterprises(system, scenario)
        count = 600
        load = Load(system, scenario, count).start()
        await until(
            lambda: decided_now(system, load) >= count // 3,
            DECIDE_TIMEOUT,
            "a third of the decisions before the kill",
            worker_alive(system),
        )
        marks = survivor.log_path.stat().st_size
        first.kill()  # SIGKILL: no commit, no flush, an open transaction left behind
        first.wait()
        sent_at_kill, decided_at_kill = len(load.sent), decided_now(system, load)
        early = list(load.sent[:40])  # decided before the kill, on both workers' partitions
        decided_before = {m.key for m in system.tap.where(system.topics.decisions)}
        await load.finished()
        every = f"a decision for each of {count} requests"
        await until(
            lambda: len(decision_counts(system, load.sent)) == count, DECIDE_TIMEOUT, every, worker_alive(system)
        )
        # The survivor recovered the killed worker's tables: the early shipments, resent, are answered
        # with their stored decisions, byte for byte.
        for i, sid in enumerate(early):
            again = scenario.request(i)
            assert again["shipment_id"] == sid and sid.encode() in decided_before
            await system.send(system.topics.requests, again, key=sid)
        resent = {sid.encode() for sid in early}
        await until(
            lambda: (
                all(n == 2 for n in decision_counts(system, early).values())
                and len(decision_counts(system, early)) == len(early)
            ),
            DECIDE_TIMEOUT,
            "the resent shipments answered",
            worker_alive(system),
        )
        await settle(system, worker_alive(system))
        answers = {}
        for m in system.tap.where(system.topics.decisions, lambda m: m.key in resent):
            answers.setdefault(m.key, []).append(m.value)
        counts = decision_counts(system, load.sent)
        for sid in early:
            counts[sid] -= 1  # the resend, answered on purpose
        requests = tally(counts, load.sent)
        taken_over = [line for line in log_after(survivor, marks).splitlines() if TAKEN_OVER in line]
        figures = {
            "nodes": 3,
            "workers": 2,
            "standby_replicas": 1,
            **{f"requests_{k}": v for k, v in requests.items()},
            "requests_sent_before_kill": sent_at_kill,
            "decided_before_kill": decided_at_kill,
            "changelog_partitions_taken_over_from_standby": len(taken_over),
            "resent_answered_with_the_stored_decision": sum(len(set(v)) == 1 for v in answers.values()),
            **pass_figures(system, load.sent),
        }
        twice = {sid for sid, n in counts.items() if n > 1}
        figures["decided_twice"] = [
            (m.key.decode(), m.partition, m.offset, m.json.get("decided_at"), (m.json.get("pass") or {}).get("pass_id"))
            for m in system.tap.where(system.topics.decisions, lambda m: m.key.decode() in twice)
        ]
        record(figures_file, "worker_sigkill_standby_takeover", figures)
        assert first.returncode == -9 and survivor.poll() is None
        assert decided_at_kill < sent_at_kill < count, "the kill was not mid-stream"
        assert requests["duplicates"] == requests["missing"] == 0, figures
        assert all(len(v) == 2 and v[0] == v[1] for v in answers.values()), "a resent shipment was decided anew"
        # The standby followed the killed worker's changelogs: the takeover read on from where it was.
        offsets = [int(line.split(TAKEN_OVER, 1)[1].split()[0]) for line in taken_over]
        assert offsets and max(offsets) > 0, figures
        assert_passes_clean(system, figures)
    finally:
        if load is not None:
            await load.cancel()
        await system.close()
