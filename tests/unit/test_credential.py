"""The pass's credential (models/credential.py): the GC1: COSE token, its size as a QR code, the old
format until it expires, the driver binding, and what the station and the tracker do with tokens
that are missing, mistyped, forged or not yet verifiable."""

from __future__ import annotations

from datetime import timedelta

import base45
import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec.structs import replace

from models.credential import PREFIX, QR_CHARS, DriverBinding, InvalidToken, read_unverified, verify
from models.passes import PassStatusKind as S
from models.passes import Signer, token_refusal
from models.records import CheckpointScan, Unparseable, format_time, parse_scan
from streams.firms import Submission, bind_drivers
from streams.keys import key_id
from streams.pass_print import pass_qr
from streams.station.checks import check
from streams.station.store import Store
from tests.support.factories import (
    DEPARTURE,
    KEY,
    SIGNER,
    decision_of,
    forged,
    legacy_token_of,
    make_tracker,
    token_of,
    wuhan_to_guangzhou,
)

KEYS = {SIGNER.key_id: KEY.public_key()}
DRIVER = "11010519491231002X"
BOUND = DriverBinding.of(DRIVER, bytes(range(6)))


@pytest.fixture(scope="module")
def tracker():
    return make_tracker(SIGNER, KEYS)


@pytest.fixture(scope="module")
def the_pass(tracker):
    return wuhan_to_guangzhou(tracker, priority="P0", trip="single", driver=BOUND.to_wire())


def _cose(token: str) -> cbor2.CBORTag:
    return cbor2.loads(base45.b45decode(token[len(PREFIX) :]))


def _resigned(payload: dict) -> str:
    """A token of `payload` (raw CBOR claims, any types) with a genuine signature of the test key."""
    protected = cbor2.dumps({1: -8, 4: bytes.fromhex(SIGNER.key_id)}, canonical=True)
    body = cbor2.dumps(payload, canonical=True)
    signature = KEY.sign(cbor2.dumps(["Signature1", protected, b"", body]))
    return PREFIX + base45.b45encode(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, body, signature]))).decode()


# --- the codec --------------------------------------------------------------------------------------


def test_a_token_is_a_cose_sign1_over_its_claims_and_the_same_claims_give_the_same_bytes(the_pass):
    token = token_of(the_pass)
    assert token == token_of(the_pass) and token.startswith(PREFIX)
    message = _cose(token)
    protected, unprotected, payload, signature = message.value
    assert message.tag == 18 and unprotected == {} and len(signature) == 64
    assert dict(cbor2.loads(protected)) == {1: -8, 4: bytes.fromhex(SIGNER.key_id)}
    claims = verify(token, KEYS)
    assert (claims.pid, claims.plate, claims.kid, claims.driver) == (
        the_pass.pass_id,
        the_pass.plate,
        SIGNER.key_id,
        BOUND,
    )
    assert (format_time(claims.nbf), format_time(claims.exp)) == (the_pass.valid_from, the_pass.valid_until)
    assert claims.names_route(the_pass.checkpoint_ids) and not claims.names_route(the_pass.checkpoint_ids[1:])
    assert read_unverified(token) == claims


def test_a_pass_token_is_a_qr_code_of_version_10_at_level_q_on_the_longest_route(tracker):
    """Kunming to Harbin, 14 checkpoints, the most of any pair of provincial capitals (1,190 routes
    measured: every token is 214-216 characters, version 10): too many to list, so their digest."""
    d = tracker.decider
    route = d.planner.plan(d.gazetteer.locate("530102"), d.gazetteer.locate("230102"), departure=DEPARTURE)
    state = wuhan_to_guangzhou(tracker, route=route.to_dict(), plate="云AD12345", driver=BOUND.to_wire())
    assert len(state.checkpoint_ids) == 14
    token = token_of(state)
    qr = pass_qr(token)
    assert len(token) <= QR_CHARS and (qr.version, qr.error, qr.mode) == (10, "Q", "alphanumeric")
    claims = verify(token, KEYS)
    assert claims.cp is None and claims.names_route(state.checkpoint_ids)


def test_a_short_route_lists_its_checkpoints_and_the_old_format_was_twice_as_long(tracker):
    d = tracker.decider
    route = d.planner.plan(d.gazetteer.locate("420111"), d.gazetteer.locate("420102"), departure=DEPARTURE)
    state = wuhan_to_guangzhou(tracker, route=route.to_dict())
    token = token_of(state)
    assert verify(token, KEYS).cp == tuple(state.checkpoint_ids) and pass_qr(token).version <= 10
    assert len(legacy_token_of(state)) > 1.4 * len(token)


