"""The channel's clock through the broker: ticks on the internal pass topic expire passes
without a scan, take them out of the worker's state after the retention, and replay alike."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from models.passes import kafka_partition
from models.records import parse_time
from streams.dev.simulator import Scenario
from streams.handlers import clock_command
from tests.support.factories import until
from tests.support.system import PARTITIONS, start_system

RETENTION = timedelta(days=7)  # the default (GC_PASS_RETENTION_DAYS)


def wuhan_to_guangzhou(n: int) -> dict:
    body = Scenario(seed=23).request(n, kind="P0")
    body.update(origin={"adcode": "420111"}, destination={"adcode": "440106"})
    return body


async def tick(system, at: datetime, partition: int) -> None:
    """What a worker's clock sends (GC_CLOCK_SECONDS), at a time of the scenario's."""
    await system.producer.send_and_wait(system.topics.pass_events, clock_command(at), key=b"clock", partition=partition)


def pass_view(system, pass_id: str) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{system.env['GC_WEB_PORT']}/passes/{pass_id}/"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


async def test_a_pass_expires_by_the_clock_leaves_after_the_retention_and_the_replay_agrees(own_system):
    s = own_system
    body = wuhan_to_guangzhou(1)
    sid = body["shipment_id"]
    await s.send(s.topics.requests, body, key=sid)
    [decided] = await s.tap.wait_for(s.topics.decisions, lambda m: m.key == sid.encode())
    the_pass = orjson.loads(decided.value)["pass"]
    pid, ends = the_pass["pass_id"], parse_time(the_pass["valid_until"])
    home = kafka_partition(pid.encode(), PARTITIONS)
    # The decision and the pass's first status travel different topics: the tap may read the
    # decision first (the kafka3 lane did), so wait for the status too.
    [issued] = await s.tap.wait_for(s.topics.status, lambda m: m.key == pid.encode())
    assert orjson.loads(issued.value)["status"] == "issued"

    await tick(s, ends + timedelta(seconds=1), home)
    [expired] = await s.tap.wait_for(
        s.topics.status, lambda m: m.key == pid.encode() and orjson.loads(m.value)["status"] == "expired"
    )
    event = orjson.loads(expired.value)
    assert (event["reason"], event["at"], event["cause"]) == (
        "validity_ended",
        the_pass["valid_until"],
        f"clock:{the_pass['valid_until']}",
    )
    assert dict(expired.headers)["ce_id"].startswith(f"status/{pid}/".encode())
    code, state = await asyncio.to_thread(pass_view, s, pid)
    assert (code, state["status"]) == (200, "expired")

    # A week later the pass leaves the worker's state: a repeat of its request is no longer
    # answered from there, but dead-lettered, saying where its decision is.
    await tick(s, ends + RETENTION + timedelta(seconds=1), home)
    # The tick and the repeat travel different topics (different agents): the repeat goes once the
    # tick is applied. The pass leaving shows it is, on its home partition, where the repeat goes
    # (the pass lives on its request's partition) and the late request below too.
    await until(lambda: asyncio.to_thread(lambda: pass_view(s, pid)[0] == 404), 60, "the pass to leave")
    await s.send(s.topics.requests, body, key=sid)
    [dead] = await s.tap.wait_for(s.topics.deadletter, lambda m: m.key == sid.encode())
    error = orjson.loads(dead.value)["error"]
    assert "retention (7 days)" in error and s.topics.decisions in error
    assert len(s.tap.where(s.topics.decisions, lambda m: m.key == sid.encode())) == 1  # no second decision
    # A new shipment submitted as long ago meets the same answer. It goes to the pass's home
    # partition too, the one whose tick the pass leaving proved applied (another partition's
    # clock has not ticked at all).
    late = next(
        b
        for b in map(wuhan_to_guangzhou, range(2, 100))
        if kafka_partition(b["shipment_id"].encode(), PARTITIONS) == home
    )
    await s.send(s.topics.requests, late, key=late["shipment_id"])
    [dead] = await s.tap.wait_for(s.topics.deadletter, lambda m: m.key == late["shipment_id"].encode())
    assert "retention (7 days)" in orjson.loads(dead.value)["error"]

    # The replay reads the ticks from the log: the same expiry, and the same repeat left undecided.
    replay = s.cli("replay", "--since", "offset:0", "--json", "-", "--no-progress")
    assert replay.returncode == 0, replay.stdout[-3000:] + replay.stderr[-3000:]
    report = json.loads(replay.stdout)
    assert report["ok"] and report["events"]["clock_ticks"] == 2
    assert report["statuses"]["by_status"].get("expired") == 1
    # The late request was judged by the clock as it arrived, which the replay checks in the log.
    assert (report["decisions"]["stale_requests"], report["decisions"]["repeated_requests"]) == (1, 1)


async def test_the_worker_clock_ticks_every_partition_it_owns(broker, tmp_path):
    """A worker with GC_CLOCK_SECONDS set sends a tick of the time now to each partition it owns."""
    s = await start_system(broker, tmp_path, prefix="clockticks.", env={"GC_CLOCK_SECONDS": "0.5"})
    started = datetime.now(UTC) - timedelta(seconds=1)
    consumer = AIOKafkaConsumer(**s.connection.kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(s.topics.pass_events, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ticked: dict[int, datetime] = {}
        deadline = asyncio.get_running_loop().time() + 60
        while len(ticked) < PARTITIONS:
            assert asyncio.get_running_loop().time() < deadline, f"ticks on partitions {sorted(ticked)} only"
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    command = orjson.loads(r.value)
                    if command["kind"] == "key":  # the worker's first key, broadcast to the partitions' rings
                        continue
                    assert command["kind"] == "clock" and r.key == b"clock"
                    ticked[tp.partition] = parse_time(command["at"])
        assert all(started <= at <= datetime.now(UTC) for at in ticked.values())
    finally:
        await consumer.stop()
        await s.close()
