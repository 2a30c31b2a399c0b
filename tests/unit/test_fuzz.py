"""Fuzzing every input: for any bytes, and for schema-shaped JSON with extreme values, each
message ends as exactly one decision, status or dead letter, and never as an internal error.

The handlers run in process (no broker): an exception escaping one is what the worker would
dead-letter as "internal error", so here it fails the test. The example counts are bounded in
`make test` (profile `ci`); `HYPOTHESIS_PROFILE=long` runs many more.
"""

from __future__ import annotations

import json
import os
import random

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from models.passes import kafka_partition
from models.records import MAX_CARGO_LINES, MAX_ID, MAX_MESSAGE_BYTES, MAX_TEXT, MAX_TOKEN, parse_time
from streams.dev.simulator import Scenario, scans_for
from streams.handlers import RecordMeta, Tables
from tests.support.factories import SCHEMAS, make_pipeline, signed_key_record, validator

# hypothesis-jsonschema filters what it draws, and the extreme values are big, so those health
# checks would only measure the generators. In `make test` the examples are derandomized (the
# same ones every run: a red CI names a real bug, never a lucky draw); `long` draws afresh.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=_QUIET, derandomize=True, database=None
)
settings.register_profile("long", max_examples=5000, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

PIPELINE = make_pipeline()
TOPICS = PIPELINE.topics
PARTITIONS = PIPELINE.partitions
# The topic each handler reads (what its records' metadata names).
TOPIC_OF = {
    "on_request": TOPICS.requests,
    "on_scan": TOPICS.scans,
    "on_risk": TOPICS.risk,
    "on_enterprise": TOPICS.enterprises,
    "on_key": TOPICS.keys,
}
VALID = {name: validator(name) for name in ("PassDecision", "PassStatus", "DeadLetter")}


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


# --- extreme values ---------------------------------------------------------------------------
EXTREME_TIMES = [
    "0001-01-01T00:00:00+00:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59+00:00",
    "9999-12-31T23:59:59-12:00",
    "9999-12-31T23:59:59.999999Z",
    "1970-01-01T00:00:00Z",
    "2020-02-30T00:00:00Z",
    "2020-02-25T25:00:00Z",
    "2020-02-25",
    "now",
    "",
]
EXTREME_NUMBERS = [0, -1, 1e-308, 5e-324, -1e308, 1e308, 10**30, -(10**30), 2**63, 2**64 + 1]
EXTREME_STRINGS = [
    "",
    " ",
    "\x00",
    "\x00" * 64,
    "\u202e\u200b",
    "\ud7ff",
    "鄂A" * 5000,
    "x" * 100_000,
    "".join(chr(c) for c in range(32)),
    "😷" * 300,
]
WRONG_TYPES = [None, True, [], {}, [1, [2, [3]]], {"a": {"b": {}}}]


def deep(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


EXTREMES = st.sampled_from(EXTREME_TIMES + EXTREME_NUMBERS + EXTREME_STRINGS + WRONG_TYPES + [deep(200), deep(600)])


def paths(obj, prefix=()):
    """Every path into a JSON object (dict keys and list indexes)."""
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from paths(value, prefix + (i,))


def replaced(obj, path, value):
    if not path:
        return value
    copy = list(obj) if isinstance(obj, list) else dict(obj)
    copy[path[0]] = replaced(obj[path[0]], path[1:], value) if path[0] in copy or isinstance(obj, list) else value
    return copy


def encode(value) -> bytes:
    """JSON text for any value: orjson where it can, the standard library for big integers."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()
    except orjson.JSONEncodeError:
        return json.dumps(value).encode()


@st.composite
def mutated(draw, base: dict):
    """A valid message with one field (any depth, or a new one) set to an extreme value."""
    where = draw(st.sampled_from(list(paths(base))[1:] + [("extra",)]))
    return replaced(base, where, draw(EXTREMES))


SCENARIO = Scenario(seed=5)
REQUESTS = [SCENARIO.request(n) for n in range(12)]


def _issued_pass() -> tuple[dict, Tables]:
    for entry in SCENARIO.enterprise_entries():
        PIPELINE.on_enterprise(None, orjson.dumps(entry), RecordMeta(TOPICS.enterprises, 0, 0, 0))
    tables = Tables.empty()
    for body in REQUESTS:
        key = body["shipment_id"].encode()
        outs = PIPELINE.on_request(
            key, orjson.dumps(body), RecordMeta(TOPICS.requests, kafka_partition(key, PARTITIONS), 0, 0), tables=tables
        )
        decision = orjson.loads(outs[0].value)
        if decision["decision"] == "approved":
            return decision, tables
    raise AssertionError("the scenario approved none of its requests")


DECISION, TABLES = _issued_pass()
PASS_ID = DECISION["pass"]["pass_id"]
SCANS = scans_for(DECISION, random.Random(3))
RISK = {"adcode": "420100", "level": "high", "effective_at": "2020-02-25T08:00:00+08:00"}
ENTERPRISE = dict(SCENARIO.enterprise_entries()[0])
# A key of no one's, withdrawn: valid, it changes nothing here (no pass is signed by it).
KEY_RECORD = signed_key_record(
    Ed25519PrivateKey.from_private_bytes(bytes(range(5, 37))).public_key(),
    "withdrawn",
    parse_time("2020-02-25T08:00:00Z"),
)


# --- the invariant ----------------------------------------------------------------------------
def no_internal_error(out) -> None:
    if out.topic == TOPICS.deadletter:
        body = orjson.loads(out.value)
        assert not body["error"].startswith("internal error"), body["error"]
        VALID["DeadLetter"].validate(body)


def answered_request(value: bytes, key: bytes | None) -> None:
    partition = kafka_partition(key, PARTITIONS) if key else 0
    outs = PIPELINE.on_request(
        key, value, RecordMeta(TOPICS.requests, partition, 7, 1582617600000), tables=Tables.empty()
    )
    assert outs and outs[0].topic in (TOPICS.decisions, TOPICS.deadletter)
    no_internal_error(outs[0])
    if outs[0].topic == TOPICS.decisions:
        decision = orjson.loads(outs[0].value)
        VALID["PassDecision"].validate(decision)
        assert len(outs) == (2 if decision["decision"] == "approved" else 1)
    else:
        assert len(outs) == 1


def answered_scan(value: bytes, key: bytes | None) -> None:
    partition = kafka_partition(key, PARTITIONS) if key else 0
    outs = PIPELINE.on_scan(key, value, RecordMeta(TOPICS.scans, partition, 7, 1582617600000), tables=TABLES)
    assert len(outs) == 1 and outs[0].topic in (TOPICS.status, TOPICS.deadletter, TOPICS.pass_events)
    no_internal_error(outs[0])
    if outs[0].topic == TOPICS.pass_events:  # re-keyed: it is answered on its pass's partition
        home = kafka_partition(outs[0].key, PARTITIONS)
        (answer,) = PIPELINE.on_pass_event(outs[0].value, partition=home, tables=TABLES)
        assert answer.topic == TOPICS.status
    elif outs[0].topic == TOPICS.status:
        VALID["PassStatus"].validate(orjson.loads(outs[0].value))


def answered_reference(value: bytes, handler) -> None:
    outs = handler(None, value, RecordMeta(TOPIC_OF[handler.__name__], 0, 7, 1582617600000))
    if outs and outs[0].topic == TOPICS.deadletter:
        assert len(outs) == 1
        no_internal_error(outs[0])
        return
    assert all(o.topic == TOPICS.pass_events for o in outs) and len(outs) in (0, PARTITIONS)
    for out in outs:  # each partition re-evaluates its passes without failing
        PIPELINE.on_pass_event(out.value, partition=out.partition, tables=TABLES)


# --- any bytes --------------------------------------------------------------------------------
ANY_KEY = st.one_of(st.none(), st.binary(max_size=40), st.just(PASS_ID.encode()))


@given(st.binary(max_size=4096), ANY_KEY)
def test_any_bytes_as_a_request(value, key):
    answered_request(value, key)


@given(st.binary(max_size=4096), ANY_KEY)
def test_any_bytes_as_a_scan(value, key):
    answered_scan(value, key)


@given(st.binary(max_size=4096))
def test_any_bytes_as_risk_and_enterprise_entries_and_key_records(value):
    answered_reference(value, PIPELINE.on_risk)
    answered_reference(value, PIPELINE.on_enterprise)
    answered_reference(value, PIPELINE.on_key)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)


@given(JSON_VALUES, ANY_KEY)
def test_any_json_as_each_input(value, key):
    raw = encode(value)
    answered_request(raw, key)
    answered_scan(raw, key)
    answered_reference(raw, PIPELINE.on_risk)
    answered_reference(raw, PIPELINE.on_enterprise)
    answered_reference(raw, PIPELINE.on_key)


# --- schema-shaped messages -------------------------------------------------------------------
@settings(max_examples=max(20, settings.default.max_examples // 3))  # slow to generate: ~0.2 s each
@given(from_schema(_schema("ShipmentRequest")))
def test_schema_shaped_requests(obj):
    answered_request(encode(obj), obj["shipment_id"].encode())


@given(from_schema(_schema("CheckpointScan")))
def test_schema_shaped_scans(obj):
    answered_scan(encode(obj), (obj.get("pass_id") or "").encode() or None)


@given(from_schema(_schema("RegionRisk")))
def test_schema_shaped_risk_entries(obj):
    answered_reference(encode(obj), PIPELINE.on_risk)


@given(from_schema(_schema("EnterpriseEntry")))
def test_schema_shaped_enterprise_entries(obj):
    answered_reference(encode(obj), PIPELINE.on_enterprise)


@given(from_schema(_schema("PassKey")))
def test_schema_shaped_key_records(obj):
    answered_reference(encode(obj), PIPELINE.on_key)


# --- valid messages with one extreme value ----------------------------------------------------
@given(st.sampled_from(REQUESTS).flatmap(mutated))
def test_requests_with_an_extreme_value_anywhere(obj):
    key = obj.get("shipment_id") if isinstance(obj, dict) else None
    answered_request(encode(obj), key.encode() if isinstance(key, str) else b"fuzz")


@given(st.sampled_from(SCANS).flatmap(mutated))
def test_scans_with_an_extreme_value_anywhere(obj):
    answered_scan(encode(obj), PASS_ID.encode())


@given(mutated(RISK))
def test_risk_entries_with_an_extreme_value_anywhere(obj):
    answered_reference(encode(obj), PIPELINE.on_risk)


@given(mutated(ENTERPRISE))
def test_enterprise_entries_with_an_extreme_value_anywhere(obj):
    answered_reference(encode(obj), PIPELINE.on_enterprise)


@given(mutated(KEY_RECORD))
def test_key_records_with_an_extreme_value_anywhere(obj):
    answered_reference(encode(obj), PIPELINE.on_key)


@pytest.mark.parametrize("handler", ["on_request", "on_scan", "on_risk", "on_enterprise", "on_key"])
def test_nesting_deeper_than_the_parser_goes_is_a_dead_letter(handler):
    value = b"[" * 5000 + b"]" * 5000
    kwargs = {"tables": Tables.empty()} if handler in ("on_request", "on_scan") else {}
    (out,) = getattr(PIPELINE, handler)(b"k", value, RecordMeta(TOPIC_OF[handler], 0, 0, 0), **kwargs)
    assert out.topic == TOPICS.deadletter and "JSON" in orjson.loads(out.value)["error"]


@pytest.mark.parametrize("when", EXTREME_TIMES)
@pytest.mark.parametrize("field", ["submitted_at", "departure_at"])
def test_a_request_at_the_ends_of_the_calendar_is_rejected_naming_the_field(field, when):
    body = dict(REQUESTS[0], **{field: when})
    key = body["shipment_id"].encode()
    outs = PIPELINE.on_request(
        key,
        orjson.dumps(body),
        RecordMeta(TOPICS.requests, kafka_partition(key, PARTITIONS), 0, 1582617600000),
        tables=Tables.empty(),
    )
    decision = orjson.loads(outs[0].value)
    assert decision["decision"] == "rejected", decision
    assert field in {r.get("field") for r in decision["reasons"]}, decision["reasons"]


# --- limits -----------------------------------------------------------------------------------
def decide(body: dict) -> dict:
    key = body["shipment_id"].encode()
    outs = PIPELINE.on_request(
        key,
        orjson.dumps(body),
        RecordMeta(TOPICS.requests, kafka_partition(key, PARTITIONS), 0, 1582617600000),
        tables=Tables.empty(),
    )
    return orjson.loads(outs[0].value)


def reasons(decision: dict) -> set[tuple[str, str | None]]:
    return {(r["code"], r.get("field")) for r in decision["reasons"]}


def test_a_message_over_the_size_limit_is_a_dead_letter_saying_so():
    body = dict(REQUESTS[0], padding="x" * MAX_MESSAGE_BYTES)
    for handler, extra in (
        ("on_request", {"tables": Tables.empty()}),
        ("on_scan", {"tables": Tables.empty()}),
        ("on_risk", {}),
        ("on_enterprise", {}),
        ("on_key", {}),
    ):
        (out,) = getattr(PIPELINE, handler)(b"k", orjson.dumps(body), RecordMeta(TOPIC_OF[handler], 0, 0, 0), **extra)
        assert out.topic == TOPICS.deadletter
        assert orjson.loads(out.value)["error"].startswith("too_large:")


def test_a_request_just_under_the_size_limit_is_decided():
    body = dict(REQUESTS[0])
    body["padding"] = ""
    body["padding"] = "x" * (MAX_MESSAGE_BYTES - len(orjson.dumps(body)))
    assert len(orjson.dumps(body)) == MAX_MESSAGE_BYTES
    assert decide(body)["decision"] == "approved"


def test_too_many_cargo_lines_are_rejected_with_their_reason_code():
    body = dict(REQUESTS[0], cargo=REQUESTS[0]["cargo"] * (MAX_CARGO_LINES + 1))
    assert ("too_many_lines", "cargo") in reasons(decide(body))
    body = dict(REQUESTS[0], cargo=(REQUESTS[0]["cargo"] * MAX_CARGO_LINES)[:MAX_CARGO_LINES])
    assert decide(body)["decision"] == "approved"


def test_an_overlong_text_field_is_rejected_naming_it():
    body = dict(REQUESTS[0], driver=dict(REQUESTS[0]["driver"], name="张" * (MAX_TEXT + 1)))
    decision = decide(body)
    assert decision["decision"] == "rejected" and ("too_long", "driver.name") in reasons(decision)
    body = dict(REQUESTS[0], driver=dict(REQUESTS[0]["driver"], name="张" * MAX_TEXT))
    assert decide(body)["decision"] == "approved"


def test_an_overlong_shipment_id_or_scan_field_is_a_dead_letter_saying_so():
    body = dict(REQUESTS[0], shipment_id="S" * (MAX_ID + 1))
    (out,) = PIPELINE.on_request(b"k", orjson.dumps(body), RecordMeta(TOPICS.requests, 0, 0, 0), tables=Tables.empty())
    assert orjson.loads(out.value)["error"].startswith("too_long: shipment_id")
    for field, value in (("checkpoint_id", "C" * (MAX_ID + 1)), ("token", "t" * (MAX_TOKEN + 1))):
        (out,) = PIPELINE.on_scan(
            PASS_ID.encode(),
            orjson.dumps(dict(SCANS[0], **{field: value})),
            RecordMeta(TOPICS.scans, 0, 0, 0),
            tables=TABLES,
        )
        assert out.topic == TOPICS.deadletter and f"too_long: {field}" in orjson.loads(out.value)["error"]


def test_a_departure_more_than_a_year_from_submission_is_rejected_naming_it():
    body = dict(REQUESTS[0], departure_at="2021-02-26T10:00:00Z")
    assert ("out_of_window", "departure_at") in reasons(decide(body))
    body = dict(REQUESTS[0], departure_at="2020-03-25T10:00:00Z")
    assert ("out_of_window", "departure_at") not in reasons(decide(body))
