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
on topics of its own) whatever GC_TEST_BROKER names; tests/conftest.py skips them on Tansu,
which keeps nothing across a restart and has no transactions. The figures of each test are
printed (pytest -s) and written to <pytest basetemp>/fault-figures.json.

Every wait is a condition polled against a deadline; the only sleeps pace the load generator.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.connection import Connection
from streams.simulator import Scenario, scans_for
from tests.conftest import PARTITIONS, System, make_broker, start_system
from support import until

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.integration,
    pytest.mark.skipif(not (shutil.which("java") and shutil.which("mvn")),
                       reason="needs java and mvn on PATH to run real Kafka"),
    pytest.mark.timeout(900),
]

RATE = 20.0  # requests a second: steady, well within what one worker decides on 2 cores
DECIDE_TIMEOUT = 240.0  # generous: a rebalance after a kill waits out the dead member's session


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


def record(figures_file: Path, name: str, figures: dict) -> None:
    """Print one test's figures and merge them into the module's JSON file."""
    try:
        everything = json.loads(figures_file.read_text())
    except (OSError, ValueError):
        everything = {}
    everything[name] = figures
    figures_file.write_text(json.dumps(everything, indent=2, sort_keys=True) + "\n")
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    print(f"[{name}] figures written to {figures_file}")


# --------------------------------------------------------------------------
# helpers


class Load:
    """A steady stream of shipment requests, each shipment_id once, and (optionally) for every
    approved decision the checkpoint scans of its trip."""

    def __init__(self, system: System, scenario: Scenario, count: int, *, first: int = 0,
                 rate: float = RATE, scans: bool = False) -> None:
        self.system, self.scenario = system, scenario
        self.count, self.first, self.rate, self.with_scans = count, first, rate, scans
        self.sent: list[str] = []          # shipment_ids whose send the broker acknowledged
        self.scans_sent: list[str] = []    # scan_ids likewise
        self.scanned: set[str] = set()     # shipment_ids whose scans were sent
        self.gate = asyncio.Event()        # closed: the sender pauses before its next request
        self.gate.set()
        self.idle = asyncio.Event()        # set while the sender waits at a closed gate
        self._tasks: list[asyncio.Task] = []

    def start(self) -> Load:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._send_requests())]
        if self.with_scans:
            self._tasks.append(loop.create_task(self._send_scans()))
        return self

    async def pause(self) -> None:
        """Stop sending; return once no send is in flight."""
        self.gate.clear()
        await asyncio.wait_for(self.idle.wait(), 120)

    def resume(self) -> None:
        self.idle.clear()
        self.gate.set()

    async def _send_requests(self) -> None:
        t0 = time.monotonic()
        topic = self.system.topics.requests
        for i in range(self.count):
            if not self.gate.is_set():
                self.idle.set()
                await self.gate.wait()
                t0 = time.monotonic() - i / self.rate  # carry on at the same pace
            body = self.scenario.request(self.first + i)
            await self.system.send(topic, body, key=body["shipment_id"])
            self.sent.append(body["shipment_id"])
            await asyncio.sleep(max(0.0, t0 + (i + 1) / self.rate - time.monotonic()))  # pacing
        self.idle.set()

    def approved_unscanned(self) -> list[dict]:
        ours = {s.encode() for s in self.sent} - {s.encode() for s in self.scanned}
        found = {}
        for m in self.system.tap.where(self.system.topics.decisions, lambda m: m.key in ours):
            decision = m.json
            if decision["decision"] == "approved":
                found[decision["shipment_id"]] = decision
        return list(found.values())

    async def send_scans_for(self, decisions: list[dict]) -> None:
        for decision in decisions:
            sid = decision["shipment_id"]
            if sid in self.scanned:
                continue
            self.scanned.add(sid)
            pass_id = decision["pass"]["pass_id"]
            for scan in scans_for(decision, random.Random(sid)):
                await self.system.send(self.system.topics.scans, scan, key=pass_id)
                self.scans_sent.append(scan["scan_id"])

    async def _send_scans(self) -> None:
        while True:
            await self.gate.wait()
            await self.send_scans_for(self.approved_unscanned())
            await asyncio.sleep(0.5)  # pacing: look for newly approved passes twice a second

    async def finished(self, timeout: float = 300) -> None:
        """Wait for every request to be sent; then stop scanning, and send the scans of the
        passes approved meanwhile."""
        await asyncio.wait_for(self._tasks[0], timeout)
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def decision_counts(system: System, ids: list[str]) -> Counter:
    wanted = {i.encode() for i in ids}
    return Counter(m.key.decode() for m in system.tap.where(system.topics.decisions, lambda m: m.key in wanted))


def scan_answer_counts(system: System, scan_ids: list[str]) -> Counter:
    causes = {f"scan:{s}" for s in scan_ids}
    counts: Counter = Counter()
    for m in system.tap.where(system.topics.status):
        cause = orjson.loads(m.value).get("cause")
        if cause in causes:
            counts[cause[5:]] += 1
    return counts


