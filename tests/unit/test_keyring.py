"""The pass-signing keyring without a broker: the key that signs as of a time, rotation (older
passes verify until they expire), withdrawal (refused at a scan after it, `key_withdrawn`, by the
tracker and a station alike; the key's active passes reissued, and only those), an unknown kid,
records that are not keys, determinism, and a worker without the private key it needs."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import ValidationError

from models.keyring import ACTIVE, NATIONAL, WITHDRAWN, Keyring, SigningKeyMissing, key_entry, key_id, parse_key_entry
from models.operators import EntryError, key_withdrawal
from models.passes import Signer, kafka_partition, unverified_claims, verify_token
from models.records import RegionRisk, Unparseable, format_time, parse_time
from models.stored import load_pass
from streams.audit import Record, Replayer, compare
from streams.dev.simulator import Scenario
from streams.handlers import Out, RecordMeta, Tables
from streams.keys import KeyDir, key_record, load_keyring
from streams.station.checks import check
from streams.station.store import Store
from tests.support.factories import KEY, ROOT_KEY, T, make_pipeline, make_tracker, validator, wuhan_to_guangzhou

K1 = KEY  # the ring's first key (support's), active since ever
K2 = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
K3 = Ed25519PrivateKey.from_private_bytes(bytes(range(3, 35)))
SIGNERS = {key_id(k.public_key()): Signer(k, key_id(k.public_key())) for k in (K1, K2, K3)}
KID1, KID2, KID3 = SIGNERS
START = datetime(2020, 2, 25, 8, 0, tzinfo=UTC)
ROTATED = START + timedelta(hours=6)  # K2 active from here
WITHDRAWN_AT = START + timedelta(hours=10)  # K1 withdrawn from here
SCENARIO = Scenario(seed=313, start=START)
TS = 1582617600000  # the records' time (the keys records carry their own times)
ROOT = Path(__file__).resolve().parents[2]
ROOT_PUB = ROOT_KEY.public_key()


def record(kid: str, status: str = ACTIVE, at: datetime | None = None, **grant) -> bytes:
    """A keys-topic record signed by the tests' root: the first key's as a worker publishes it (no
    time), or a timed one."""
    return key_record(key_entry(SIGNERS[kid].public_key, status, at=at, root=ROOT_KEY, **grant))


def ring_of(*records: bytes, signers=SIGNERS) -> Keyring:
    ring = Keyring(signers.get, root=ROOT_KEY.public_key())
    for r in records:
        ring.apply(ring.take(orjson.loads(r), timestamp_ms=TS))
    return ring


class World:
    """The worker's handlers over one set of tables, each broadcast handled on its partition."""

    def __init__(self, signers=SIGNERS) -> None:
        self.pipeline = make_pipeline(Keyring(signers.get))
        for i, entry in enumerate(SCENARIO.enterprise_entries()):
            self.pipeline.on_enterprise(
                None, orjson.dumps(entry), RecordMeta(self.pipeline.topics.enterprises, 0, i, TS)
            )
        self.tables = Tables.empty()
        self.offset = 0

    @property
    def ring(self) -> Keyring:
        return self.pipeline.decider.keyring

    def send(self, topic: str, key: bytes, value: bytes) -> list[Out]:
        """What the worker publishes for one input: decisions, statuses, dead letters."""
        p, self.offset = self.pipeline, self.offset + 1
        meta = RecordMeta(topic, kafka_partition(key, p.partitions), self.offset, TS)
        if topic in (T.keys, T.enterprises):
            outs = (p.on_key if topic == T.keys else p.on_enterprise)(key, value, meta)
        else:
            handler = p.on_request if topic == T.requests else p.on_scan
            outs = handler(key, value, meta, tables=self.tables)
        return self.route(outs)

    def route(self, outs: list[Out]) -> list[Out]:
        done = []
        for out in outs:
            if out.topic == T.pass_events:
                done += self.route(self.pipeline.on_pass_event(out.value, partition=out.partition, tables=self.tables))
            else:
                done.append(out)
        return done

    def key(self, value: bytes) -> list[dict]:
        kid = orjson.loads(value).get("kid") or "?"
        return [orjson.loads(o.value) for o in self.send(T.keys, str(kid).encode(), value)]

    def decide(self, body: dict) -> dict:
        outs = self.send(T.requests, body["shipment_id"].encode(), orjson.dumps(body))
        return orjson.loads(outs[0].value)

    def scan(self, decision: dict, at: datetime, *, token: str | None = None, n: int = 0, last: bool = False) -> dict:
        the_pass = decision["pass"]
        checkpoint = the_pass["route"]["checkpoints"][-1 if last else 0]["checkpoint_id"]
        body = {
            "scan_id": f"{the_pass['pass_id']}-{n}",
            "checkpoint_id": checkpoint,
            "pass_id": the_pass["pass_id"],
            "plate": the_pass["plate"],
            "kind": "arrival",
            "scanned_at": format_time(at),
            "token": token or the_pass["token"],
        }
        (out,) = self.send(T.scans, the_pass["pass_id"].encode(), orjson.dumps(body))
        return orjson.loads(out.value)


