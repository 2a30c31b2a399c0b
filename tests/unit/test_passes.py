"""Tokens and the status state machine (pass numbers: tests/unit/test_pass_numbers.py)."""

from datetime import UTC, datetime

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec.structs import replace

from models.passes import (
    TRANSITIONS,
    IllegalTransition,
    InvalidToken,
    PassState,
    Signer,
    on_scan,
    transition,
    verify_token,
)
from models.passes import PassStatusKind as S
from models.records import CheckpointScan


def test_token_verifies_offline_and_rejects_tampering():
    signer = Signer(Ed25519PrivateKey.generate(), "k1")
    claims = {"pid": "420111000001", "plate": "鄂A12345", "nbf": "2020-02-25T10:00:00Z", "exp": "2020-02-26T10:00:00Z"}
    token = signer.token({**claims, "cp": ["DST-440106"]})
    assert verify_token(token, signer.public_key).plate == "鄂A12345"
    assert signer.token({**claims, "cp": ["DST-440106"]}) == token  # deterministic
    other = Signer(Ed25519PrivateKey.generate(), "k1").token({**claims, "plate": "鄂B99999", "cp": ["DST-440106"]})
    with pytest.raises(InvalidToken):
        verify_token(other, signer.public_key)
    with pytest.raises(InvalidToken):
        verify_token(token, Ed25519PrivateKey.generate().public_key())
    for garbage in ("garbage", "GC1:garbage", "", 42, None, ["k1"], {"kid": "k1"}):
        with pytest.raises(InvalidToken):
            verify_token(garbage, signer.public_key)


def test_terminal_states_have_no_way_out():
    for terminal in (S.DELIVERED, S.REVOKED, S.EXPIRED):
        for target in S:
            with pytest.raises(IllegalTransition):
                transition(terminal, target)


def test_suspended_only_returns_through_reroute():
    assert transition(S.SUSPENDED, S.REROUTED) is S.REROUTED
    with pytest.raises(IllegalTransition):
        transition(S.SUSPENDED, S.IN_TRANSIT)


def test_every_state_is_in_the_table():
    assert set(TRANSITIONS) == set(S)


def state():
    return PassState(
        pass_id="420111000001",
        shipment_id="S1",
        plate="鄂A12345",
        priority="P0",
        shipper="a",
        consignee="b",
        origin="420111",
        destination="440106",
        trip="single",
        valid_from="2020-02-25T00:00:00Z",
        valid_until="2020-02-28T00:00:00Z",
        departure_at="2020-02-25T00:00:00Z",
        route={
            "adcodes": ["420111", "430600", "440106"],
            "checkpoints": [{"checkpoint_id": "BX-4212-4306"}, {"checkpoint_id": "DST-440106"}],
        },
    )


def scan(kind, cp="BX-4212-4306", hour=5, plate="鄂A12345", sid=None):
    return CheckpointScan(
        sid or f"{kind}{hour}", cp, "420111000001", None, plate, kind, datetime(2020, 2, 25, hour, tzinfo=UTC)
    )


def test_journey_arrival_departure_with_dwell_then_delivery():
    s, e = on_scan(state(), scan("arrival", hour=5), token_error=None)
    assert (s.status, e["status"]) == (S.AT_CHECKPOINT, "at_checkpoint")
    s2 = replace(s, arrived_at="2020-02-25T04:40:00Z")
    s3, e = on_scan(s2, scan("departure", hour=5), token_error=None)
    assert s3.status == S.IN_TRANSIT and e["dwell_seconds"] == 1200 and e["dwell_exceeded"]
    s4, e = on_scan(s3, scan("arrival", cp="DST-440106", hour=9), token_error=None)
    assert s4.status == S.DELIVERED and e["reason"] == "arrived_at_destination"
    s5, e = on_scan(s4, scan("arrival", cp="DST-440106", hour=10, sid="again"), token_error=None)
    assert s5 is s4 and e["status"] == "delivered"


