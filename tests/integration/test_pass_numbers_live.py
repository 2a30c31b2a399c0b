"""Pass numbers through the running worker: a busy county, and cities without counties."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter

import orjson
from sqlmodel import Session, select

from models.passes import kafka_partition
from models.records import parse_time
from models.store.db import make_engine
from models.store.tables import Pass
from streams.dev.simulator import Scenario
from tests.support.factories import CITIES_WITHOUT_COUNTIES, until
from tests.support.system import PARTITIONS, ROOT


def _requests(origin: str, count: int, seed: int, **over) -> list[dict]:
    scenario, run = Scenario(seed=seed), uuid.uuid4().hex[:8]
    bodies = []
    for n in range(count):
        body = scenario.request(n, kind="P0")
        body.update(shipment_id=f"BUSY-{run}-{n:05d}", origin={"adcode": origin}, **over)
        bodies.append(body)
    return bodies


async def _decide(system, bodies: list[dict], timeout: float) -> dict[str, dict]:
    for body in bodies:
        await system.producer.send(system.topics.requests, orjson.dumps(body), key=body["shipment_id"].encode())
    await system.producer.flush()
    ids = {b["shipment_id"].encode() for b in bodies}
    found = await system.tap.wait_for(system.topics.decisions, lambda m: m.key in ids, len(ids), timeout=timeout)
    return {m.key.decode(): m.json for m in found}


def _pass_rows(url: str, pass_ids: set[str]) -> dict[str, Pass]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return {row.pass_id: row for row in session.exec(select(Pass).where(Pass.pass_id.in_(pass_ids)))}
    finally:
        engine.dispose()


def _same_instant(a, b: str) -> bool:
    return a is not None and (a if a.tzinfo else a.replace(tzinfo=parse_time(b).tzinfo)) == parse_time(b)


async def test_two_thousand_requests_from_one_county_get_distinct_passes(system):
    bodies = _requests("420111", 2000, seed=21)
    decisions = await _decide(system, bodies, timeout=600)
    assert len(decisions) == 2000  # one decision each
    passes = {sid: d["pass"] for sid, d in decisions.items()}
    assert all(p is not None for p in passes.values()), [d["reasons"] for d in decisions.values() if not d["pass"]]
    pass_ids = {p["pass_id"] for p in passes.values()}
    assert len(pass_ids) == 2000
    # Each pass lives on its request's partition.
    assert all(
        kafka_partition(p["pass_id"].encode(), PARTITIONS) == kafka_partition(sid.encode(), PARTITIONS)
        for sid, p in passes.items()
    )

    wanted = {pid.encode() for pid in pass_ids}
    await system.tap.wait_for(
        system.topics.status, lambda m: m.key in wanted and m.json["status"] == "issued", 2000, timeout=300
    )
    await system.tap.caught_up([system.topics.status, system.topics.deadletter])
    issued = Counter(
        m.key.decode()
        for m in system.tap.where(system.topics.status, lambda m: m.key in wanted and m.json["status"] == "issued")
    )
    assert set(issued) == pass_ids and set(issued.values()) == {1}
    assert not system.tap.where(system.topics.deadletter, lambda m: m.key in wanted)

    # The database row of every pass is its decision's pass. The projection is asynchronous, and
    # decisions and statuses are different topics: a pass's row may first be made by its `issued`
    # status alone (its decision's columns still empty). Wait, with a deadline, until every row
    # has its decision's columns (written together, in one statement), then compare them.
    def projected() -> dict[str, Pass] | None:
        rows = _pass_rows(system.env["GC_DATABASE_URL"], pass_ids)
        return rows if len(rows) == 2000 and all(r.shipment_id is not None for r in rows.values()) else None

    rows = await until(projected, 120, "the decisions of the 2000 passes in the database")
    for sid, p in passes.items():
        row = rows[p["pass_id"]]
        assert (
            row.shipment_id,
            row.plate,
            row.priority,
            row.issuer,
            row.trip,
            row.toll_exempt,
            row.token,
            row.route,
        ) == (sid, p["plate"], p["priority"], p["issuer"], p["trip"], p["toll_exempt"], p["token"], p["route"])
        assert _same_instant(row.valid_from, p["valid_from"]) and _same_instant(row.valid_until, p["valid_until"])


async def test_requests_from_and_to_each_city_without_counties_are_approved(system):
    bodies = []
    for adcode in sorted(CITIES_WITHOUT_COUNTIES):
        bodies += _requests(adcode, 1, seed=22, destination={"adcode": "420111"})
        bodies += _requests("420111", 1, seed=23, destination={"adcode": adcode})
    decisions = await _decide(system, bodies, timeout=120)
    for body in bodies:
        d = decisions[body["shipment_id"]]
        assert d["decision"] == "approved", d["reasons"]
        origin, destination = body["origin"]["adcode"], body["destination"]["adcode"]
        assert d["pass"]["pass_id"].startswith(origin) and d["pass"]["issuer"] == origin
        assert d["pass"]["route"]["checkpoints"][-1]["checkpoint_id"] == f"DST-{destination}"


async def test_a_worker_refuses_a_partition_count_other_than_the_topics(system):
    env = {**system.env, "GC_PARTITIONS": str(PARTITIONS + 1)}
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "topics"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert f"GC_PARTITIONS={PARTITIONS + 1}, but the topics have other partition counts" in result.stderr
    assert f"{system.topics.requests} {PARTITIONS}" in result.stderr
