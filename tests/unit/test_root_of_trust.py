"""The root of trust for the pass-signing keys (issue 24, item 3): a key record counts only when the
pinned root signed it; each key signs and verifies only within its validity and its jurisdiction
(the adcode prefixes of the pass numbers it may issue); a worker without the private key of the key
in force rejects what it cannot sign, with the reason, and the replay decides it alike."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.keyring import ACTIVE, WITHDRAWN, Keyring, key_entry, key_id, parse_key_entry, root_sign
from models.passes import REFUSALS, Signer, kafka_partition, unverified_claims
from models.records import Unparseable, format_time
from streams.audit import Record, Replayer, compare
from streams.keys import key_record
from streams.station.checks import check
from streams.station.store import Store
from tests.support.factories import ROOT_KEY, T, make_pipeline
from tests.unit.test_keyring import (
    KID1,
    KID2,
    ROTATED,
    SIGNERS,
    START,
    TS,
    WITHDRAWN_AT,
    World,
    first_checkpoint,
    keyring_log,
    record,
    request,
    ring_of,
)

ROOT_PUB = ROOT_KEY.public_key()
OTHER_ROOT = Ed25519PrivateKey.from_private_bytes(bytes(range(60, 92)))
FORGED = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))  # a key no operator made
FORGED_SIGNER = Signer(FORGED, key_id(FORGED.public_key()))


def dead_letter_of(world: World, value: bytes) -> str:
    """The error the worker dead-letters a keys-topic record with (and nothing else comes out)."""
    [out] = world.send(T.keys, b"k", value)
    assert out.topic == T.deadletter
    return orjson.loads(out.value)["error"]


# --- records the root did not sign ---------------------------------------------------------------


def test_a_record_not_signed_by_the_pinned_root_is_dead_lettered_with_the_reason():
    world = World()
    unsigned = {k: v for k, v in orjson.loads(record(KID1)).items() if k not in ("root_kid", "root_signature")}
    assert "not signed by a root key" in dead_letter_of(world, orjson.dumps(unsigned))
    other = key_entry(FORGED.public_key(), ACTIVE, at=None, root=OTHER_ROOT)  # a root of someone's own
    assert "not by the pinned root" in dead_letter_of(world, key_record(other))
    posing = {**other, "root_kid": orjson.loads(record(KID1))["root_kid"]}  # naming the pinned root's id
    assert "does not verify" in dead_letter_of(world, orjson.dumps(posing))
    assert FORGED_SIGNER.key_id not in world.ring and len(world.ring) == 0


@pytest.mark.parametrize(
    "field, value",
    [
        ("prefixes", ["11"]),  # widened or moved: another province
        ("not_after", "2099-01-01T00:00:00Z"),
        ("effective_at", "2020-01-01T00:00:00Z"),
        ("status", WITHDRAWN),
    ],
)
def test_a_record_with_a_field_changed_after_the_root_signed_it_is_refused(field, value):
    signed = key_entry(
        SIGNERS[KID2].public_key,
        ACTIVE,
        at=ROTATED,
        root=ROOT_KEY,
        prefixes=["42"],
        not_after=ROTATED + timedelta(days=9),
    )
    assert parse_key_entry(signed, ROOT_PUB).grant.prefixes == ("42",)
    with pytest.raises(Unparseable, match="does not verify"):
        parse_key_entry({**signed, field: value}, ROOT_PUB)
    with pytest.raises(Unparseable, match="no root public key is pinned"):
        parse_key_entry(signed, None)


def test_an_active_record_must_say_what_its_key_may_issue():
    for prefixes in ([], ["4"], ["420"], ["42a1"], [42], None):
        body = {k: v for k, v in orjson.loads(record(KID1)).items() if k != "prefixes"}
        if prefixes is not None:
            body["prefixes"] = prefixes
        with pytest.raises(Unparseable, match="prefix"):
            parse_key_entry(root_sign(body, ROOT_KEY), ROOT_PUB)


# --- validity and jurisdiction -------------------------------------------------------------------


def test_a_key_is_refused_outside_its_validity_and_its_jurisdiction():
    end = ROTATED + timedelta(days=2)
    ring = ring_of(record(KID1, ACTIVE, START, prefixes=["42"], not_after=end))
    pid = "420111000001"
    assert ring.key_refusal(KID1, pid, START + timedelta(hours=1)) is None
    assert ring.key_refusal(KID1, pid, START - timedelta(minutes=1)) == "key_not_valid"  # not active yet
    assert ring.key_refusal(KID1, pid, end + timedelta(seconds=1)) == "key_not_valid"  # past its end
    assert ring.key_refusal(KID1, "440106000001", START + timedelta(hours=1)) == "key_outside_jurisdiction"
    assert ring.key_refusal(KID1, None, START + timedelta(hours=1)) == "key_outside_jurisdiction"
    never = ring_of(record(KID2, WITHDRAWN, WITHDRAWN_AT))  # known from a withdrawal only: never active
    assert never.key_refusal(KID2, pid, START) == "key_not_valid"
    assert Keyring.single(SIGNERS[KID1]).key_refusal(KID1, "440106000001", START) is None  # a key given directly
    for reason in ("key_not_valid", "key_outside_jurisdiction"):
        zh, en = REFUSALS[reason]
        assert zh and en


def test_signing_chooses_the_newest_key_whose_prefixes_cover_the_issuer():
    ring = ring_of(record(KID1), record(KID2, ACTIVE, ROTATED, prefixes=["4201"]))
    later = ROTATED + timedelta(hours=1)
    assert ring.signing_kid(later, "420111") == KID2  # Wuhan: the newer, city key
    assert ring.signing_kid(later, "440106") == KID1  # Guangzhou: only the national key covers it
    assert ring.signing_kid(START, "420111") == KID1  # before the city key's time
    assert ring.signing_kids(later) == {KID1, KID2}
    ended = ring_of(record(KID1, ACTIVE, START, prefixes=["44"], not_after=ROTATED))
    assert ended.signing_kid(START + timedelta(hours=1), "420111") is None  # not its province
    assert ended.signing_kid(ROTATED + timedelta(hours=1), "440106") is None  # past its end


def test_a_decision_is_signed_by_the_key_of_its_issuer_and_refused_where_none_covers_it():
    world = World()
    world.key(record(KID1, ACTIVE, START, prefixes=["44"]))  # Guangdong only
    world.key(record(KID2, ACTIVE, ROTATED, prefixes=["42"]))  # Hubei, later
    early = world.decide(request(1, START + timedelta(hours=1)))  # from Wuhan (420111), before K2
    assert early["decision"] == "rejected" and early["reasons"][0]["code"] == "no_signing_key"
    assert "420111" in early["reasons"][0]["text"] and "missing_keys" not in early["known"]
    late = world.decide(request(2, ROTATED + timedelta(hours=1)))
    assert late["decision"] == "approved" and unverified_claims(late["pass"]["token"]).kid == KID2


def test_a_token_outside_its_keys_jurisdiction_is_refused_by_the_worker_and_the_station(tmp_path):
    # K2 is Guangdong's (44); whoever holds it signs a pass numbered in Hubei (42): genuine bytes, no right.
    world = World()
    world.key(record(KID1))
    world.key(record(KID2, ACTIVE, START, prefixes=["44"]))
    decision = world.decide(request(1, START + timedelta(hours=1)))
    the_pass = decision["pass"]
    claims = unverified_claims(the_pass["token"])
    assert claims.kid == KID1 and the_pass["pass_id"].startswith("42")
    forged = SIGNERS[KID2].token(claims.signable())
    at = START + timedelta(hours=4)
    held = world.scan(decision, at, token=forged)
    assert (held["status"], held["reason"]) == ("held", "key_outside_jurisdiction")
    assert world.scan(decision, at, token=the_pass["token"], n=1)["status"] == "at_checkpoint"
    store = Store(tmp_path / "station.db", [first_checkpoint(decision)])
    store.take_decision(decision)
    for r in (record(KID1), record(KID2, ACTIVE, START, prefixes=["44"])):
        store.take_key(orjson.loads(r), ROOT_PUB, timestamp_ms=TS)
    grey = check(store, store.keyring(ROOT_PUB), checkpoint_id=first_checkpoint(decision), at=at, token=forged)
    assert not grey["green"] and grey["reason"] == "key_outside_jurisdiction"


def test_a_station_ignores_a_record_its_root_did_not_sign_and_refuses_that_keys_tokens(tmp_path, caplog):
    world = World()
    world.key(record(KID1))
    decision = world.decide(request(1, START + timedelta(hours=1)))
    claims = unverified_claims(decision["pass"]["token"])
    forged = FORGED_SIGNER.token(claims.signable())
    store = Store(tmp_path / "station.db", [first_checkpoint(decision)])
    store.take_decision(decision)
    store.take_key(orjson.loads(record(KID1)), ROOT_PUB)
    with pytest.raises(Unparseable):
        store.take_key(key_entry(FORGED.public_key(), ACTIVE, at=None, root=OTHER_ROOT), ROOT_PUB)
    ring = store.keyring(ROOT_PUB)
    assert FORGED_SIGNER.key_id not in ring
    at = START + timedelta(hours=4)
    grey = check(store, ring, checkpoint_id=first_checkpoint(decision), at=at, token=forged)
    assert not grey["green"] and grey["reason"].startswith("bad_token")
    assert check(store, ring, checkpoint_id=first_checkpoint(decision), at=at, token=decision["pass"]["token"])["green"]
    assert len(Store(tmp_path / "station.db", [first_checkpoint(decision)]).keyring(OTHER_ROOT.public_key())) == 0


# --- no usable key: a rejection, and the replay decides it alike ---------------------------------


def run_keyring_log(world) -> tuple[list[Record], list[Record]]:
    """The keyring log sent through `world`'s worker: its input records, and the records it wrote."""
    records: list[Record] = []
    recorded: list[Record] = []
    for n, (topic, key, value) in enumerate(keyring_log()):
        records.append(Record(topic, kafka_partition(key, 4), n + 1, TS + n, key, value))
        recorded += [
            Record(o.topic, 0, len(recorded), TS + n, o.key, o.value, o.headers) for o in world.send(topic, key, value)
        ]
    return records, recorded