def issued_counts(system: System, ids: list[str]) -> tuple[list[str], Counter]:
    """The approved shipments among `ids`, and how many `issued` events each pass got."""
    wanted = {i.encode() for i in ids}
    approved = sorted({m.key.decode() for m in system.tap.where(system.topics.decisions, lambda m: m.key in wanted)
                       if m.json["decision"] == "approved"})
    causes = {f"decision:{sid}" for sid in approved}
    counts: Counter = Counter()
    for m in system.tap.where(system.topics.status):
        cause = orjson.loads(m.value).get("cause")
        if cause in causes:
            counts[cause[9:]] += 1
    return approved, counts


def internal_errors(system: System) -> list[str]:
    """Dead letters other than the probes and markers the tests send on purpose."""
    return [m.value.decode(errors="replace")[:300] for m in system.tap.where(system.topics.deadletter)
            if not m.key.startswith((b"probe-", b"marker-"))]


def pass_figures(system: System, sent: list[str]) -> dict:
    """What every fault test also counts: `issued` events per approved pass, internal errors."""
    approved, issued = issued_counts(system, sent)
    issued_tally = tally(issued, approved)
    return {"passes_approved": len(approved), "issued_events": issued_tally["received"],
            "issued_duplicates": issued_tally["duplicates"], "issued_missing": issued_tally["missing"],
            "internal_errors": len(internal_errors(system))}


def assert_passes_clean(system: System, figures: dict) -> None:
    """Each approved pass issued exactly once, and nothing dead-lettered by an internal error."""
    assert figures["issued_duplicates"] == figures["issued_missing"] == 0, figures
    assert figures["internal_errors"] == 0, internal_errors(system)[:5]


def tally(counts: Counter, ids: list[str]) -> dict:
    return {"sent": len(ids), "received": sum(counts[i] for i in ids),
            "duplicates": sum(counts[i] - 1 for i in ids if counts[i] > 1),
            "missing": sum(1 for i in ids if counts[i] == 0)}


async def settle(system: System, alive=lambda: True) -> None:
    """Wait until the worker has handled everything sent so far, then until the tap has read
    everything committed: a marker (a dead letter to be) into every request partition comes out
    after every earlier request of that partition, whose outputs were committed with or before it."""
    tag = uuid.uuid4().hex[:8]
    keys = [f"marker-{tag}-{p}".encode() for p in range(PARTITIONS)]
    for p, key in enumerate(keys):
        await system.producer.send_and_wait(system.topics.requests, b"marker: not json", key=key, partition=p)
    await until(lambda: {m.key for m in system.tap.where(system.topics.deadletter)} >= set(keys),
                DECIDE_TIMEOUT, "the markers of every request partition", alive)
    await system.tap.caught_up([system.topics.decisions, system.topics.status, system.topics.deadletter])


async def load_enterprises(system: System, scenario: Scenario) -> None:
    for entry in scenario.enterprise_entries():
        await system.send(system.topics.enterprises, entry, key=entry["credit_code"])


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


def worker_alive(system: System):
    return lambda: any(p.poll() is None for p in system.workers)