def request(n: int, at: datetime) -> dict:
    """A P0 request from Wuhan to Guangzhou submitted at `at` (so decided as of then), departing
    two hours later; the same for the same `n`."""
    body = Scenario(seed=313 + n, start=START).request(n, kind="P0")
    body.update(
        submitted_at=format_time(at),
        departure_at=format_time(at + timedelta(hours=2)),
        trip="single",
        origin={"adcode": "420111"},
        destination={"adcode": "440106"},
    )
    return body


def rotated_world(signers=SIGNERS) -> World:
    world = World(signers)
    world.key(record(KID1))
    world.key(record(KID2, ACTIVE, ROTATED))
    return world


def kid_of(token: str) -> str:
    return unverified_claims(token).kid


# --- the ring as of a time ----------------------------------------------------------------------


def test_the_key_that_signs_is_the_newest_active_at_the_time_in_any_order_of_records():
    records = [
        record(KID1),
        record(KID2, ACTIVE, ROTATED),
        record(KID3, ACTIVE, ROTATED + timedelta(days=1)),
        record(KID3, WITHDRAWN, ROTATED + timedelta(days=2)),
    ]
    for ring in (ring_of(*records), ring_of(*reversed(records), *records)):
        assert [
            ring.signing_kid(at)
            for at in (
                START,
                ROTATED - timedelta(microseconds=1),
                ROTATED,
                ROTATED + timedelta(days=1),
                ROTATED + timedelta(days=2),
            )
        ] == [KID1, KID1, KID2, KID3, KID2]
        assert (
            ring.status_at(KID3, ROTATED) == "pending"
            and ring.status_at(KID3, ROTATED + timedelta(days=2)) == WITHDRAWN
        )
        assert ring.kids() == [KID1, KID2, KID3] and ring.activated_at(KID1) is None and ring.ever_active(KID1)
    rows = [{k: v for k, v in row.items() if k not in ("not_after", "prefixes")} for row in ring.rows(ROTATED)]
    assert ring.rows(ROTATED)[0]["prefixes"] == list(NATIONAL) and ring.rows(ROTATED)[0]["not_after"] is None
    assert rows[:2] == [  # what `keys list` and the worker's /keys/ show
        {
            "kid": KID1,
            "active_from": "always",
            "status": ACTIVE,
            "withdrawn_from": None,
            "signs": False,
            "private_key_here": True,
        },
        {
            "kid": KID2,
            "active_from": format_time(ROTATED),
            "status": ACTIVE,
            "withdrawn_from": None,
            "signs": True,
            "private_key_here": True,
        },
    ]
    twice = ring_of(record(KID1))
    assert not twice.apply(twice.take(orjson.loads(record(KID1))))  # a redelivery changes nothing
    # A later activation of a key never moves it: its earliest stands.
    assert not twice.apply(twice.take(orjson.loads(record(KID1, ACTIVE, ROTATED))))
    assert twice.signing_kid(START) == KID1


def test_two_keys_active_since_ever_are_ordered_by_kid_not_by_arrival():
    both = [record(KID1), record(KID3)]
    assert ring_of(*both).signing_kid(START) == ring_of(*reversed(both)).signing_kid(START) == max(KID1, KID3)


# --- rotation -----------------------------------------------------------------------------------