def test_a_token_of_the_old_format_verifies_until_it_expires(the_pass):
    old = legacy_token_of(the_pass)
    claims = verify(old, KEYS)
    assert (claims.pid, claims.kid, claims.cp) == (the_pass.pass_id, SIGNER.key_id, tuple(the_pass.checkpoint_ids))
    with pytest.raises(InvalidToken, match="does not verify"):
        verify(forged(old), KEYS)


@pytest.mark.parametrize(
    "payload, why",
    [
        ({1: ["420111000001"], 2: "鄂A12345", 3: 1582624800, 4: 60, 5: []}, "pass number is not text"),
        ({1: 420111000001, 2: 7, 3: 1582624800, 4: 60, 5: []}, "plate is not text"),
        ({1: 420111000001, 2: "鄂A12345", 3: "2020", 4: 60, 5: []}, "validity"),
        ({1: 420111000001, 2: "鄂A12345", 3: 1582624800, 4: 60, 5: "BX-1111-2222"}, "checkpoints"),
        ({1: 420111000001, 2: "鄂A12345", 3: 1582624800, 4: 60, 5: [1.5]}, "checkpoints"),
        ({1: 420111000001, 2: "鄂A12345", 3: 1582624800, 4: 60}, "neither listed nor by digest"),
        ({1: 420111000001, 2: "鄂A12345", 3: 1582624800, 4: 60, 5: [], 6: ["s", "h"]}, "driver binding"),
        ([1, 2, 3], "not a canonical CBOR map"),
    ],
)
def test_genuinely_signed_claims_of_the_wrong_types_are_a_bad_token_not_an_error(payload, why):
    with pytest.raises(InvalidToken, match=why):
        verify(_resigned(payload), KEYS)


@pytest.mark.parametrize(
    "token", [None, 42, ["GC1:"], {"kid": "x"}, b"GC1:", "", "GC1:", "GC1:@@@", "a.b.c", "x" * 5000]
)
def test_anything_that_is_not_a_token_is_invalid_token(token):
    with pytest.raises(InvalidToken):
        verify(token, KEYS)


def test_the_refusals_of_a_shown_token(the_pass):
    def claims(token):
        return verify(token, KEYS)

    pid, plate = the_pass.pass_id, the_pass.plate
    assert token_refusal(token_of(the_pass), pid, plate, claims) is None
    assert token_refusal(None, pid, plate, claims) == "no_token"
    assert token_refusal(42, pid, plate, claims) == "bad_token: token is not text but int"
    assert token_refusal(forged(token_of(the_pass)), pid, plate, claims) == "bad_token: token signature does not verify"
    assert token_refusal(token_of(the_pass), "420111000009", plate, claims) == "token_for_another_pass"
    assert token_refusal(token_of(the_pass), pid, "鄂B99999", claims) == "plate_mismatch"
    withdrawn = token_refusal(
        token_of(the_pass), pid, plate, claims, at=DEPARTURE, key_refusal=lambda kid, pid, at: "key_withdrawn"
    )
    assert withdrawn == "key_withdrawn"


def test_a_scan_whose_token_is_not_text_is_unparseable_with_its_reason():
    scan = {"scan_id": "s", "checkpoint_id": "c", "plate": "鄂A12345", "kind": "arrival", "pass_id": "420111000001"}
    with pytest.raises(Unparseable, match="bad_token: token must be a string, not list"):
        parse_scan({**scan, "scanned_at": format_time(DEPARTURE), "token": ["kid"]})


# --- the worker: no token releases nothing ------------------------------------------------------------


def _scan(state, kind: str, token, minutes: int, n: int = 0) -> CheckpointScan:
    at = DEPARTURE + timedelta(minutes=minutes)
    return CheckpointScan(f"s{n}", state.checkpoint_ids[0], state.pass_id, token, state.plate, kind, at)


