"""Store-and-forward at a checkpoint station, on Apache Kafka: the broker stops mid-shift, the
station keeps verifying and records 50 scans into its outbox, the broker comes back, and the
worker answers each of the 50 exactly once (0 duplicates, 0 missing), in the order recorded.
Then the same with the station SIGKILLed and restarted while the broker is down.

Figures go to the test's output (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections import Counter

import aiohttp
import pytest

from models.records import parse_time
from tests.support.factories import decided, until
from tests.support.factories import station_request as a_request
from tests.support.system import BROKER_KIND, Client, make_broker, start_station, start_system, stop_processes

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(
        not (shutil.which("java") and shutil.which("mvn")), reason="needs java and mvn on PATH to run real Kafka"
    ),
    pytest.mark.skipif(
        BROKER_KIND == "kafka3", reason="starts a 1-node Apache Kafka of its own: runs once, in the kafka lane"
    ),
    pytest.mark.timeout(900),
]

SCANS = 50
ANSWER_TIMEOUT = 300.0  # the worker rejoins its group after the broker returns


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = make_broker("kafka", tmp_path_factory.mktemp("station-kafka"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
async def system(cluster, tmp_path_factory):
    sysm = await start_system(
        cluster, tmp_path_factory.mktemp("station-system"), kind="kafka", prefix=f"so{uuid.uuid4().hex[:4]}."
    )
    yield sysm
    await sysm.close()


async def passes_at_station(system, count: int) -> tuple[str, list[dict]]:
    decisions = [await decided(system, a_request("P0" if i % 2 else "P1")) for i in range(count)]
    return decisions[0]["pass"]["route"]["checkpoints"][0]["checkpoint_id"], [d["pass"] for d in decisions]


async def record(client: Client, passes: list[dict], checkpoint_id: str) -> list[str]:
    """Arrival then departure of each pass: the scan ids in the order recorded."""
    ids = []
    for p in passes:
        for kind in ("arrival", "departure"):
            scan = await client.post(
                "api/scan", {"kind": kind, "pass_id": p["pass_id"], "plate": p["plate"], "checkpoint_id": checkpoint_id}
            )
            ids.append(scan["scan_id"])
    return ids


async def answered_once(system, scan_ids: list[str]) -> dict:
    """Wait for an answer to each scan, then tally answers and scans on the topics."""
    wanted = set(scan_ids)

    def answers():
        return [m for m in system.tap.where(system.topics.status) if m.json["cause"][5:] in wanted]

    await until(
        lambda: len({m.json["cause"] for m in answers()}) >= len(wanted),
        ANSWER_TIMEOUT,
        f"answers to {len(wanted)} scans",
    )
    await system.tap.caught_up()
    causes = Counter(m.json["cause"][5:] for m in answers())
    published = [m for m in system.tap.where(system.topics.scans) if m.json["scan_id"] in wanted]
    order_kept = all(
        [m.json["scan_id"] for m in published if m.partition == part]
        == [s for s in scan_ids if s in {m.json["scan_id"] for m in published if m.partition == part}]
        for part in {m.partition for m in published}
    )
    return {
        "recorded": len(scan_ids),
        "answered": len(causes),
        "duplicates": sum(n - 1 for n in causes.values()),
        "missing": len(wanted - set(causes)),
        "published": len(published),
        "published_twice": len(published) - len({m.json["scan_id"] for m in published}),
        "order_kept": order_kept,
    }


async def offline(client: Client) -> bool:
    return not (await client.state())["online"]


async def test_fifty_scans_recorded_offline_are_each_answered_once(cluster, system, tmp_path):
    checkpoint_id, passes = await passes_at_station(system, SCANS // 2 + 1)
    station = start_station(system.env, tmp_path, [checkpoint_id], system.public_key_path).ready()
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, station)
            await until(_async_state(client, lambda s: len(s["arrivals"]) >= len(passes)), 120, "the station's passes")
            warmup = await record(client, passes[:1], checkpoint_id)  # mid-shift: the link works
            await answered_once(system, warmup)
            await until(_async_state(client, all_fresh), 60, "the station to read every topic to its end")

            await asyncio.to_thread(cluster.stop_node, 0)
            try:
                await until(lambda: offline(client), 30, "the station to see the broker gone")
                checked = await client.post(
                    "api/check",
                    {"token": passes[1]["token"], "plate": passes[1]["plate"], "checkpoint_id": checkpoint_id},
                )
                scan_ids = await record(client, passes[1:], checkpoint_id)
                queued = (await client.state())["queued"]
            finally:
                await asyncio.to_thread(cluster.start_node, 0)
            figures = await answered_once(system, scan_ids)
            await until(_async_state(client, lambda s: s["online"] and s["queued"] == 0), 60, "the outbox drained")
            # Back online, the views are fresh again: read to the end after the outage, not before it.
            offline_as_of = parse_time(checked["freshness"]["statuses"]["as_of"])
            await until(
                _async_state(client, lambda s: parse_time(s["freshness"]["statuses"]["as_of"]) > offline_as_of),
                60,
                "the station to read the statuses to their end again",
            )
    finally:
        stop_processes([station.proc])
    print("\nstation offline:", json.dumps({**figures, "queued_while_offline": queued}))
    assert checked["green"], checked
    # Offline for less than the views' limits: how old they are, and not stale (no warning) yet.
    assert checked["stale_view"] is False and checked["freshness"]["statuses"]["age_seconds"] > 0, checked
    assert queued == SCANS
    assert figures == {
        "recorded": SCANS,
        "answered": SCANS,
        "duplicates": 0,
        "missing": 0,
        "published": SCANS,
        "published_twice": 0,
        "order_kept": True,
    }


async def test_a_station_killed_while_offline_loses_nothing(cluster, system, tmp_path):
    checkpoint_id, passes = await passes_at_station(system, SCANS // 2)
    station = start_station(system.env, tmp_path, [checkpoint_id], system.public_key_path).ready()
    again = None
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, station)
            await until(_async_state(client, lambda s: len(s["arrivals"]) >= len(passes)), 120, "the station's passes")
            await until(_async_state(client, all_fresh), 60, "the station to read every topic to its end")
            await asyncio.to_thread(cluster.stop_node, 0)
            try:
                await until(lambda: offline(client), 30, "the station to see the broker gone")
                before = await record(client, passes[: SCANS // 4], checkpoint_id)
                station.proc.kill()  # SIGKILL: nothing flushed, nothing said
                station.proc.wait()
                again = start_station(
                    system.env, tmp_path, [checkpoint_id], system.public_key_path, "station-restarted"
                ).ready()
                client = Client(session, again)
                checked = await client.post(
                    "api/check",
                    {"token": passes[-1]["token"], "plate": passes[-1]["plate"], "checkpoint_id": checkpoint_id},
                )
                after = await record(client, passes[SCANS // 4 :], checkpoint_id)
                queued = (await client.state())["queued"]
            finally:
                await asyncio.to_thread(cluster.start_node, 0)
            figures = await answered_once(system, before + after)
            await until(_async_state(client, lambda s: s["online"] and s["queued"] == 0), 60, "the outbox drained")
    finally:
        stop_processes([station.proc] + ([again.proc] if again else []))
    print(
        "\nstation killed offline:",
        json.dumps({**figures, "queued_while_offline": queued, "recorded_before_kill": len(before)}),
    )
    assert checked["green"], checked
    # Restarted offline, it still knows when its view was last fresh (its store noted it).
    assert checked["freshness"]["statuses"]["age_seconds"] is not None and not checked["stale_view"], checked
    assert queued == SCANS
    assert figures == {
        "recorded": SCANS,
        "answered": SCANS,
        "duplicates": 0,
        "missing": 0,
        "published": SCANS,
        "published_twice": 0,
        "order_kept": True,
    }


def all_fresh(state: dict) -> bool:
    return not any(view["stale"] for view in state["freshness"].values())


def _async_state(client: Client, pred):
    async def cond():
        return pred(await client.state())

    return cond