def test_new_passes_use_the_rotated_key_and_older_ones_verify_until_they_expire(tmp_path):
    world = rotated_world()
    old, new = (
        world.decide(request(1, START + timedelta(hours=1))),
        world.decide(request(2, ROTATED + timedelta(hours=1))),
    )
    assert (old["decision"], new["decision"]) == ("approved", "approved")
    assert (kid_of(old["pass"]["token"]), kid_of(new["pass"]["token"])) == (KID1, KID2)
    assert verify_token(new["pass"]["token"], world.ring.public_keys).kid == KID2
    end = parse_time(old["pass"]["valid_until"])
    assert world.scan(old, end - timedelta(minutes=1))["status"] == "at_checkpoint"
    expired = world.scan(old, end + timedelta(minutes=1), n=1)
    assert (expired["status"], expired["reason"]) == ("expired", "validity_ended")
    # A station with the same records says the same of the older key's token.
    store = station_store(tmp_path, old, [record(KID1), record(KID2, ACTIVE, ROTATED)])
    at = end - timedelta(minutes=1)
    assert check(
        store, store.keyring(ROOT_PUB), checkpoint_id=first_checkpoint(old), at=at, token=old["pass"]["token"]
    )["green"]


def station_store(tmp_path, decision: dict, records: list[bytes], statuses: list[dict] = ()) -> Store:
    store = Store(tmp_path / "station.db", [first_checkpoint(decision)])
    store.take_decision(decision)
    for r in records:
        store.take_key(orjson.loads(r), ROOT_PUB, timestamp_ms=TS)
    for event in statuses:
        store.take_status(event)
    return store


def first_checkpoint(decision: dict) -> str:
    return decision["pass"]["route"]["checkpoints"][0]["checkpoint_id"]


# --- withdrawal ---------------------------------------------------------------------------------


def test_a_withdrawn_key_is_refused_at_a_scan_after_its_withdrawal_and_not_before(tmp_path):
    world = rotated_world()
    old = world.decide(request(1, START + timedelta(hours=1)))
    events = world.key(record(KID1, WITHDRAWN, WITHDRAWN_AT))
    (reissue,) = [e for e in events if e["pass_id"] == old["pass"]["pass_id"]]
    before, after = WITHDRAWN_AT - timedelta(minutes=1), WITHDRAWN_AT + timedelta(minutes=1)
    assert world.scan(old, before)["status"] == "at_checkpoint"
    held = world.scan(old, after, n=1)
    assert (held["status"], held["reason"]) == ("held", "key_withdrawn")
    released = world.scan(old, after + timedelta(minutes=1), token=reissue["token"], n=2)
    assert (released["status"], released["reason"]) == ("at_checkpoint", None)

    records = [record(KID1), record(KID2, ACTIVE, ROTATED), record(KID1, WITHDRAWN, WITHDRAWN_AT)]
    store = station_store(tmp_path, old, records, [reissue])
    here, ring = first_checkpoint(old), store.keyring(ROOT_PUB)
    assert check(store, ring, checkpoint_id=here, at=before, token=old["pass"]["token"])["green"]
    grey = check(store, ring, checkpoint_id=here, at=after, token=old["pass"]["token"])
    assert (grey["green"], grey["reason"]) == (False, "key_withdrawn")
    assert "撤销" in grey["text_zh"] and "withdrawn key" in grey["text_en"]
    assert check(store, ring, checkpoint_id=here, at=after, token=reissue["token"])["green"]
    assert store.row(old["pass"]["pass_id"])["token"] == reissue["token"]  # the station keeps the new token
    # Offline, a pass the station never stored: refused on its signed claims alike.
    elsewhere = Store(tmp_path / "other.db", [here])
    for r in records:
        elsewhere.take_key(orjson.loads(r), ROOT_PUB, timestamp_ms=TS)
    assert (
        check(elsewhere, elsewhere.keyring(ROOT_PUB), checkpoint_id=here, at=after, token=old["pass"]["token"])[
            "reason"
        ]
        == "key_withdrawn"
    )


