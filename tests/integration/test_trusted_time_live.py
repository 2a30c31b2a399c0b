"""Trusted time through the running worker, in every lane: a backdated request is judged over the
window from its claimed time to the end of its pass, by the channel's clock; requests read after a
raise are routed around it whatever time they claim; and the replay proves every decision and status
from the log (without a broker: tests/unit/test_trusted_time.py).

These run in the channel's own present (the wall clock, 2026 and on), not the scenario's 2020, on
a system of their own (`own_system`: topics of their own), so the shared log stays 2020's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from models.records import format_time
from streams.dev.simulator import Scenario
from tests.integration.test_replay_live import failure
from tests.support.factories import load_key_enterprises, publish, wuhan_to_hangzhou_probe

SHIYAN, SANMENXIA = "4203", "4112"
XIAN, ZHENGZHOU = "610113", "410102"


@pytest.fixture(scope="module")
async def firms(own_system) -> Scenario:
    """Key enterprises the worker has applied (each proven by a probe), listed since 2020."""
    base = Scenario(seed=2300, start=datetime(2020, 2, 20, tzinfo=UTC))
    await load_key_enterprises(own_system, base, wuhan_to_hangzhou_probe(base))
    return base


def request(firms: Scenario, n: int, *, kind: str, origin: str, destination: str, submitted: datetime) -> dict:
    now = datetime.now(UTC)
    scenario = Scenario(seed=2301, start=now, key_enterprises=firms.key_enterprises, suppliers=firms.suppliers)
    body = scenario.request(n, kind=kind)
    body.update(
        shipment_id=f"TT-{now:%H%M%S%f}-{n}",
        origin={"adcode": origin},
        destination={"adcode": destination},
        submitted_at=format_time(submitted),
        departure_at=format_time(now + timedelta(hours=2)),
        trip="single",
    )
    return body


async def raise_to_high(system, adcode: str, at: datetime) -> None:
    done = system.cli("risk", "set", adcode, "high", "--at", format_time(at))
    assert done.returncode == 0, done.stderr[-2000:]


def replay_since(system, since: str) -> dict:
    result = system.cli("replay", "--since", since, "--json", "-", "--no-progress")
    assert result.returncode == 0, failure(result)
    return json.loads(result.stdout)


async def test_a_backdated_request_is_judged_by_the_channels_window_not_the_time_it_claims(own_system, firms):
    """The issue's first probe: Shiyan raised a minute ago; the same P2 request into Shiyan, honest
    and dated yesterday, is rejected both ways (before, the backdated one was approved)."""
    system = own_system
    since = format_time(datetime.now(UTC) - timedelta(seconds=1))
    now = datetime.now(UTC)
    await raise_to_high(system, SHIYAN, now - timedelta(minutes=1))
    # The raise is applied before anything below is decided: a probe into Shiyan is re-sent until refused.
    probe_n = 100
    while True:
        probe = request(firms, probe_n, kind="P2", origin="420111", destination="420302", submitted=now)
        decided = (await publish(system, [probe]))[probe["shipment_id"]]
        if decided["decision"] == "rejected":
            break
        probe_n += 1
        assert probe_n < 160, "the worker never applied the raise"
    honest = request(firms, 1, kind="P2", origin="420111", destination="420302", submitted=datetime.now(UTC))
    backdated = request(firms, 2, kind="P2", origin="420111", destination="420302", submitted=now - timedelta(days=1))
    decided = await publish(system, [honest, backdated])
    for body in (honest, backdated):
        decision = decided[body["shipment_id"]]
        assert [r["code"] for r in decision["reasons"]] == ["high_risk_region"], decision
        assert decision["known"]["risk"]  # it says it knew the raise
    assert decided[backdated["shipment_id"]]["decided_at"] == backdated["submitted_at"]
    future = request(firms, 3, kind="P1", origin="420111", destination="420302", submitted=now + timedelta(days=30))
    claimed_later = (await publish(system, [future]))[future["shipment_id"]]
    assert claimed_later["decided_at"] < future["submitted_at"]  # the channel's time, not the claim
    report = replay_since(system, since)
    assert report["ok"] and report["decisions"]["matched"] >= 4


async def test_requests_read_after_a_raise_are_routed_around_it_whatever_time_they_claim(own_system, firms):
    """The issue's second probe: Sanmenxia raised now; a pass decided before it is rerouted, and
    eight requests read after it, saying they were submitted 30 minutes ago on the same road
    (Xi'an -> Zhengzhou), are routed around it. The replay proves all of it."""
    system = own_system
    since = format_time(datetime.now(UTC) - timedelta(seconds=1))
    before = request(firms, 10, kind="P1", origin=XIAN, destination=ZHENGZHOU, submitted=datetime.now(UTC))
    first = (await publish(system, [before]))[before["shipment_id"]]
    assert first["decision"] == "approved" and SANMENXIA in {a[:4] for a in first["pass"]["route"]["adcodes"]}
    pass_id = first["pass"]["pass_id"]
    await raise_to_high(system, SANMENXIA, datetime.now(UTC))
    [rerouted] = await system.tap.wait_for(
        system.topics.status, lambda m: m.key == pass_id.encode() and m.json["status"] == "rerouted", timeout=120
    )
    assert SANMENXIA not in {a[:4] for a in rerouted.json["route"]["adcodes"]}

    claimed = datetime.now(UTC) - timedelta(minutes=30)
    late = [request(firms, 20 + n, kind="P1", origin=XIAN, destination=ZHENGZHOU, submitted=claimed) for n in range(8)]
    decided = await publish(system, late)
    for body in late:
        decision = decided[body["shipment_id"]]
        assert decision["decision"] == "approved", decision
        assert SANMENXIA not in {a[:4] for a in decision["pass"]["route"]["adcodes"]}, decision["pass"]["route"]
        assert decision["decided_at"] == body["submitted_at"]
    report = replay_since(system, since)
    assert report["ok"] and report["decisions"]["matched"] >= 9
    assert report["statuses"]["matched"] >= 10  # the issued ones and the rerouting