@pytest.mark.parametrize(
    "kw,reason", [({"plate": "鄂B00000"}, "plate_mismatch"), ({"cp": "BX-1101-1301"}, "checkpoint_not_on_route")]
)
def test_mismatch_holds(kw, reason):
    s, e = on_scan(state(), scan("arrival", **kw), token_error=None)
    assert s.status == S.HELD and e["reason"] == reason


def test_bad_token_holds_and_late_scan_expires():
    s, e = on_scan(state(), scan("arrival"), token_error="bad_token: forged")
    assert s.status == S.HELD
    s, e = on_scan(
        state(),
        CheckpointScan("late", "BX-4212-4306", None, None, "鄂A12345", "arrival", datetime(2020, 3, 1, tzinfo=UTC)),
        token_error=None,
    )
    assert s.status == S.EXPIRED


def test_state_round_trips_through_json():
    s = replace(state(), status=S.AT_CHECKPOINT, checkpoint_id="BX-4212-4306", arrived_at="2020-02-25T02:00:00Z")
    assert PassState.from_json(s.to_json()) == s


def test_checkpoint_board_tracks_queue_and_median_dwell():
    from models.tracking import CheckpointBoard

    board = CheckpointBoard(window=3, target_seconds=900)
    for pid in ("a", "b", "c"):
        board.observe({"pass_id": pid, "status": "at_checkpoint", "checkpoint_id": "X"})
    for pid, dwell in (("a", 100.0), ("b", 1000.0)):
        board.observe({"pass_id": pid, "status": "in_transit", "checkpoint_id": "X", "dwell_seconds": dwell})
    board.observe({"pass_id": "d", "status": "in_transit", "checkpoint_id": "X", "dwell_seconds": 1200.0})
    [row] = board.snapshot()
    assert row["vehicles_present"] == 1 and row["recent_departures"] == 3
    assert row["median_dwell_seconds"] == 1000.0 and row["over_target"]


# --- multi-trip passes (多次有效): the route again and again, both ways, until valid_until ---------

CP_A, CP_B, DST = "BX-4212-4306", "BX-4306-4401", "DST-440106"


def multi_state():
    return replace(
        state(),
        trip="multi",
        route={
            "adcodes": ["420111", "421200", "430600", "440106"],
            "checkpoints": [{"checkpoint_id": CP_A}, {"checkpoint_id": CP_B}, {"checkpoint_id": DST}],
        },
    )


def at(day, hour, minute=0):
    return datetime(2020, 2, day, hour, minute, tzinfo=UTC)


def scan_at(kind, cp, when, sid, plate="鄂A12345"):
    return CheckpointScan(sid, cp, "420111000001", None, plate, kind, when)


def drive(s, scans):
    """Apply (kind, checkpoint, time) scans in order; the states and events they produce."""
    states, events = [], []
    for i, (kind, cp, when) in enumerate(scans):
        s, e = on_scan(s, scan_at(kind, cp, when, f"{i}-{kind}-{cp}-{when:%d%H%M}"), token_error=None)
        states.append(s)
        events.append(e)
    return states, events


