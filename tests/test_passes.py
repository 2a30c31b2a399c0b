"""Tokens and the status state machine (pass numbers: tests/test_pass_numbers.py)."""

from dataclasses import replace
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.passes import (TRANSITIONS, IllegalTransition, InvalidToken, PassState, PassStatusKind as S, Signer,
                           on_scan, transition, verify_token)
from models.records import CheckpointScan


def test_token_verifies_offline_and_rejects_tampering():
    signer = Signer(Ed25519PrivateKey.generate(), "k1")
    token = signer.token({"pid": "420111000001", "plate": "鄂A12345"})
    assert verify_token(token, signer.public_key)["plate"] == "鄂A12345"
    assert signer.token({"pid": "420111000001", "plate": "鄂A12345"}) == token  # deterministic
    body, sig = token.split(".")
    forged = Signer(Ed25519PrivateKey.generate(), "k1").token({"pid": "420111000001", "plate": "鄂B99999"})
    with pytest.raises(InvalidToken):
        verify_token(forged.split(".")[0] + "." + sig, signer.public_key)
    with pytest.raises(InvalidToken):
        verify_token(token, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(InvalidToken):
        verify_token("garbage", signer.public_key)


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
        pass_id="420111000001", shipment_id="S1", plate="鄂A12345", priority="P0", shipper="a", consignee="b",
        origin="420111", destination="440106", trip="single", valid_from="2020-02-25T00:00:00Z",
        valid_until="2020-02-28T00:00:00Z", departure_at="2020-02-25T00:00:00Z",
        route={"adcodes": ["420111", "430600", "440106"],
               "checkpoints": [{"checkpoint_id": "BX-4212-4306"}, {"checkpoint_id": "DST-440106"}]})


def scan(kind, cp="BX-4212-4306", hour=5, plate="鄂A12345", sid=None):
    return CheckpointScan(sid or f"{kind}{hour}", cp, "420111000001", None, plate, kind,
                          datetime(2020, 2, 25, hour, tzinfo=timezone.utc))


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


@pytest.mark.parametrize("kw,reason", [
    ({"plate": "鄂B00000"}, "plate_mismatch"),
    ({"cp": "BX-1101-1301"}, "checkpoint_not_on_route"),
])
def test_mismatch_holds(kw, reason):
    s, e = on_scan(state(), scan("arrival", **kw), token_error=None)
    assert s.status == S.HELD and e["reason"] == reason


def test_bad_token_holds_and_late_scan_expires():
    s, e = on_scan(state(), scan("arrival"), token_error="bad_token: forged")
    assert s.status == S.HELD
    s, e = on_scan(state(), CheckpointScan("late", "BX-4212-4306", None, None, "鄂A12345", "arrival",
                                           datetime(2020, 3, 1, tzinfo=timezone.utc)), token_error=None)
    assert s.status == S.EXPIRED


def test_state_round_trips_through_json():
    s = replace(state(), scans={"x": b'{"a":1}'})
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