def test_a_tokenless_scan_never_releases_a_hold_and_changes_nothing(tracker, the_pass):
    held, event = tracker.scan(the_pass, _scan(the_pass, "arrival", forged(token_of(the_pass)), 240), the_pass.pass_id)
    assert (held.status, event["reason"]) == (S.HELD, "bad_token: token signature does not verify")
    for n, kind in enumerate(("arrival", "departure", "arrival")):
        after, event = tracker.scan(held, _scan(the_pass, kind, None, 250 + n, n), the_pass.pass_id)
        assert after == held and (event["status"], event["reason"]) == ("held", "no_token")
    released, event = tracker.scan(held, _scan(the_pass, "arrival", token_of(the_pass), 260), the_pass.pass_id)
    assert (released.status, event["reason"]) == (S.AT_CHECKPOINT, None)
    issued, event = tracker.scan(the_pass, _scan(the_pass, "arrival", None, 240), the_pass.pass_id)
    assert issued == the_pass and (event["status"], event["reason"]) == ("issued", "no_token")


def test_a_departure_after_a_verified_arrival_needs_no_token_again(tracker, the_pass):
    arrived, _ = tracker.scan(the_pass, _scan(the_pass, "arrival", token_of(the_pass), 240), the_pass.pass_id)
    left, event = tracker.scan(arrived, _scan(the_pass, "departure", None, 250, 1), the_pass.pass_id)
    assert (left.status, event["reason"], event["dwell_seconds"]) == (S.IN_TRANSIT, None, 600.0)


def test_a_token_that_is_not_text_is_held_as_bad_token_by_the_tracker(tracker, the_pass):
    for bad in (42, ["kid"], {"pid": the_pass.pass_id}):
        state, event = tracker.scan(the_pass, _scan(the_pass, "arrival", bad, 240), the_pass.pass_id)
        assert event["reason"].startswith("bad_token: token is not text")


# --- the driver ----------------------------------------------------------------------------------------


def test_a_driver_binding_matches_the_id_number_only():
    assert BOUND.matches(DRIVER) and BOUND.matches(" 11010519491231002x ")
    assert not BOUND.matches("110105194912310029") and not BOUND.matches("") and not BOUND.matches("not an id")
    assert DriverBinding.from_wire(BOUND.to_wire()) == BOUND
    for bad in (None, {}, {"salt": "!!", "id_hash": "AAAAAAAA"}, {"salt": "AAAA", "id_hash": "AAAAAAAA"}):
        with pytest.raises(ValueError):
            DriverBinding.from_wire(bad)


def test_the_firms_tool_sends_the_binding_never_the_id_number():
    sub = Submission(
        requests={"a": {"shipment_id": "a", "driver": {"name": "张伟", "id_number": DRIVER, "phone": "1"}}}
    )
    bind_drivers(sub, None)
    driver = sub.requests["a"]["driver"]
    assert "id_number" not in driver and DriverBinding.from_wire(driver["binding"]).matches(DRIVER)
    assert DRIVER not in str(sub.requests)
    wrong = Submission(requests={"b": {"shipment_id": "b", "driver": {"name": "x", "id_number": "110105194912310029"}}})
    bind_drivers(wrong, None)
    assert not wrong.requests and wrong.invalid[0][0] == "b" and "ID number" in wrong.invalid[0][1][0]


def _station(tmp_path, the_pass, decision=None, keys=KEYS):
    here = the_pass.checkpoint_ids[0]
    store = Store(tmp_path / "station.db", [here])
    store.take_decision(decision or decision_of(the_pass), keys)
    return store, here


def test_the_station_says_who_matched(the_pass, tmp_path):
    store, here = _station(tmp_path, the_pass)
    at = DEPARTURE + timedelta(hours=4)
    token = token_of(the_pass)
    seen = check(store, KEYS, checkpoint_id=here, at=at, token=token, driver_id=DRIVER)
    assert (seen["verdict"], seen["driver"]) == ("green", "matched") and "matches" in seen["driver_en"]
    other = check(store, KEYS, checkpoint_id=here, at=at, token=token, driver_id="110105194912310029")
    assert (other["verdict"], other["reason"], other["driver"]) == ("grey", "driver_mismatch", "not_matched")
    assert check(store, KEYS, checkpoint_id=here, at=at, token=token)["driver"] == "not_checked"
    plate_only = check(store, KEYS, checkpoint_id=here, at=at, plate=the_pass.plate, driver_id=DRIVER)
    assert (plate_only["verdict"], plate_only["driver"]) == ("check", "matched")  # still never GREEN
    unbound = replace(the_pass, driver=None)
    store, here = _station(tmp_path / "b", unbound)
    answer = check(store, KEYS, checkpoint_id=here, at=at, token=token_of(unbound), driver_id=DRIVER)
    assert (answer["verdict"], answer["driver"]) == ("green", "not_bound")
    assert answer["driver_en"] == "driver not bound: check the ID against the paper"