def test_without_the_private_key_the_worker_rejects_and_the_replay_with_every_key_reproduces_it():
    here = {KID1: SIGNERS[KID1]}  # K2's private key never reached this worker
    world = World(here)
    world.key(record(KID1))
    world.key(record(KID2, ACTIVE, ROTATED))
    records, recorded = run_keyring_log(world)
    decisions = [orjson.loads(r.value) for r in recorded if r.topic == T.decisions]
    assert [d["decision"] for d in decisions] == ["approved"] * 5 + ["rejected"] * 3  # 6 and after: K2's time
    assert all(d["known"]["missing_keys"] == [KID2] for d in decisions[5:])
    suspended = [orjson.loads(r.value) for r in recorded if r.topic == T.status and b"no_signing_key" in r.value]
    assert len(suspended) == 5 and {s["reason"] for s in suspended} == {f"no_signing_key: {KID2}"}

    rep = Replayer(make_pipeline(Keyring(SIGNERS.get)))  # the audit has every private key
    reference = [r for r in records if r.topic in (T.keys, T.enterprises)]
    rep.load_reference(reference)
    statuses = [r for r in recorded if r.topic == T.status]
    rep.replay(
        [r for r in records if r.topic in (T.requests, T.scans)] + reference,
        recorded=[r for r in recorded if r.topic == T.decisions],
        answers=statuses,
    )
    c = compare(rep, [r for r in recorded if r.topic == T.decisions], statuses)
    assert not c.mismatches, c.mismatches[:3]
    assert c.decisions_matched == 8 and c.statuses_matched > 8


def test_a_replay_without_a_key_the_worker_had_stops_and_says_so():
    from models.keyring import SigningKeyMissing

    world = World()
    world.key(record(KID1))
    world.key(record(KID2, ACTIVE, ROTATED))
    records, recorded = run_keyring_log(world)
    rep = Replayer(make_pipeline(Keyring({KID1: SIGNERS[KID1]}.get)))  # the audit lacks K2
    reference = [r for r in records if r.topic in (T.keys, T.enterprises)]
    rep.load_reference(reference)
    with pytest.raises(SigningKeyMissing, match=KID2):
        rep.replay(
            [r for r in records if r.topic in (T.requests, T.scans)] + reference,
            recorded=[r for r in recorded if r.topic == T.decisions],
            answers=[r for r in recorded if r.topic == T.status],
        )


def test_the_record_body_the_root_signs_is_every_field_but_the_signature_in_canonical_json():
    from models.keyring import record_body

    signed = orjson.loads(record(KID1))
    assert record_body(signed) == orjson.dumps(
        {k: v for k, v in signed.items() if k != "root_signature"}, option=orjson.OPT_SORT_KEYS
    )
    assert format_time(START)  # (the times inside are RFC 3339, as every record's)