def test_an_unknown_kid_is_refused_by_the_tracker_and_the_station(tmp_path):
    world = rotated_world()
    decision = world.decide(request(1, START + timedelta(hours=1)))
    the_pass = decision["pass"]
    stranger = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(9, 41))), "0123456789abcdef")
    token = stranger.token(unverified_claims(the_pass["token"]).signable())
    refused = world.scan(decision, START + timedelta(hours=4), token=token)
    assert (refused["status"], refused["reason"]) == (
        "held",
        "bad_token: token signed with an unknown key (kid 0123456789abcdef)",
    )
    store = station_store(tmp_path, decision, [record(KID1), record(KID2, ACTIVE, ROTATED)])
    grey = check(
        store,
        store.keyring(ROOT_PUB),
        checkpoint_id=first_checkpoint(decision),
        at=START + timedelta(hours=4),
        token=token,
    )
    assert grey["reason"] == refused["reason"]


def test_a_withdrawal_reissues_exactly_the_active_passes_its_key_signed(monkeypatch):
    world = rotated_world()
    a, b = (world.decide(request(n, START + timedelta(hours=n))) for n in (1, 2))
    c = world.decide(request(3, ROTATED + timedelta(hours=1)))  # signed by K2
    d = world.decide(request(4, START + timedelta(hours=3)))
    assert world.scan(d, START + timedelta(hours=9), last=True)["status"] == "delivered"  # nothing can change it
    visited = []
    real = world.pipeline.tracker.key_withdrawn
    monkeypatch.setattr(
        world.pipeline.tracker, "key_withdrawn", lambda s, kid, at: (visited.append(s.pass_id), real(s, kid, at))[1]
    )
    events = world.key(record(KID1, WITHDRAWN, WITHDRAWN_AT))
    ids = sorted(x["pass"]["pass_id"] for x in (a, b))
    assert sorted(visited) == ids  # the index: neither C (another key) nor D (delivered) is visited
    assert sorted(e["pass_id"] for e in events) == ids
    status = validator("PassStatus")
    for event, decision in zip(
        sorted(events, key=lambda e: e["pass_id"]), sorted((a, b), key=lambda x: x["pass"]["pass_id"])
    ):
        status.validate(event)
        assert (event["status"], event["reason"], event["cause"], event["at"]) == (
            "issued",
            "token_reissued",
            f"key:{KID1}:withdrawn:{format_time(WITHDRAWN_AT)}",
            format_time(WITHDRAWN_AT),
        )
        assert event["route"] == decision["pass"]["route"]
        claims = verify_token(event["token"], world.ring.public_keys)
        assert claims.kid == KID2 and replace(claims, kid=KID1) == unverified_claims(decision["pass"]["token"])
        assert load_pass(world.tables.passes[event["pass_id"]]).kid == KID2
    assert all(not world.pipeline.index(p, world.tables).signed_by(KID1) for p in range(4))
    assert world.key(record(KID1, WITHDRAWN, WITHDRAWN_AT)) == []  # a redelivered withdrawal: nothing again
    assert c["pass"]["pass_id"] not in visited


def test_with_no_other_key_in_force_a_withdrawal_suspends_and_nothing_new_is_signed():
    world = World()
    world.key(record(KID1))
    a = world.decide(request(1, START + timedelta(hours=1)))
    (event,) = world.key(record(KID1, WITHDRAWN, WITHDRAWN_AT))
    assert (event["status"], event["reason"]) == ("suspended", "key_withdrawn")
    later = world.decide(request(2, WITHDRAWN_AT + timedelta(hours=1)))
    assert (later["decision"], [r["code"] for r in later["reasons"]]) == ("rejected", ["no_signing_key"])
    # A risk change that needs a new route and token, with no key to sign it: suspended.
    tracker = make_tracker(ring_of(record(KID1), record(KID1, WITHDRAWN, WITHDRAWN_AT)))
    state = wuhan_to_guangzhou(tracker, kid=KID1)
    risk = RegionRisk("4212", "high", WITHDRAWN_AT + timedelta(hours=1))  # Xianning, on its route
    tracker.decider.risk.apply(risk)
    new, suspended = tracker.risk_changed(state, risk)
    assert (new.status, suspended["reason"]) == ("suspended", "no_signing_key")
    assert a["decision"] == "approved"