def decided_now(system: System, load: Load) -> int:
    return len(decision_counts(system, list(load.sent)))


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
        await until(lambda: decided_now(system, load) >= count // 4, DECIDE_TIMEOUT,
                    "a quarter of the decisions before the restart", worker_alive(system))
        await load.pause()  # every request counted as sent has been acknowledged by the broker
        before = list(load.sent)
        decided_at_stop = decided_now(system, load)

        t0 = time.monotonic()
        await asyncio.to_thread(cluster1.stop_node, 0)
        stop_s = time.monotonic() - t0
        assert not cluster1.is_running(0)
        t0 = time.monotonic()
        await asyncio.to_thread(cluster1.start_node, 0)  # same config and data dir
        restart_s = time.monotonic() - t0

        await until(lambda: len(decision_counts(system, before)) == len(before), DECIDE_TIMEOUT,
                    f"a decision for each of the {len(before)} requests sent before the stop", worker_alive(system))
        load.resume()
        await load.finished()
        await until(lambda: len(decision_counts(system, load.sent)) == count, DECIDE_TIMEOUT,
                    f"a decision for each of {count} requests", worker_alive(system))
        await settle(system, worker_alive(system))

        early = tally(decision_counts(system, before), before)
        everything = tally(decision_counts(system, load.sent), load.sent)
        figures = {
            "nodes": 1, "stop_seconds": round(stop_s, 1), "restart_seconds": round(restart_s, 1),
            "requests_sent_before_stop": early["sent"], "decided_before_stop": decided_at_stop,
            "decisions_received_for_those": early["received"], "duplicates_among_those": early["duplicates"],
            "missing_among_those": early["missing"],
            "requests_sent": everything["sent"], "decisions_received": everything["received"],
            "duplicates": everything["duplicates"], "missing": everything["missing"],
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
        await until(lambda: decided_now(system, load) >= count // 4, DECIDE_TIMEOUT,
                    "a quarter of the decisions before the fault", worker_alive(system))

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
        while len(decision_counts(system, load.sent)) < count and time.monotonic() < deadline \
                and worker_alive(system)():
            await asyncio.sleep(0.2)  # polling a condition with a deadline
        all_decided = len(decision_counts(system, load.sent)) == count
        if all_decided:
            await load.send_scans_for(load.approved_unscanned())
            await until(lambda: len(scan_answer_counts(system, load.scans_sent)) == len(load.scans_sent),
                        DECIDE_TIMEOUT, f"an answer to each of {len(load.scans_sent)} scans", worker_alive(system))
            await settle(system, worker_alive(system))
        else:
            await load.cancel()
            await system.tap.caught_up([system.topics.decisions, system.topics.status, system.topics.deadletter])
        still_down = not cluster3.is_running(stopped)  # all of it happened with the node down

        requests = tally(decision_counts(system, load.sent), load.sent)
        scans = tally(scan_answer_counts(system, load.scans_sent), load.scans_sent)
        figures = {
            "nodes": 3, "stopped_node": stopped, "stop_seconds": round(stop_s, 1),
            "requests_sent": requests["sent"], "decisions_received": requests["received"],
            "duplicates": requests["duplicates"], "missing": requests["missing"],
            "requests_sent_before_stop": sent_at_stop, "decided_before_stop": decided_at_stop,
            "requests_sent_after_stop": len(after_stop),
            "scans_sent": scans["sent"], "scan_answers_received": scans["received"],
            "scan_duplicates": scans["duplicates"], "scans_missing": scans["missing"],
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


async def worker_killed_mid_stream(system: System, figures_file: Path, nodes: int) -> None:
    """SIGKILL the system's worker mid-stream, start another: every request decided exactly once,
    a resent one answered with its stored decision (closes the system). Also run on the secure
    cluster (tests/test_security.py)."""
    load = None
    try:
        scenario = Scenario(seed=33)
        await load_enterprises(system, scenario)
        count = 500
        load = Load(system, scenario, count).start()
        first = system.workers[0]
        await until(lambda: decided_now(system, load) >= count // 4, DECIDE_TIMEOUT,
                    "a quarter of the decisions before the kill", worker_alive(system))
        first.kill()  # SIGKILL: no commit, no flush, an open transaction left behind
        first.wait()
        sent_at_kill, decided_at_kill = len(load.sent), decided_now(system, load)
        decided_before = {m.key for m in system.tap.where(system.topics.decisions)}

        # Another worker with the same app id, keys and topics. It gets the partitions once the
        # group gives up on the killed one (its session timeout), and then the backlog.
        t0 = time.monotonic()
        second = system.start_worker()
        await load.finished()
        deadline = time.monotonic() + DECIDE_TIMEOUT
        while len(decision_counts(system, load.sent)) < count and time.monotonic() < deadline \
                and second.poll() is None:
            await asyncio.sleep(0.2)  # polling a condition with a deadline
        all_decided = len(decision_counts(system, load.sent)) == count
        takeover_s = time.monotonic() - t0

        # The new worker recovered the tables of the killed one: a firm resending a shipment
        # decided before the kill gets the stored decision again, byte for byte.
        early_sid = load.sent[0]
        early = scenario.request(0)  # other content, same shipment_id: the stored answer comes back
        assert early["shipment_id"] == early_sid and early_sid.encode() in decided_before
        again = []
        if all_decided:
            await system.send(system.topics.requests, early, key=early_sid)
            again = await system.tap.wait_for(system.topics.decisions, lambda m: m.key == early_sid.encode(), 2,
                                              DECIDE_TIMEOUT)
            await settle(system, worker_alive(system))
        else:
            await system.tap.caught_up([system.topics.decisions, system.topics.status, system.topics.deadletter])

        counts = decision_counts(system, load.sent)
        if again:
            counts[early_sid] -= 1  # the resend above, answered on purpose
        requests = tally(counts, load.sent)
        figures = {
            "nodes": nodes, "requests_sent": requests["sent"], "decisions_received": requests["received"],
            "duplicates": requests["duplicates"], "missing": requests["missing"],
            "requests_sent_before_kill": sent_at_kill, "decided_before_kill": decided_at_kill,
            "seconds_from_restart_to_last_decision": round(takeover_s, 1),
            "killed_worker_exit": first.returncode,
            "resend_after_restart_same_decision": bool(again) and again[0].value == again[-1].value,
            **pass_figures(system, load.sent),
        }
        record(figures_file, "worker_sigkill", figures)
        assert first.returncode == -9
        assert decided_at_kill < sent_at_kill < count, "the kill was not mid-stream"
        assert requests["duplicates"] == requests["missing"] == 0, figures
        assert again and again[0].value == again[-1].value, "the resent shipment was decided anew"
        assert_passes_clean(system, figures)
    finally:
        if load is not None:
            await load.cancel()
        await system.close()
