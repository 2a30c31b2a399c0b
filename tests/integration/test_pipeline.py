"""The running system, driven through Kafka as logistics firms, checkpoints and operators do."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import timedelta

import orjson
import pytest

from models.passes import verify_token
from models.records import format_time, parse_time
from streams.dev.simulator import Scenario, scans_for
from streams.keys import load_public_key
from tests.support.factories import forged as forged_token
from tests.support.factories import load_key_enterprises, until

CE_HEADERS = {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type"}


@pytest.fixture(scope="module")
async def scenario(system):
    scenario = Scenario(seed=7)
    await load_key_enterprises(system, scenario, lambda n: scenario.request(900_000 + n, kind="P2"))
    return scenario


def decisions_for(system, ids):
    ids = {i.encode() for i in ids}
    return system.tap.where(system.topics.decisions, lambda m: m.key in ids)


async def test_every_request_ends_as_exactly_one_decision_or_dead_letter(system, scenario):
    bodies = [scenario.request(n) for n in range(200)]
    malformed = [scenario.malformed(n) for n in range(6)]
    for body in bodies:
        await system.send(system.topics.requests, body, key=body["shipment_id"])
    bad_keys = [f"bad-{n}-{id(scenario)}" for n in range(len(malformed))]
    for key, raw in zip(bad_keys, malformed):
        await system.send(system.topics.requests, raw, key=key)

    ids = [b["shipment_id"] for b in bodies]
    await system.tap.wait_for(system.topics.decisions, lambda m: m.key in {i.encode() for i in ids}, len(ids))
    # A malformed value ends as a dead letter, or as a rejection naming its fields when it is
    # a JSON object and the key gives the shipment id: one or the other, exactly once.
    bad = {k.encode() for k in bad_keys}
    await system.tap.wait_for(
        None, lambda m: m.key in bad and m.topic in (system.topics.deadletter, system.topics.decisions), len(bad)
    )
    decided = decisions_for(system, ids)

    assert Counter(m.key for m in decided) == Counter(i.encode() for i in ids)  # exactly one each
    answers = system.tap.where(
        None, lambda m: m.key in bad and m.topic in (system.topics.deadletter, system.topics.decisions)
    )
    assert Counter(m.key for m in answers) == Counter(bad)
    dead = [m for m in answers if m.topic == system.topics.deadletter]
    assert dead and all(m.json["topic"] == system.topics.requests and m.json["error"] for m in dead)
    assert all(m.json["decision"] == "rejected" for m in answers if m.topic == system.topics.decisions)
    outcomes = Counter(m.json["decision"] for m in decided)
    assert outcomes["approved"] > 100 and outcomes["rejected"] > 5
    for m in decided:
        assert CE_HEADERS <= set(m.headers)
        assert m.headers["ce_type"] == b"cn.greenchannel.pass.decision"


async def test_bad_fields_are_each_named_in_the_rejection(system, scenario):
    body = scenario.request(1000, kind="bad_fields")
    await system.send(system.topics.requests, body, key=body["shipment_id"])
    [m] = await system.tap.wait_for(system.topics.decisions, lambda m: m.key == body["shipment_id"].encode())
    assert m.json["decision"] == "rejected"
    assert {r.get("field") for r in m.json["reasons"]} == {"driver.id_number", "cargo[0].hs_code"}


async def test_a_repeated_request_gets_the_same_pass(system, scenario):
    body = scenario.request(1001, kind="P0")
    for _ in range(2):
        await system.send(system.topics.requests, body, key=body["shipment_id"])
    found = await system.tap.wait_for(system.topics.decisions, lambda m: m.key == body["shipment_id"].encode(), 2)
    assert found[0].value == found[1].value
    assert found[0].json["pass"]["pass_id"] == found[1].json["pass"]["pass_id"]


async def test_input_without_headers_and_without_key_is_accepted(system, scenario):
    body = scenario.request(1002, kind="P1")
    await system.producer.send_and_wait(system.topics.requests, orjson.dumps(body))
    [m] = await system.tap.wait_for(system.topics.decisions, lambda m: m.key == body["shipment_id"].encode())
    assert m.json["decision"] == "approved" and m.json["priority"] == "P1"


async def test_pass_token_verifies_offline_with_the_published_key(system, scenario):
    body = scenario.request(1003, kind="P0")
    await system.send(system.topics.requests, body, key=body["shipment_id"])
    [m] = await system.tap.wait_for(system.topics.decisions, lambda m: m.key == body["shipment_id"].encode())
    the_pass = m.json["pass"]
    claims = verify_token(the_pass["token"], load_public_key(system.public_key_path))
    assert claims.pid == the_pass["pass_id"] and claims.plate == the_pass["plate"]
    assert claims.names_route([c["checkpoint_id"] for c in the_pass["route"]["checkpoints"]])
    assert the_pass["toll_exempt"] is True
    assert the_pass["pass_id"][:6] == the_pass["issuer"]


async def approved(system, scenario, n, kind="P0", **over):
    body = scenario.request(n, kind=kind)
    body.update(over)
    await system.send(system.topics.requests, body, key=body["shipment_id"])
    [m] = await system.tap.wait_for(system.topics.decisions, lambda m: m.key == body["shipment_id"].encode())
    assert m.json["decision"] == "approved", m.json["reasons"]
    return m.json


def statuses(system, pass_id):
    return system.tap.where(system.topics.status, lambda m: m.key == pass_id.encode())


async def test_checkpoint_scans_drive_the_pass_to_delivered(system, scenario):
    decision = await approved(
        system, scenario, 1100, origin={"adcode": "420111"}, destination={"adcode": "440106"}, trip="single"
    )
    pass_id = decision["pass"]["pass_id"]
    scans = scans_for(decision, random.Random(1))
    for scan in scans:
        await system.send(system.topics.scans, scan, key=pass_id)
    # issued + one answer per scan
    events = await system.tap.wait_for(system.topics.status, lambda m: m.key == pass_id.encode(), 1 + len(scans))
    kinds = [m.json["status"] for m in events]
    assert kinds[0] == "issued" and kinds[-1] == "delivered"
    assert events[-1].json["reason"] == "arrived_at_destination"
    assert "at_checkpoint" in kinds and "in_transit" in kinds
    assert not [m for m in events if "trip" in m.json]  # only multi-trip passes' events number trips
    departures = [m.json for m in events if m.json["status"] == "in_transit"]
    for d in departures:
        assert d["dwell_seconds"] > 0 and d["dwell_exceeded"] == (d["dwell_seconds"] > 900)
    assert all(CE_HEADERS <= set(m.headers) for m in events)

    # A checkpoint re-sending a scan changes nothing and gets the same answer.
    await system.send(system.topics.scans, scans[0], key=pass_id)
    again = await system.tap.wait_for(system.topics.status, lambda m: m.key == pass_id.encode(), 2 + len(scans))
    assert again[-1].value == events[1].value


def shuttle(the_pass: dict, legs: int) -> list[tuple[dict, str, int]]:
    """A truck on a multi-trip pass running its route `legs` times, out, back, out...: the
    scans, half an hour apart from its departure, each with the status and the trip number it
    should get. There is no checkpoint at the origin: the way back ends at the first border."""
    ids = [c["checkpoint_id"] for c in the_pass["route"]["checkpoints"]]
    out = [(kind, cp) for cp in ids[:-1] for kind in ("arrival", "departure")] + [("arrival", ids[-1])]
    back = [("departure", ids[-1])] + [(kind, cp) for cp in reversed(ids[:-1]) for kind in ("arrival", "departure")]
    when, trip, scans = parse_time(the_pass["valid_from"]), 1, []
    for leg in range(legs):
        for kind, cp in out if leg % 2 == 0 else back:
            when += timedelta(minutes=30)
            scan = {
                "scan_id": f"{the_pass['pass_id']}-{len(scans)}",
                "checkpoint_id": cp,
                "pass_id": the_pass["pass_id"],
                "plate": the_pass["plate"],
                "kind": kind,
                "token": the_pass["token"],
                "scanned_at": format_time(when),
            }
            scans.append((scan, "in_transit" if kind == "departure" else "at_checkpoint", trip))
        trip += leg % 2 == 0  # an arrival at the destination ends the trip
    return scans


async def test_a_multi_trip_pass_runs_out_back_and_out_again_until_it_expires(system, scenario):
    import urllib.request

    decision = await approved(
        system, scenario, 1110, origin={"adcode": "420111"}, destination={"adcode": "440106"}, trip="multi"
    )
    the_pass = decision["pass"]
    pass_id, destination = the_pass["pass_id"], the_pass["route"]["checkpoints"][-1]["checkpoint_id"]
    assert the_pass["trip"] == "multi" and len(the_pass["route"]["checkpoints"]) >= 2
    planned = shuttle(the_pass, 3)  # out (trip 1), back and out again (trip 2)
    assert parse_time(planned[-1][0]["scanned_at"]) < parse_time(the_pass["valid_until"])
    # After valid_until: the pass has ended (during trip 3), and stays so.
    late = parse_time(the_pass["valid_until"]) + timedelta(minutes=1)
    first = the_pass["route"]["checkpoints"][0]["checkpoint_id"]
    expired = [
        {
            **planned[0][0],
            "scan_id": f"{pass_id}-late{i}",
            "checkpoint_id": cp,
            "scanned_at": format_time(late + timedelta(minutes=i)),
        }
        for i, cp in enumerate((first, destination))
    ]
    scans = [scan for scan, _, _ in planned] + expired
    for scan in scans:
        await system.send(system.topics.scans, scan, key=pass_id)
    events = [
        m.json
        for m in await system.tap.wait_for(system.topics.status, lambda m: m.key == pass_id.encode(), 1 + len(scans))
    ]
    assert len(events) == 1 + len(scans)
    assert (events[0]["status"], events[0]["trip"]) == ("issued", 1)
    answers = {e["cause"].removeprefix("scan:"): e for e in events[1:]}
    got = [(answers[s["scan_id"]]["status"], answers[s["scan_id"]]["trip"]) for s, _, _ in planned]
    assert got == [(status, trip) for _, status, trip in planned]
    completed = [answers[s["scan_id"]] for s, _, _ in planned if answers[s["scan_id"]]["reason"] == "trip_completed"]
    assert [(e["checkpoint_id"], e["trip"]) for e in completed] == [(destination, 1), (destination, 2)]
    assert not [e for e in events if e["status"] in ("held", "delivered")]
    # Every departure from a border checkpoint measures the dwell since the arrival there; leaving
    # the destination follows unloading, not a queue, and has none.
    departures = [answers[s["scan_id"]] for s, _, _ in planned if s["kind"] == "departure"]
    assert all(d["dwell_seconds"] == 1800 for d in departures if d["checkpoint_id"] != destination)
    assert [(d["trip"], d["dwell_seconds"]) for d in departures if d["checkpoint_id"] == destination] == [(2, None)]
    late_answers = [answers[s["scan_id"]] for s in expired]
    assert [(e["status"], e["reason"], e["trip"]) for e in late_answers] == [
        ("expired", "validity_ended", 3),
        ("expired", "pass_expired", 3),
    ]

    # The live state: ended, with the two trips it completed.
    url = f"http://127.0.0.1:{system.env['GC_WEB_PORT']}/passes/{pass_id}/"

    def get():
        with urllib.request.urlopen(url, timeout=10) as response:
            return orjson.loads(response.read())

    state = await asyncio.to_thread(get)
    assert (state["status"], state["trips"], state["trip"]) == ("expired", 2, "multi")


async def test_plate_mismatch_and_forged_token_hold_the_vehicle(system, scenario):
    decision = await approved(system, scenario, 1101, origin={"adcode": "420111"}, destination={"adcode": "430104"})
    pass_id = decision["pass"]["pass_id"]
    [first] = scans_for(decision, random.Random(2), mismatch=True)[:1]
    await system.send(system.topics.scans, first, key=pass_id)
    await system.tap.wait_for(system.topics.status, lambda m: m.key == pass_id.encode(), 2)
    # Without a key: the pass is found from the token, which is forged.
    forged = {
        **first,
        "scan_id": first["scan_id"] + "-forged",
        "plate": decision["pass"]["plate"],
        "token": forged_token(decision["pass"]["token"]),  # a year longer, the signature kept
    }
    del forged["pass_id"]
    await system.send(system.topics.scans, forged)
    events = await system.tap.wait_for(system.topics.status, lambda m: m.key == pass_id.encode(), 3)
    assert [m.json["status"] for m in events] == ["issued", "held", "held"]
    assert events[1].json["reason"] == "plate_mismatch"
    assert events[2].json["reason"].startswith("bad_token")


async def test_a_scan_without_a_token_never_releases_a_hold(system, scenario):
    """A plate is not a credential (a cloned plate looks the same): a held vehicle scanned again with
    no token stays held, `no_token`; the genuine token then releases it."""
    decision = await approved(system, scenario, 1102, origin={"adcode": "420111"}, destination={"adcode": "430104"})
    pass_id = decision["pass"]["pass_id"]
    [first] = scans_for(decision, random.Random(3), mismatch=True)[:1]
    await system.send(system.topics.scans, first, key=pass_id)
    tokenless = {**first, "scan_id": first["scan_id"] + "-no-qr", "plate": decision["pass"]["plate"]}
    del tokenless["token"]
    await system.send(system.topics.scans, tokenless, key=pass_id)
    genuine = {**tokenless, "scan_id": first["scan_id"] + "-qr", "token": decision["pass"]["token"]}
    await system.send(system.topics.scans, genuine, key=pass_id)
    events = await system.tap.wait_for(system.topics.status, lambda m: m.key == pass_id.encode(), 4)
    answers = [(m.json["status"], m.json["reason"]) for m in events]
    assert answers == [("issued", None), ("held", "plate_mismatch"), ("held", "no_token"), ("at_checkpoint", None)]


async def test_scan_for_unknown_pass_is_held_and_garbage_scan_is_dead_lettered(system):
    scan = {
        "scan_id": "u1",
        "checkpoint_id": "DST-440106",
        "pass_id": "999999000001",
        "plate": "粤A12345",
        "kind": "arrival",
        "scanned_at": "2020-02-25T10:00:00Z",
    }
    await system.send(system.topics.scans, scan)
    [m] = await system.tap.wait_for(system.topics.status, lambda m: m.key == b"999999000001")
    assert m.json["status"] == "held" and m.json["reason"] == "unknown_pass"
    await system.send(system.topics.scans, b'{"scan_id": 1}', key="garbage-scan")
    await system.tap.wait_for(system.topics.deadletter, lambda m: m.key == b"garbage-scan")


async def test_risk_change_reroutes_or_suspends_active_passes(system, scenario):
    # Wuhan -> Guangzhou by the shortest path crosses Hunan.
    decision = await approved(system, scenario, 1200, origin={"adcode": "420111"}, destination={"adcode": "440106"})
    the_pass = decision["pass"]
    through = [a for a in the_pass["route"]["adcodes"][1:-1] if a[:2] == "43"]
    assert through, the_pass["route"]["adcodes"]
    # A P3 pass into Changsha, which is about to become high risk.
    p3 = await approved(
        system, scenario, 1201, kind="P3", origin={"adcode": "420111"}, destination={"adcode": "430104"}
    )

    at = format_time(parse_time(decision["decided_at"]) + timedelta(minutes=1))
    risk = {"adcode": "430000", "level": "high", "effective_at": at}
    await system.send(system.topics.risk, risk, key="430000")

    [rerouted] = await system.tap.wait_for(
        system.topics.status, lambda m: m.key == the_pass["pass_id"].encode() and m.json["status"] == "rerouted"
    )
    new_route = rerouted.json["route"]["adcodes"]
    assert not any(a[:2] == "43" for a in new_route[1:-1])
    new_checkpoints = [c["checkpoint_id"] for c in rerouted.json["route"]["checkpoints"]]
    assert verify_token(rerouted.json["token"], load_public_key(system.public_key_path)).names_route(new_checkpoints)
    [suspended] = await system.tap.wait_for(
        system.topics.status, lambda m: m.key == p3["pass"]["pass_id"].encode() and m.json["status"] == "suspended"
    )
    assert suspended.json["reason"] == "high_risk_region"

    # After the change, a P2 request into Hunan is refused; a P0 one is approved.
    later = format_time(parse_time(at) + timedelta(minutes=5))
    body = scenario.request(1202, kind="P2")
    body.update(destination={"adcode": "430104"}, submitted_at=later)
    await system.send(system.topics.requests, body, key=body["shipment_id"])
    [m] = await system.tap.wait_for(system.topics.decisions, lambda m: m.key == body["shipment_id"].encode())
    assert m.json["decision"] == "rejected" and m.json["reasons"][0]["code"] == "high_risk_region"

    # Lowering the risk again reinstates the suspended pass on a route.
    lower = {"adcode": "430000", "level": "low", "effective_at": format_time(parse_time(later) + timedelta(minutes=5))}
    await system.send(system.topics.risk, lower, key="430000")
    await system.tap.wait_for(
        system.topics.status,
        lambda m: (
            m.key == p3["pass"]["pass_id"].encode()
            and m.json["status"] == "rerouted"
            and m.json["reason"] == "reinstated_safe_route"
        ),
    )


async def test_pass_show_prints_the_pass_and_its_history_from_the_database(system, scenario):
    decision = await approved(
        system, scenario, 1300, origin={"adcode": "310115"}, destination={"adcode": "320506"}, trip="single"
    )
    pass_id = decision["pass"]["pass_id"]
    for scan in scans_for(decision, random.Random(3)):
        await system.send(system.topics.scans, scan, key=pass_id)
    await system.tap.wait_for(
        system.topics.status, lambda m: m.key == pass_id.encode() and m.json["status"] == "delivered"
    )
    # The projection is asynchronous, and the pass's row may have its statuses (one topic) before
    # its decision's columns, the plate among them (another topic): poll the CLI until it shows
    # all that is asserted.
    wanted = (decision["pass"]["plate"], "issued", "delivered", "arrived_at_destination")

    async def shown() -> bool:
        result = await asyncio.to_thread(system.cli, "pass", "show", pass_id)
        return result.returncode == 0 and all(w in result.stdout for w in wanted)

    await until(shown, 30, f"`pass show {pass_id}` with {', '.join(wanted)}")


async def test_web_views_show_a_pass_and_checkpoint_waiting_times(system, scenario):
    import urllib.error
    import urllib.request

    decision = await approved(system, scenario, 1400, origin={"adcode": "420111"}, destination={"adcode": "440106"})
    pass_id = decision["pass"]["pass_id"]
    scans = scans_for(decision, random.Random(4))
    for scan in scans[:2]:  # arrival and departure at the first border checkpoint
        await system.send(system.topics.scans, scan, key=pass_id)
    await system.tap.wait_for(
        system.topics.status, lambda m: m.key == pass_id.encode() and m.json["status"] == "in_transit"
    )
    base = f"http://127.0.0.1:{system.env['GC_WEB_PORT']}"

    def get(path):
        try:
            with urllib.request.urlopen(base + path, timeout=10) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read())

    status, state = await asyncio.to_thread(get, f"/passes/{pass_id}/")
    assert status == 200 and state["status"] == "in_transit" and state["plate"] == decision["pass"]["plate"]
    assert state["checkpoint_id"] == scans[1]["checkpoint_id"] and "scans" not in state
    status, board = await asyncio.to_thread(get, "/checkpoints/")
    first = scans[0]["checkpoint_id"]
    [row] = [r for r in board["checkpoints"] if r["checkpoint_id"] == first]
    assert row["recent_departures"] >= 1 and row["median_dwell_seconds"] > 0
    status, _ = await asyncio.to_thread(get, "/passes/000000000000/")
    assert status == 404
