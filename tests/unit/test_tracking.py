"""Tracker.risk_changed without a broker: where a rerouted vehicle's new route starts.

Wuhan (420111) → Guangzhou (440106) by the shortest path runs through Xianning (4212), Jiangxi
(3609, 3603) and Chenzhou in Hunan (4310); its first checkpoint is the Hubei–Jiangxi border.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec.structs import replace

from models.passes import PassState, Signer, verify_token
from models.records import CheckpointScan, RegionRisk, format_time, parse_risk, parse_time
from models.tracking import Tracker
from tests.support.factories import DEPARTURE, KEY, allocated, forged, make_tracker, token_of, wuhan_to_guangzhou

TEST_SIGNER = Signer(KEY, "test")  # the key make_tracker signs and verifies with


@pytest.fixture
def tracker():
    """A tracker with no risk levels in force yet."""
    return make_tracker()


def a_pass(tracker: Tracker) -> PassState:
    return wuhan_to_guangzhou(tracker)


def scanned_at_first_checkpoint(tracker: Tracker, state: PassState) -> PassState:
    first = state.route["checkpoints"][0]
    for kind, minutes in (("arrival", 240), ("departure", 250)):
        scan = CheckpointScan(
            scan_id=f"s-{kind}",
            checkpoint_id=first["checkpoint_id"],
            pass_id=state.pass_id,
            plate=state.plate,
            kind=kind,
            scanned_at=DEPARTURE + timedelta(minutes=minutes),
            token=token_of(state, TEST_SIGNER),
        )
        state, event = tracker.scan(state, scan, state.pass_id)
        assert event["status"] in ("at_checkpoint", "in_transit"), event
    return state


def raise_risk(tracker: Tracker, adcode: str, at: datetime) -> RegionRisk:
    risk = parse_risk({"adcode": adcode, "level": "high", "effective_at": format_time(at)})
    tracker.decider.risk.apply(risk)
    return risk


def test_the_route_this_file_assumes(tracker):
    route = a_pass(tracker).route
    assert route["adcodes"][:3] == ["420111", "421200", "360900"]
    assert route["checkpoints"][0]["checkpoint_id"] == "BX-3609-4212"
    assert any(a.startswith("43") for a in route["adcodes"])


def test_a_vehicle_past_a_checkpoint_is_rerouted_from_there(tracker):
    state = scanned_at_first_checkpoint(tracker, a_pass(tracker))
    old = state.route
    at = DEPARTURE + timedelta(hours=5)
    new, event = tracker.risk_changed(state, raise_risk(tracker, "430000", at))  # Hunan, ahead of it
    assert event["status"] == "rerouted" and event["reason"] == "route_crossed_high_risk_region"
    route = new.route
    # Behind the vehicle nothing changes; ahead of it no region of Hunan.
    assert route["adcodes"][:3] == old["adcodes"][:3]
    assert route["checkpoints"][0] == old["checkpoints"][0]
    assert not any(a.startswith("43") for a in route["adcodes"])
    assert route["adcodes"][-1] == "440106" and route["checkpoints"][-1]["checkpoint_id"] == "DST-440106"
    # The rest of the trip is the planner's route from the region past the checkpoint, leaving
    # at the time of the change (not the trip from the origin, timed from the departure).
    d = tracker.decider
    rest = d.planner.plan(
        d.gazetteer.locate("360900"),
        d.gazetteer.locate("440106"),
        blocked=d.risk.blocked_at(at, d.graph.prefectures_in),
        departure=at,
    ).to_dict()
    assert route["adcodes"][2:] == rest["adcodes"]
    assert route["checkpoints"][1:] == rest["checkpoints"] and route["eta"] == rest["eta"]
    claims = verify_token(event["token"], KEY.public_key())
    assert list(claims.cp) == [c["checkpoint_id"] for c in route["checkpoints"]]
    # The vehicle's next scans are on the new route: the checkpoint it left still verifies too.
    nxt = route["checkpoints"][1]["checkpoint_id"]
    scan = CheckpointScan(
        scan_id="s-next",
        checkpoint_id=nxt,
        pass_id=new.pass_id,
        plate=new.plate,
        kind="arrival",
        scanned_at=at + timedelta(hours=1),
        token=event["token"],
    )
    _, answer = tracker.scan(new, scan, new.pass_id)
    assert answer["status"] == "at_checkpoint", answer


def test_a_risk_behind_the_vehicle_changes_nothing(tracker):
    at = DEPARTURE + timedelta(hours=5)
    moving = scanned_at_first_checkpoint(tracker, a_pass(tracker))
    risk = raise_risk(tracker, "421200", at)  # Xianning, already crossed
    assert tracker.risk_changed(moving, risk) == (moving, None)
    # The same change before the vehicle reached the checkpoint reroutes it from its origin.
    waiting = a_pass(tracker)
    new, event = tracker.risk_changed(waiting, risk)
    assert event["status"] == "rerouted"
    assert new.route["adcodes"][0] == "420111" and "421200" not in new.route["adcodes"]


def test_rerouting_from_a_checkpoint_is_deterministic(tracker):
    at = DEPARTURE + timedelta(hours=5)
    state = scanned_at_first_checkpoint(tracker, a_pass(tracker))
    risk = raise_risk(tracker, "430000", at)
    first = tracker.risk_changed(state, risk)
    tracker.decider.planner.clear()
    second = tracker.risk_changed(state, risk)
    assert first[0].to_json() == second[0].to_json()
    assert first[1] == second[1]


def test_the_issue_event_of_a_multi_trip_pass_says_trip_1(tracker):
    single, multi = a_pass(tracker), replace(a_pass(tracker), trip="multi")
    assert "trip" not in tracker.issued(single, format_time(DEPARTURE))
    event = tracker.issued(multi, format_time(DEPARTURE))
    assert (event["status"], event["trip"]) == ("issued", 1)


def test_a_multi_trip_pass_is_rerouted_from_its_origin(tracker):
    """It drives the whole route again, both ways: a region behind the vehicle lies ahead too."""
    at = DEPARTURE + timedelta(hours=5)
    multi = scanned_at_first_checkpoint(tracker, replace(a_pass(tracker), trip="multi"))
    risk = raise_risk(tracker, "421200", at)  # Xianning, crossed already on the way out
    new, event = tracker.risk_changed(multi, risk)
    assert (event["status"], event["reason"], event["trip"]) == ("rerouted", "route_crossed_high_risk_region", 1)
    assert new.route["adcodes"][0] == "420111" and "421200" not in new.route["adcodes"]
    assert new.route["checkpoints"][-1]["checkpoint_id"] == "DST-440106"
    assert list(verify_token(event["token"], KEY.public_key()).cp) == new.checkpoint_ids


def test_a_multi_trip_pass_scanned_through_its_route_completes_trips(tracker):
    state = replace(a_pass(tracker), trip="multi")
    ids = state.checkpoint_ids
    out = [(kind, cp) for cp in ids[:-1] for kind in ("arrival", "departure")] + [("arrival", ids[-1])]
    back = [("departure", ids[-1])] + [(kind, cp) for cp in reversed(ids[:-1]) for kind in ("arrival", "departure")]
    when = DEPARTURE
    events = []
    for n, (kind, cp) in enumerate(out + back + out):
        when += timedelta(minutes=30)
        scan = CheckpointScan(
            scan_id=f"m-{n}",
            checkpoint_id=cp,
            pass_id=state.pass_id,
            plate=state.plate,
            kind=kind,
            scanned_at=when,
            token=token_of(state, TEST_SIGNER),
        )
        state, event = tracker.scan(state, scan, state.pass_id)
        events.append(event)
    assert when < parse_time(state.valid_until)
    completed = [i for i, e in enumerate(events) if e["reason"] == "trip_completed"]
    assert completed == [len(out) - 1, 2 * len(out) + len(back) - 1] and state.trips == 2
    assert [e["trip"] for e in events] == [1] * len(out) + [2] * (len(back) + len(out))
    assert {e["status"] for e in events} == {"at_checkpoint", "in_transit"}
    assert state.status == "at_checkpoint" and state.checkpoint_id == ids[-1]


def test_the_pass_index_files_active_passes_by_region_and_firm_and_follows_their_changes():
    from msgspec.structs import replace as _replace

    from models.passes import PassState
    from models.tracking import PassIndex

    def state(pid, adcodes, status="issued", shipper="S1", consignee="C1"):
        return PassState(
            pass_id=pid,
            shipment_id=f"s{pid}",
            plate="鄂A00001",
            priority="P0",
            shipper=shipper,
            consignee=consignee,
            origin=adcodes[0],
            destination=adcodes[-1],
            trip="single",
            valid_from="2020-02-25T00:00:00Z",
            valid_until="2020-02-26T00:00:00Z",
            departure_at="2020-02-25T00:00:00Z",
            route={"adcodes": adcodes, "checkpoints": []},
            status=status,
        )

    index = PassIndex(lambda s: frozenset(a[:4] for a in s.route["adcodes"]))
    a, b = state("a", ["420111", "430102"]), state("b", ["110105", "120101"], shipper="S2")
    index.put(a)
    index.put(b)
    assert index.touched_by_risk({"4301"}) == ["a"] and index.touched_by_risk({"9999"}) == []
    assert index.of_firm("S2") == ["b"] and index.of_firm("C1") == ["a", "b"]
    index.put(_replace(a, route={"adcodes": ["420111", "360102"], "checkpoints": []}))  # rerouted
    assert index.touched_by_risk({"4301"}) == [] and index.touched_by_risk({"3601"}) == ["a"]
    index.put(_replace(b, status="suspended"))  # any change may reinstate it
    assert index.touched_by_risk({"9999"}) == ["b"]
    index.put(_replace(b, status="rerouted"))
    assert index.touched_by_risk({"9999"}) == []
    index.put(_replace(a, status="delivered"))  # nothing can change it any more
    assert index.touched_by_risk({"3601", "4201"}) == [] and index.of_firm("S1") == [] and len(index) == 1
    index.put(_replace(b, status="expired"))  # the last pass of its shape: nothing of it is left behind
    assert len(index) == 0 and not index._shapes and not index._by_region and not index._by_firm


def test_a_token_is_verified_once_and_a_forgery_of_it_never_passes(tracker, monkeypatch):
    import models.tracking as tracking
    from models.passes import InvalidToken

    state = a_pass(tracker)
    token = token_of(state, TEST_SIGNER)
    calls = []
    real = tracking.verify_token
    monkeypatch.setattr(tracking, "verify_token", lambda t, k: (calls.append(t), real(t, k))[1])
    claims = tracker._claims(token)
    assert tracker._claims(token) is claims and (claims.pid, claims.plate, claims.kid) == (
        state.pass_id,
        state.plate,
        "test",
    )
    assert len(calls) == 1
    other = token_of(state, Signer(Ed25519PrivateKey.generate(), "test"), plate="鄂B99999")
    for bad in (other, forged(token), token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), 42, ["test"]):
        with pytest.raises(InvalidToken):
            tracker._claims(bad)


def test_the_pass_index_takes_about_a_third_of_a_kilobyte_per_active_pass(tracker):
    """A busy partition files 100,000s of passes: the index interns what many passes share (region,
    firm and key names) and files passes by their shape, the tuple of their regions, shared."""
    from models.tracking import PassIndex

    raw = a_pass(tracker).to_json()
    # Each pass decoded on its own, as the worker decodes each stored state: strings of its own.
    passes = [replace(PassState.from_json(raw), pass_id=f"{i:012d}") for i in range(2000)]
    index = PassIndex(tracker.regions_of)
    size, _ = allocated(lambda: [index.put(p) for p in passes])
    region = sorted(tracker.regions_of(passes[0]))[1]
    assert len(index) == 2000 and index.touched_by_risk({region}) == [p.pass_id for p in passes]
    # 914 here with a set entry per region of each pass; 1,962 with frozensets
    assert size / 2000 < 500, f"{size / 2000:.0f} bytes per pass"
