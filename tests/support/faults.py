"""The fault tests' load and tallies: a steady stream of requests (and scans), counts of the decisions and
statuses each got, the figures each test prints, and the worker SIGKILLed mid-stream (on plain and secure clusters)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path

import orjson

from streams.dev.simulator import Scenario, scans_for
from tests.support.factories import handled, until
from tests.support.system import PARTITIONS, System

RATE = 20.0  # requests a second: steady, well within what one worker decides on 2 cores
DECIDE_TIMEOUT = 240.0  # generous: a rebalance after a kill waits out the dead member's session


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


class Load:
    """A steady stream of shipment requests, each shipment_id once, and (optionally) for every
    approved decision the checkpoint scans of its trip."""

    def __init__(
        self, system: System, scenario: Scenario, count: int, *, first: int = 0, rate: float = RATE, scans: bool = False
    ) -> None:
        self.system, self.scenario = system, scenario
        self.count, self.first, self.rate, self.with_scans = count, first, rate, scans
        self.sent: list[str] = []  # shipment_ids whose send the broker acknowledged
        self.scans_sent: list[str] = []  # scan_ids likewise
        self.scanned: set[str] = set()  # shipment_ids whose scans were sent
        self.gate = asyncio.Event()  # closed: the sender pauses before its next request
        self.gate.set()
        self.idle = asyncio.Event()  # set while the sender waits at a closed gate
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


def issued_counts(system: System, ids: list[str]) -> tuple[list[str], Counter]:
    """The approved shipments among `ids`, and how many `issued` events each pass got."""
    wanted = {i.encode() for i in ids}
    approved = sorted(
        {
            m.key.decode()
            for m in system.tap.where(system.topics.decisions, lambda m: m.key in wanted)
            if m.json["decision"] == "approved"
        }
    )
    return approved, status_counts_by_cause(system, "decision", approved)


def status_counts_by_cause(system: System, kind: str, ids: list[str]) -> Counter:
    """How many status events each of `ids` caused, by their cause `kind:id` (decision or scan)."""
    causes = {f"{kind}:{i}" for i in ids}
    counts: Counter = Counter()
    for m in system.tap.where(system.topics.status):
        cause = orjson.loads(m.value).get("cause")
        if cause in causes:
            counts[cause[len(kind) + 1 :]] += 1
    return counts


def internal_errors(system: System) -> list[str]:
    """Dead letters other than the probes and markers the tests send on purpose."""
    return [
        m.value.decode(errors="replace")[:300]
        for m in system.tap.where(system.topics.deadletter)
        if not m.key.startswith((b"probe-", b"marker-"))
    ]


def pass_figures(system: System, sent: list[str]) -> dict:
    """What every fault test also counts: `issued` events per approved pass, internal errors."""
    approved, issued = issued_counts(system, sent)
    issued_tally = tally(issued, approved)
    return {
        "passes_approved": len(approved),
        "issued_events": issued_tally["received"],
        "issued_duplicates": issued_tally["duplicates"],
        "issued_missing": issued_tally["missing"],
        "internal_errors": len(internal_errors(system)),
    }


def assert_passes_clean(system: System, figures: dict) -> None:
    """Each approved pass issued exactly once, and nothing dead-lettered by an internal error."""
    assert figures["issued_duplicates"] == figures["issued_missing"] == 0, figures
    assert figures["internal_errors"] == 0, internal_errors(system)[:5]


def tally(counts: Counter, ids: list[str]) -> dict:
    return {
        "sent": len(ids),
        "received": sum(counts[i] for i in ids),
        "duplicates": sum(counts[i] - 1 for i in ids if counts[i] > 1),
        "missing": sum(1 for i in ids if counts[i] == 0),
    }


async def settle(system: System, alive=lambda: True) -> None:
    """Wait until the worker has handled everything sent so far, then until the tap has read
    everything committed: a marker into every request partition (see `handled`)."""
    await handled(system, system.topics.requests, range(PARTITIONS), DECIDE_TIMEOUT, alive)


async def load_enterprises(system: System, scenario: Scenario) -> None:
    for entry in scenario.enterprise_entries():
        await system.send(system.topics.enterprises, entry, key=entry["credit_code"])


def worker_alive(system: System):
    return lambda: any(p.poll() is None for p in system.workers)


def decided_now(system: System, load: Load) -> int:
    return len(decision_counts(system, list(load.sent)))


async def worker_killed_mid_stream(system: System, figures_file: Path, nodes: int) -> None:
    """SIGKILL the system's worker mid-stream, start another: every request decided exactly once,
    a resent one answered with its stored decision (closes the system). Also run on the secure
    cluster (tests/faults/test_security.py)."""
    load = None
    try:
        scenario = Scenario(seed=33)
        await load_enterprises(system, scenario)
        count = 500
        load = Load(system, scenario, count).start()
        first = system.workers[0]

        def quarter_with_the_first() -> bool:  # the first one is resent after the restart, below
            decided = decision_counts(system, list(load.sent))
            return len(decided) >= count // 4 and bool(load.sent) and load.sent[0] in decided

        await until(
            quarter_with_the_first,
            DECIDE_TIMEOUT,
            "a quarter of the decisions, the first request's among them, before the kill",
            worker_alive(system),
        )
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
        while len(decision_counts(system, load.sent)) < count and time.monotonic() < deadline and second.poll() is None:
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
            again = await system.tap.wait_for(
                system.topics.decisions, lambda m: m.key == early_sid.encode(), 2, DECIDE_TIMEOUT
            )
            await settle(system, worker_alive(system))
        else:
            await system.tap.caught_up([system.topics.decisions, system.topics.status, system.topics.deadletter])

        counts = decision_counts(system, load.sent)
        if again:
            counts[early_sid] -= 1  # the resend above, answered on purpose
        requests = tally(counts, load.sent)
        figures = {
            "nodes": nodes,
            "requests_sent": requests["sent"],
            "decisions_received": requests["received"],
            "duplicates": requests["duplicates"],
            "missing": requests["missing"],
            "requests_sent_before_kill": sent_at_kill,
            "decided_before_kill": decided_at_kill,
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