def test_multi_trip_pass_runs_out_back_and_out_again_until_it_expires():
    out1 = [
        ("arrival", CP_A, at(25, 2)),
        ("departure", CP_A, at(25, 2, 10)),
        ("arrival", CP_B, at(25, 4)),
        ("departure", CP_B, at(25, 4, 5)),
        ("arrival", DST, at(25, 6)),
    ]
    states, events = drive(multi_state(), out1)
    assert [e["status"] for e in events] == ["at_checkpoint", "in_transit"] * 2 + ["at_checkpoint"]
    assert [e["trip"] for e in events] == [1] * 5
    assert [s.trips for s in states] == [0, 0, 0, 0, 1]
    assert events[1]["dwell_seconds"] == 600 and not events[1]["dwell_exceeded"]
    arrived = events[-1]
    assert (arrived["reason"], arrived["checkpoint_id"], arrived["trip"]) == ("trip_completed", DST, 1)
    s = states[-1]
    assert (s.status, s.checkpoint_id, s.arrived_at) == (S.AT_CHECKPOINT, DST, "2020-02-25T06:00:00Z")

    # Scanned again before leaving: no second trip, and the arrival time stays the first one.
    s, e = on_scan(s, scan_at("arrival", DST, at(25, 6, 30), "again"), token_error=None)
    assert (s.status, s.trips, s.arrived_at, e["reason"]) == (
        S.AT_CHECKPOINT,
        1,
        "2020-02-25T06:00:00Z",
        "already_at_destination",
    )

    # The way back: the departure from the destination and the border checkpoints in reverse
    # order belong to trip 2, verified like the way out (a wrong plate holds the vehicle).
    back = [("departure", DST, at(25, 8)), ("arrival", CP_B, at(25, 10))]
    states, events = drive(s, back)
    assert [(e["status"], e["trip"]) for e in events] == [("in_transit", 2), ("at_checkpoint", 2)]
    assert events[0]["dwell_seconds"] is None and events[0]["checkpoint_id"] == DST  # unloading, not a queue
    s, held = on_scan(
        states[-1], scan_at("departure", CP_B, at(25, 10, 5), "wrong-plate", plate="鄂B00000"), token_error=None
    )
    assert (s.status, held["status"], held["reason"], held["trip"]) == (S.HELD, "held", "plate_mismatch", 2)
    rest = [
        ("arrival", CP_B, at(25, 10, 20)),
        ("departure", CP_B, at(25, 10, 30)),
        ("arrival", CP_A, at(25, 12)),
        ("departure", CP_A, at(25, 12, 20)),
        # at the origin (no checkpoint), then out again
        ("arrival", CP_A, at(25, 20)),
        ("departure", CP_A, at(25, 20, 15)),
        ("arrival", CP_B, at(25, 22)),
        ("departure", CP_B, at(25, 22, 15)),
        ("arrival", DST, at(26, 0)),
    ]
    states, events = drive(s, rest)
    assert [e["status"] for e in events] == ["at_checkpoint", "in_transit"] * 4 + ["at_checkpoint"]
    assert all(e["reason"] is None for e in events[:-1]) and [e["trip"] for e in events] == [2] * 9
    assert events[1]["dwell_seconds"] == 600 and events[3]["dwell_seconds"] == 1200 and events[3]["dwell_exceeded"]
    assert (events[-1]["reason"], events[-1]["trip"], states[-1].trips) == ("trip_completed", 2, 2)

    # Trip 3 begins; the pass ends at valid_until (2020-02-28T00:00Z), and stays ended.
    s, e = on_scan(states[-1], scan_at("departure", DST, at(26, 1), "d3"), token_error=None)
    assert (s.status, e["trip"]) == (S.IN_TRANSIT, 3)
    s, e = on_scan(s, scan_at("arrival", CP_B, at(28, 0, 1), "late"), token_error=None)
    assert (s.status, e["status"], e["reason"], e["trip"], s.trips) == (S.EXPIRED, "expired", "validity_ended", 3, 2)
    s2, e = on_scan(s, scan_at("arrival", DST, at(28, 1), "later"), token_error=None)
    assert s2 is s and (e["status"], e["reason"]) == ("expired", "pass_expired")
    for target in S:
        with pytest.raises(IllegalTransition):
            transition(S(s.status), target)


def test_multi_trip_scans_are_checked_as_on_the_first_trip():
    s, _ = drive(multi_state(), [("arrival", DST, at(25, 6)), ("departure", DST, at(25, 7))])
    s = s[-1]
    for scan, token_error, reason in (
        (scan_at("arrival", "BX-1101-1301", at(25, 9), "off"), None, "checkpoint_not_on_route"),
        (scan_at("arrival", CP_B, at(25, 9), "forged"), "bad_token: forged", "bad_token: forged"),
        (scan_at("arrival", CP_B, at(24, 9), "early"), None, "not_yet_valid"),
    ):
        held, e = on_scan(s, scan, token_error=token_error)
        assert (held.status, e["reason"], e["trip"], held.trips) == (S.HELD, reason, 2, 1)