def test_the_station_stores_no_decision_whose_token_is_not_the_pass(the_pass, tmp_path):
    at = DEPARTURE + timedelta(hours=4)
    for n, token in enumerate((forged(token_of(the_pass)), token_of(replace(the_pass, plate="鄂B99999")), "garbage")):
        decision = decision_of(the_pass)
        decision["pass"]["token"] = token
        store, here = _station(tmp_path / str(n), the_pass, decision)
        assert store.row(the_pass.pass_id) is None and store.refused == 1
        assert check(store, KEYS, checkpoint_id=here, at=at, plate=the_pass.plate)["reason"] == "unknown_pass"
    store, here = _station(tmp_path / "ok", the_pass)
    rerouted = {"pass_id": the_pass.pass_id, "status": "rerouted", "cause": "risk:x", "route": the_pass.route}
    store.take_status({**rerouted, "token": forged(token_of(the_pass))}, KEYS)
    assert store.refused == 1 and store.row(the_pass.pass_id)["token"] == token_of(the_pass)


def test_a_decision_before_its_key_is_kept_pending_and_never_green_until_verified(the_pass, tmp_path):
    store, here = _station(tmp_path, the_pass, keys={})
    at = DEPARTURE + timedelta(hours=4)
    assert store.row(the_pass.pass_id)["verified"] == 0
    # No key here yet: the shown token cannot verify either, so nothing is GREEN.
    assert check(store, {}, checkpoint_id=here, at=at, token=token_of(the_pass))["verdict"] == "grey"
    assert check(store, {}, checkpoint_id=here, at=at, plate=the_pass.plate)["reason"] == "unknown_pass"
    answer = check(store, KEYS, checkpoint_id=here, at=at, token=token_of(the_pass))  # the key arrived
    assert answer["verdict"] == "green" and store.row(the_pass.pass_id)["verified"] == 1
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
    stranger = {key_id(other.public_key()): other.public_key()}
    lying = decision_of(the_pass)
    lying["pass"]["token"] = token_of(the_pass, Signer(other, key_id(other.public_key())))
    store, here = _station(tmp_path / "b", the_pass, lying, keys={})
    assert store.row(the_pass.pass_id)["verified"] == 0  # pending: its key may yet come
    assert check(store, KEYS, checkpoint_id=here, at=at, plate=the_pass.plate)["reason"] == "unknown_pass"
    assert check(store, stranger | KEYS, checkpoint_id=here, at=at, token=token_of(the_pass))["verdict"] == "green"


def test_a_genuine_token_of_a_long_route_the_station_never_stored_is_called_in(tracker, tmp_path):
    d = tracker.decider
    route = d.planner.plan(d.gazetteer.locate("530102"), d.gazetteer.locate("230102"), departure=DEPARTURE)
    state = wuhan_to_guangzhou(tracker, route=route.to_dict())
    here = state.checkpoint_ids[3]
    store = Store(tmp_path / "station.db", [here])
    answer = check(store, KEYS, checkpoint_id=here, at=DEPARTURE + timedelta(hours=4), token=token_of(state))
    assert (answer["verdict"], answer["reason"]) == ("check", "route_not_known_here")
    store.take_decision(decision_of(state), KEYS)
    answer = check(store, KEYS, checkpoint_id=here, at=DEPARTURE + timedelta(hours=4), token=token_of(state))
    assert answer["verdict"] == "green"


def test_a_decision_pending_its_key_does_not_hide_the_plate_s_genuine_pass(the_pass, tmp_path):
    store, here = _station(tmp_path, the_pass)
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(3, 35)))
    shadow = replace(the_pass, pass_id="420111000777", valid_until=format_time(DEPARTURE + timedelta(days=30)))
    lying = decision_of(shadow)
    lying["pass"]["token"] = token_of(shadow, Signer(other, key_id(other.public_key())))
    store.take_decision(lying, KEYS)
    assert store.row(shadow.pass_id)["verified"] == 0
    at = DEPARTURE + timedelta(hours=4)
    answer = check(store, KEYS, checkpoint_id=here, at=at, token=token_of(the_pass), plate=the_pass.plate)
    assert (answer["verdict"], answer["pass_id"]) == ("green", the_pass.pass_id)
