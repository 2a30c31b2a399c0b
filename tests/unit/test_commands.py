"""The internal pass topic's commands on the wire (streams.commands): the bytes each kind is sent as,
pinned here as written before the commands were typed; the old forms still read; and bytes that hold
no command raise what the agent dead-letters, with the reasons it always gave."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.passes import kafka_partition
from models.records import EnterpriseEntry, RegionRisk, canonical, parse_scan, parse_time
from streams.commands import (
    ClockTick,
    EnterpriseChanged,
    KeyChanged,
    LegacyIssue,
    RekeyedScan,
    RiskChanged,
    decode,
    encode,
)
from streams.handlers import RecordMeta, Tables, clock_command
from tests.support.factories import T, make_pipeline, signed_key_record, wuhan_to_guangzhou

RISK_BYTES = b'{"adcode":"4201","effective_at":"2020-02-25T00:00:00Z","kind":"risk","level":"high","source":[0,0]}'
# What a worker before 0.6 sent: no source (it still decodes; its entry is known to every decision).
OLD_RISK_BYTES = b'{"adcode":"4201","effective_at":"2020-02-25T00:00:00Z","kind":"risk","level":"high"}'
ENTERPRISE_BYTES = (
    b'{"action":"remove","credit_code":"91330100799655058B","effective_at":"2020-02-25T01:30:00Z",'
    b'"kind":"enterprise","name":"\xe9\x98\xbf\xe9\x87\x8c\xe5\xb7\xb4\xe5\xb7\xb4","source":[0,0]}'
)
KEY_BYTES = (
    b'{"algorithm":"Ed25519","effective_at":"2020-02-25T08:00:00Z","kid":"824e1b86505a03b4","kind":"key",'
    b'"public_key":"-----BEGIN PUBLIC KEY-----\\nMCowBQYDK2VwAyEAyZ4rN96TAC32gyanhUk81KpIfRpF+iEXqhBQSJI794E=\\n'
    b'-----END PUBLIC KEY-----\\n","root_kid":"5540ee3de4e09522","root_signature":"TAvTSGLJiy8OXSuYJ9n0Qe4vfnfXNTI6'
    b'Y0yU-nS0dN2q_Xh4YGqwZge0ZKv5-TA5kPVgJvNBXNVab0bp3vlFDA","source":[0,0],"status":"withdrawn"}'
)
CLOCK_BYTES = b'{"at":"2020-02-25T12:00:00Z","kind":"clock"}'
SCAN_BYTES = (
    b'{"kind":"scan","pass_id":"420111000001","scan":{"checkpoint_id":"CP-420111","extra":[1,2],'
    b'"kind":"arrival","pass_id":"420111000001","plate":"\xe9\x84\x82A12345","scan_id":"s-1",'
    b'"scanned_at":"2020-02-25T10:00:00+08:00"}}'
)
SCAN = {
    "scan_id": "s-1",
    "checkpoint_id": "CP-420111",
    "pass_id": "420111000001",
    "plate": "鄂A12345",
    "kind": "arrival",
    "scanned_at": "2020-02-25T10:00:00+08:00",
    "extra": [1, 2],
}
WITHDRAWN_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(5, 37))).public_key()


def meta(topic: str, partition: int = 0) -> RecordMeta:
    return RecordMeta(topic, partition, 0, 0)


# --- the bytes each kind is sent as ------------------------------------------------------------
def test_a_risk_level_is_broadcast_as_the_same_bytes_to_every_partition():
    pipeline = make_pipeline()
    value = b'{"adcode":"420100","level":"high","effective_at":"2020-02-25T08:00:00+08:00"}'
    outs = pipeline.on_risk(b"420100", value, meta(T.risk))
    assert [(o.topic, o.key, o.value, o.partition) for o in outs] == [
        (T.pass_events, b"4201", RISK_BYTES, p) for p in range(pipeline.partitions)
    ]
    risk = RegionRisk("4201", "high", parse_time("2020-02-25T00:00:00Z"))
    assert encode(RiskChanged(risk, (0, 0))) == RISK_BYTES
    assert decode(RISK_BYTES) == RiskChanged(risk, (0, 0))
    assert decode(OLD_RISK_BYTES) == RiskChanged(risk, None)


def test_a_key_list_removal_is_broadcast_as_its_bytes():
    pipeline = make_pipeline()
    value = orjson.dumps(
        {
            "credit_code": "91330100799655058B",
            "name": "阿里巴巴",
            "action": "remove",
            "effective_at": "2020-02-25T09:30:00+08:00",
        }
    )
    outs = pipeline.on_enterprise(b"x", value, meta(T.enterprises))
    assert {(o.key, o.value) for o in outs} == {(b"91330100799655058B", ENTERPRISE_BYTES)}
    assert len(outs) == pipeline.partitions


def test_a_key_withdrawal_is_broadcast_as_its_bytes():
    pipeline = make_pipeline()
    record = signed_key_record(WITHDRAWN_KEY, "withdrawn", parse_time("2020-02-25T08:00:00Z"))
    outs = pipeline.on_key(b"k", orjson.dumps(record), meta(T.keys))
    assert {(o.key, o.value) for o in outs} == {(b"824e1b86505a03b4", KEY_BYTES)}
    assert len(outs) == pipeline.partitions


def test_a_clock_tick_is_sent_as_its_bytes():
    at = datetime(2020, 2, 25, 12, tzinfo=UTC)
    assert clock_command(at) == CLOCK_BYTES
    out = make_pipeline().clock_tick(at, 3)
    assert (out.topic, out.key, out.value, out.partition) == (T.pass_events, b"clock", CLOCK_BYTES, 3)
    assert encode(ClockTick("2020-02-25T12:00:00Z")) == CLOCK_BYTES


def test_a_scan_keyed_elsewhere_is_rekeyed_as_received():
    pipeline = make_pipeline()
    home = kafka_partition(b"420111000001", pipeline.partitions)
    (out,) = pipeline.on_scan(
        b"plate", orjson.dumps(SCAN), meta(T.scans, (home + 1) % pipeline.partitions), tables=Tables.empty()
    )
    # On its pass's partition, named: the one Kafka's partitioner gives the pass number.
    assert (out.topic, out.key, out.value, out.partition) == (T.pass_events, b"420111000001", SCAN_BYTES, home)


# --- the bytes read ---------------------------------------------------------------------------
def test_each_kind_decodes_to_its_command():
    assert decode(RISK_BYTES) == RiskChanged(RegionRisk("4201", "high", parse_time("2020-02-25T00:00:00Z")), (0, 0))
    assert decode(ENTERPRISE_BYTES) == EnterpriseChanged(
        EnterpriseEntry("91330100799655058B", "阿里巴巴", "remove", parse_time("2020-02-25T01:30:00Z")), (0, 0)
    )
    key = decode(KEY_BYTES)
    assert isinstance(key, KeyChanged) and (key.entry.kid, key.entry.status) == ("824e1b86505a03b4", "withdrawn")
    assert key.source == (0, 0)
    assert decode(CLOCK_BYTES) == ClockTick("2020-02-25T12:00:00Z")
    assert decode(SCAN_BYTES) == RekeyedScan("420111000001", parse_scan(SCAN), SCAN)
    for raw in (RISK_BYTES, ENTERPRISE_BYTES, KEY_BYTES, CLOCK_BYTES, SCAN_BYTES):
        assert encode(decode(raw)) == raw


def test_an_issue_left_by_a_worker_before_0_4_is_stored_and_issued_once():
    pipeline, tables = make_pipeline(), Tables.empty()
    state = wuhan_to_guangzhou(pipeline.tracker)
    decided_at = "2020-02-25T07:00:00Z"
    old = canonical({"kind": "issue", "state": orjson.loads(state.to_json()), "decided_at": decided_at})
    command = decode(old)
    assert isinstance(command, LegacyIssue) and command.state == state and command.decided_at == decided_at
    home = kafka_partition(state.pass_id.encode(), pipeline.partitions)
    (issued,) = pipeline.on_pass_event(old, partition=home, tables=tables)
    assert issued.topic == T.status and orjson.loads(issued.value)["status"] == "issued"
    assert state.pass_id in tables.passes
    assert pipeline.on_pass_event(old, partition=home, tables=tables) == []  # redelivered


def test_an_old_issue_whose_number_another_shipment_holds_is_a_dead_letter():
    pipeline, tables = make_pipeline(), Tables.empty()
    state = wuhan_to_guangzhou(pipeline.tracker)
    home = kafka_partition(state.pass_id.encode(), pipeline.partitions)
    first = canonical({"kind": "issue", "state": orjson.loads(state.to_json()), "decided_at": "2020-02-25T07:00:00Z"})
    pipeline.on_pass_event(first, partition=home, tables=tables)
    other = {
        "kind": "issue",
        "state": {**orjson.loads(state.to_json()), "shipment_id": "S-2"},
        "decided_at": "2020-02-25T07:30:00Z",
    }
    (dead,) = pipeline.on_pass_event(canonical(other), partition=home, tables=tables)
    assert (dead.topic, dead.key) == (T.deadletter, b"420111000001")
    assert orjson.loads(dead.value) == {
        "topic": T.pass_events,
        "key": "420111000001",
        "value": other,
        "error": "pass_id 420111000001 already belongs to another shipment",
        "at": "2020-02-25T07:30:00Z",
    }
    assert dict(dead.headers)["ce_id"] == b"deadletter/collision/S-2"
    assert dict(dead.headers)["ce_source"] == b"/greenchannel/tracker"


# --- bytes that hold no command -------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, error",
    [
        (b'{"kind":"nope"}', "ValueError: unknown pass command 'nope'"),
        (b'{"kind":[1]}', "ValueError: unknown pass command [1]"),
        (b"not json", "JSONDecodeError: invalid literal, expected 'null': line 1 column 1 (char 0)"),
        (None, "JSONDecodeError: Input must be bytes, bytearray, memoryview, or str: line 1 column 1 (char 0)"),
        (b"[]", "TypeError: list indices must be integers or slices, not str"),
        (b'{"at":"x"}', "KeyError: 'kind'"),
        (b'{"kind":"clock"}', "KeyError: 'at'"),
        (b'{"kind":"clock","at":"soon"}', "ValueError: 'soon' is not an RFC 3339 timestamp"),
        (b'{"kind":"risk","adcode":"42"}', "KeyError: 'level'"),
    ],
)
def test_bytes_that_hold_no_command_raise_what_the_agent_dead_letters(value, error):
    """The agent (`Runtime.guarded`, streams.worker.runtime) dead-letters whatever a handler raises,
    as "internal error"."""
    pipeline = make_pipeline()
    with pytest.raises(Exception) as raised:
        pipeline.on_pass_event(value, partition=0, tables=Tables.empty())
    assert f"{type(raised.value).__name__}: {raised.value}" == error
    dead = pipeline.dead_letter(RecordMeta(T.pass_events, 1, 2, 1582617600000), None, value, f"internal error: {error}")
    assert dead.topic == T.deadletter and orjson.loads(dead.value)["error"] == f"internal error: {error}"


# --- the dead letter of a record --------------------------------------------------------------------
def test_a_dead_letter_names_the_record_its_metadata_gives():
    dead = make_pipeline().dead_letter(RecordMeta(T.requests, 3, 17, 1582617600000), b"k", b"\xff", "why")
    assert (dead.topic, dead.key, dead.partition) == (T.deadletter, b"k", None)
    assert dead.value == (
        b'{"at":"2020-02-25T08:00:00Z","error":"why","key":"k","offset":17,"partition":3,'
        b'"topic":"gc.shipment.requests","value":null,"value_base64":"/w=="}'
    )
    assert dead.headers == (
        ("ce_specversion", b"1.0"),
        ("ce_id", b"deadletter/gc.shipment.requests/3/17"),
        ("ce_source", b"/greenchannel/worker"),
        ("ce_type", b"cn.greenchannel.deadletter"),
        ("ce_time", b"2020-02-25T08:00:00Z"),
        ("content-type", b"application/json"),
    )