def test_single_trip_arrival_delivers_and_its_events_carry_no_trip():
    keys = {
        "pass_id",
        "shipment_id",
        "status",
        "at",
        "checkpoint_id",
        "reason",
        "dwell_seconds",
        "dwell_exceeded",
        "cause",
    }
    states, events = drive(
        state(),
        [
            ("arrival", "BX-4212-4306", at(25, 2)),
            ("departure", "BX-4212-4306", at(25, 3)),
            ("arrival", "DST-440106", at(25, 6)),
        ],
    )
    assert [set(e) for e in events] == [keys] * 3
    assert (states[-1].status, states[-1].trips, events[-1]["reason"]) == (S.DELIVERED, 0, "arrived_at_destination")


def test_state_json_of_an_older_version_loads_and_trips_round_trip():
    old = replace(state())
    stored = old.to_json()
    assert b"trips" not in stored and b"scans" not in stored
    assert PassState.from_json(stored) == old and PassState.from_json(stored).trips == 0
    raw = orjson.loads(stored)
    assert set(raw) == set(PassState.__struct_fields__) - {"trips", "kid", "driver"}  # before the keyring
    done = replace(multi_state(), trips=2, status=S.AT_CHECKPOINT, checkpoint_id=DST, kid="k1")
    assert orjson.loads(done.to_json())["trips"] == 2 and orjson.loads(done.to_json())["kid"] == "k1"
    assert PassState.from_json(done.to_json()) == done


def test_state_of_a_worker_that_kept_scan_answers_in_it_loads_and_gives_them_up():
    from models.passes import legacy_answers

    stored = orjson.dumps({**orjson.loads(state().to_json()), "scans": {"s1": '{"status":"at_checkpoint"}'}})
    assert PassState.from_json(stored) == state()
    assert legacy_answers(stored) == {"s1": b'{"status":"at_checkpoint"}'}
    assert legacy_answers(orjson.dumps({**orjson.loads(state().to_json()), "scans": {}})) == {}
    assert legacy_answers(state().to_json()) == {}


def test_a_multi_trip_vehicle_held_at_its_destination_completes_no_second_trip_there():
    out = [
        ("arrival", CP_A, at(25, 2)),
        ("departure", CP_A, at(25, 2, 10)),
        ("arrival", CP_B, at(25, 4)),
        ("departure", CP_B, at(25, 4, 10)),
        ("arrival", DST, at(25, 6)),
    ]
    states, _ = drive(multi_state(), out)
    s = states[-1]
    assert (s.status, s.trips) == (S.AT_CHECKPOINT, 1)
    # A wrong plate at the destination holds it there; the right one releases it, and it is the
    # same visit: no second trip.
    s, e = on_scan(s, scan_at("arrival", DST, at(25, 6, 20), "bad", plate="鄂B99999"), token_error=None)
    assert (s.status, e["reason"], s.arrived_at) == (S.HELD, "plate_mismatch", "2020-02-25T06:00:00Z")
    s, e = on_scan(s, scan_at("arrival", DST, at(25, 6, 40), "good"), token_error=None)
    assert (s.status, s.trips, e["reason"], e["trip"]) == (S.AT_CHECKPOINT, 1, "already_at_destination", 2)
    s, e = on_scan(s, scan_at("departure", DST, at(25, 7), "leave"), token_error=None)
    assert (s.status, e["dwell_seconds"], e["trip"]) == (S.IN_TRANSIT, None, 2)
    # Held at the destination before the trip was completed: the release completes it.
    states, _ = drive(multi_state(), out[:4])
    s, e = on_scan(states[-1], scan_at("arrival", DST, at(25, 6), "bad2", plate="鄂B99999"), token_error=None)
    assert (s.status, s.trips) == (S.HELD, 0)
    s, e = on_scan(s, scan_at("arrival", DST, at(25, 6, 30), "good2"), token_error=None)
    assert (s.status, s.trips, e["reason"], e["trip"]) == (S.AT_CHECKPOINT, 1, "trip_completed", 1)