def test_a_request_from_before_a_withdrawal_decided_after_it_gets_the_same_bytes_as_in_event_order():
    """Decided as of its time (the withdrawn key's) and reissued at once, as a replay in event-time
    order would have: the request first, then the withdrawal."""
    body = request(1, START + timedelta(hours=1))
    late = rotated_world()
    late.key(record(KID1, WITHDRAWN, WITHDRAWN_AT))
    late_outs = late.send(T.requests, body["shipment_id"].encode(), orjson.dumps(body))
    in_order = rotated_world()
    in_order_outs = in_order.send(T.requests, body["shipment_id"].encode(), orjson.dumps(body))
    in_order_outs += in_order.send(T.keys, KID1.encode(), record(KID1, WITHDRAWN, WITHDRAWN_AT))

    def without_known(outs):  # what each decision knew is recorded, and differs: the rest may not
        return [(o.topic, {k: v for k, v in orjson.loads(o.value).items() if k != "known"}) for o in outs]

    assert without_known(late_outs) == without_known(in_order_outs)
    assert [orjson.loads(o.value).get("reason") for o in late_outs[1:]] == [None, "token_reissued"]
    knew_late, knew_before = (orjson.loads(outs[0].value)["known"]["keys"] for outs in (late_outs, in_order_outs))
    assert knew_late != knew_before  # the late decision says it knew of the withdrawal


def test_a_pass_stored_before_the_keyring_is_found_by_its_decisions_token():
    world = rotated_world()
    a = world.decide(request(1, START + timedelta(hours=1)))
    pid = a["pass"]["pass_id"]
    state = load_pass(world.tables.passes[pid])
    world.tables.passes[pid] = msgspec.structs.replace(state, kid=None).to_json()  # as a worker before the ring
    world.tables.forget(range(4))
    assert b'"kid"' not in world.tables.passes[pid]
    (event,) = world.key(record(KID1, WITHDRAWN, WITHDRAWN_AT))
    assert (event["pass_id"], event["reason"], kid_of(event["token"])) == (pid, "token_reissued", KID2)


# --- determinism: the same log, the same bytes; and the replay's ---------------------------------


def keyring_log() -> list[tuple[str, bytes, bytes]]:
    inputs = [(T.enterprises, e["credit_code"].encode(), orjson.dumps(e)) for e in SCENARIO.enterprise_entries()]
    inputs += [(T.keys, KID1.encode(), record(KID1)), (T.keys, KID2.encode(), record(KID2, ACTIVE, ROTATED))]
    bodies = [request(n, START + timedelta(hours=n)) for n in range(1, 9)]  # 6 and after: K2
    inputs += [(T.requests, b["shipment_id"].encode(), orjson.dumps(b)) for b in bodies]
    # The first pass is scanned before the withdrawal: its reissue says where the vehicle is then.
    the_pass = rotated_world().decide(bodies[0])["pass"]
    scan = {
        "scan_id": "kr-1",
        "checkpoint_id": the_pass["route"]["checkpoints"][0]["checkpoint_id"],
        "pass_id": the_pass["pass_id"],
        "plate": the_pass["plate"],
        "kind": "arrival",
        "scanned_at": format_time(WITHDRAWN_AT - timedelta(hours=1)),
        "token": the_pass["token"],
    }
    inputs.append((T.scans, the_pass["pass_id"].encode(), orjson.dumps(scan)))
    inputs.append((T.keys, KID1.encode(), record(KID1, WITHDRAWN, WITHDRAWN_AT)))
    inputs.append((T.keys, b"garbage", b'{"kid": "x", "public_key": "not a key", "algorithm": "Ed25519"}'))
    return inputs


def test_the_same_log_gives_the_same_bytes_twice_and_in_the_replay():
    runs = []
    for _ in range(2):
        world = rotated_world()
        runs.append(
            [(o.topic, o.key, o.value) for topic, key, value in keyring_log() for o in world.send(topic, key, value)]
        )
    assert runs[0] == runs[1]
    reissues = [orjson.loads(v) for t, _, v in runs[0] if t == T.status and b"token_reissued" in v]
    assert len(reissues) == 5 and {r["status"] for r in reissues} == {"issued", "at_checkpoint"}  # 1-5: K1
    assert sum(t == T.deadletter for t, _, _ in runs[0]) == 1

    world, records, recorded = rotated_world(), [], []
    for n, (topic, key, value) in enumerate(keyring_log()):
        records.append(Record(topic, kafka_partition(key, 4), n + 1, TS + n, key, value))  # World.send's offsets
        recorded += [
            Record(o.topic, 0, len(recorded), TS + n, o.key, o.value, o.headers) for o in world.send(topic, key, value)
        ]
    rep = Replayer(make_pipeline(Keyring(SIGNERS.get)))
    reference = [r for r in records if r.topic in (T.keys, T.enterprises)]
    rep.load_reference(reference)
    rep.replay(
        [r for r in records if r.topic in (T.requests, T.scans)] + reference,
        recorded=[r for r in recorded if r.topic == T.decisions],
    )
    c = compare(rep, [r for r in recorded if r.topic == T.decisions], [r for r in recorded if r.topic == T.status])
    assert not c.mismatches, c.mismatches[:3]
    assert c.decisions_matched == 8 and c.statuses_matched > 8


# --- bad input -----------------------------------------------------------------------------------


def other_pem() -> str:
    return orjson.loads(record(KID2))["public_key"]


BAD_RECORDS = {
    "not_json": b"{nope",
    "bad_pem": orjson.dumps({"kid": KID1, "algorithm": "Ed25519", "public_key": "-----BEGIN PUBLIC KEY-----\nxx"}),
    "kid_not_its_key": orjson.dumps({"kid": KID1, "algorithm": "Ed25519", "public_key": other_pem()}),
    "unknown_status": orjson.dumps({**orjson.loads(record(KID2)), "status": "revoked"}),
    "bad_time": orjson.dumps({**orjson.loads(record(KID2)), "status": "withdrawn", "effective_at": "yesterday"}),
    "other_algorithm": orjson.dumps({**orjson.loads(record(KID2)), "algorithm": "RSA"}),
    "no_kid": orjson.dumps({"algorithm": "Ed25519", "public_key": other_pem()}),
}


@pytest.mark.parametrize("name", BAD_RECORDS)
def test_a_malformed_key_record_is_dead_lettered_by_the_worker_and_skipped_by_a_station(name, tmp_path, caplog):
    world = World()
    world.key(record(KID1))
    (out,) = world.send(T.keys, b"k", BAD_RECORDS[name])
    letter = orjson.loads(out.value)
    assert out.topic == T.deadletter and letter["topic"] == T.keys and not letter["error"].startswith("internal")
    validator("DeadLetter").validate(letter)
    assert set(world.ring.public_keys) == {KID1} and not world.ring.withdrawn_at(KID2)

    from streams.settings import Settings
    from streams.station.link import Station

    store = Store(tmp_path / "station.db", ["BX-0000-0000"])
    station = Station(Settings(), ["BX-0000-0000"], store, {})

    class Tp:
        topic = station.topics.keys
        partition = 0

    class Rec:
        value, timestamp, offset = BAD_RECORDS[name], TS, 5

    with caplog.at_level(logging.WARNING, logger="greenchannel.station"):
        station._take({Tp: [Rec]})
    assert "skipped" in caplog.text and len(station.keys) == 0 and len(store.keyring(ROOT_PUB)) == 0


def test_the_records_match_the_passkey_schema():
    schema = validator("PassKey")
    for r in (record(KID1), record(KID2, ACTIVE, ROTATED), record(KID1, WITHDRAWN, WITHDRAWN_AT)):
        schema.validate(orjson.loads(r))
    with pytest.raises(ValidationError):
        schema.validate(orjson.loads(BAD_RECORDS["unknown_status"]))


# --- a worker without the private key --------------------------------------------------------------


def test_a_worker_without_the_private_key_rejects_with_the_reason_and_keeps_answering():
    here = {KID1: SIGNERS[KID1]}  # K2's private key is not in this worker's folder
    world = rotated_world(signers=here)
    a = world.decide(request(1, START + timedelta(hours=1)))  # K1's time: signed
    rejected = world.decide(request(2, ROTATED + timedelta(hours=1)))  # K2's time: no waiting, a rejection
    assert rejected["decision"] == "rejected" and rejected["pass"] is None
    [reason] = rejected["reasons"]
    assert reason["code"] == "no_signing_key" and KID2 in reason["text"] and "private key is not here" in reason["text"]
    assert rejected["known"]["missing_keys"] == [KID2]  # what a replay needs to decide it alike
    validator("PassDecision").validate(rejected)
    # The withdrawal's reissue needs K2 too: the pass is suspended, naming the key, never left waiting.
    [suspended] = world.key(record(KID1, WITHDRAWN, WITHDRAWN_AT))
    assert (suspended["pass_id"], suspended["status"]) == (a["pass"]["pass_id"], "suspended")
    assert suspended["reason"] == f"no_signing_key: {KID2}"
    here[KID2] = SIGNERS[KID2]  # the operator copies the key: the next request is signed
    assert world.decide(request(3, ROTATED + timedelta(hours=2)))["decision"] == "approved"


async def test_the_worker_waits_for_a_missing_private_key_and_then_handles_the_event(caplog):
    from streams.worker.runtime import signed

    tries = []

    def handle():
        tries.append(1)
        if len(tries) < 3:
            raise SigningKeyMissing(KID2, ROTATED)
        return ["done"]

    with caplog.at_level(logging.WARNING, logger="greenchannel"):
        assert await signed(handle, where="/keys", wait=0) == ["done"]
    assert len(tries) == 3 and caplog.text.count(f"{KID2} is in force") == 2 and "/keys" in caplog.text


# --- the key folder and the commands' checks ------------------------------------------------------


def test_the_key_folder_keeps_its_first_key_and_finds_keys_added_later(tmp_path):
    folder = KeyDir(tmp_path / "keys")
    first = folder.first()
    assert (tmp_path / "keys" / "pass-signing.pub").exists()
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "pass-signing.key").st_mode) == 0o600
    assert KeyDir(tmp_path / "keys").first().key_id == first.key_id  # a single-key folder keeps working
    reader = KeyDir(tmp_path / "keys")
    assert reader.signer(first.key_id).key_id == first.key_id
    new = KeyDir(tmp_path / "keys").new_key()  # written by another process: `keys rotate`
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / f"{new.key_id}.key").st_mode) == 0o600
    assert reader.signer(new.key_id).key_id == new.key_id and reader.signer("0" * 16) is None
    assert set(load_keyring([tmp_path / "keys"])) == {first.key_id, new.key_id}  # what a station is given
    assert len(reader.seeded(ROOT_PUB)) == 0  # no record the root signed: the first key does not sign
    seeded = reader.seeded(ROOT_PUB, ROOT_KEY)  # the development root at hand: it signs the first key's record
    assert seeded.signing_kid(START) == first.key_id and set(seeded.public_keys) == {first.key_id}
    assert reader.first_record(ROOT_PUB, None)["kid"] == first.key_id  # kept beside the key, as the worker publishes it
    other_root = Ed25519PrivateKey.from_private_bytes(bytes(range(40, 72)))
    assert reader.first_record(other_root.public_key(), None) is None  # another root's record is not taken


def test_greenchannel_keys_alone_still_makes_and_names_the_first_key(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "keys"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GC_KEY_DIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{tmp_path / 'pass-signing.pub'} (key id {KeyDir(tmp_path).first().key_id})"


def test_a_withdrawal_is_refused_for_an_unknown_key_a_withdrawn_one_or_the_last_in_force():
    ring = ring_of(record(KID1), record(KID2, ACTIVE, ROTATED))
    with pytest.raises(EntryError, match="no key"):
        key_withdrawal(ring, KID3, at=WITHDRAWN_AT, root=ROOT_KEY)
    with pytest.raises(EntryError, match="rotate first"):
        key_withdrawal(ring, KID1, at=START + timedelta(hours=1), root=ROOT_KEY)  # K2 is not active yet then
    entry = key_withdrawal(ring, KID1, at=WITHDRAWN_AT, root=ROOT_KEY)
    assert parse_key_entry(entry, ROOT_PUB).status == WITHDRAWN
    ring.apply(parse_key_entry(entry, ROOT_PUB))
    with pytest.raises(EntryError, match="withdrawn already"):
        key_withdrawal(ring, KID1, at=WITHDRAWN_AT + timedelta(hours=1), root=ROOT_KEY)
    with pytest.raises(Unparseable):  # outside the calendar window (and no longer what the root signed)
        parse_key_entry({**entry, "effective_at": "1999-12-31T00:00:00Z"}, ROOT_PUB, verify=False)
