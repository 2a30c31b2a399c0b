"""The worker's message handling without a broker: outputs, determinism, schemas."""

from __future__ import annotations

import random
from datetime import UTC

import orjson
import pytest

from models.passes import kafka_partition
from models.records import canonical
from models.stored import load_answer, load_pass
from streams.dev.simulator import Scenario, scans_for
from streams.handlers import RecordMeta, Tables
from tests.support.factories import T, feed_reference, make_pipeline, run_requests, validator


def scan_on_its_partition(pipeline, scan: dict, tables) -> list:
    """A scan keyed by its pass number, as a checkpoint publishes it: applied where it lands."""
    pid = scan["pass_id"]
    return pipeline.on_scan(
        pid.encode(),
        orjson.dumps(scan),
        RecordMeta(pipeline.topics.scans, kafka_partition(pid.encode(), pipeline.partitions), 0, 0),
        tables=tables,
    )


@pytest.fixture(scope="module")
def scenario_messages():
    scenario = Scenario(seed=11)
    messages = []
    for n in range(120):
        if n % 40 == 39:
            messages.append((f"bad{n}".encode(), scenario.malformed(n)))
        else:
            body = scenario.request(n)
            messages.append((body["shipment_id"].encode(), orjson.dumps(body)))
    return scenario, messages


def test_each_request_yields_exactly_one_decision_or_dead_letter(scenario_messages):
    scenario, messages = scenario_messages
    pipeline = make_pipeline()
    feed_reference(pipeline, scenario)
    for outs in run_requests(pipeline, messages):
        finals = [o for o in outs if o.topic in (T.decisions, T.deadletter)]
        assert len(finals) == 1
        if finals[0].topic == T.decisions and orjson.loads(finals[0].value)["decision"] == "approved":
            # Decided and issued in one event: the decision, then the pass's `issued` status.
            assert [o.topic for o in outs] == [T.decisions, T.status]
            assert orjson.loads(outs[1].value)["status"] == "issued"


def test_outputs_match_the_published_schemas(scenario_messages):
    scenario, messages = scenario_messages
    pipeline = make_pipeline()
    feed_reference(pipeline, scenario)
    decision_schema, dead_schema = validator("PassDecision"), validator("DeadLetter")
    request_schema, scan_schema, status_schema = (
        validator("ShipmentRequest"),
        validator("CheckpointScan"),
        validator("PassStatus"),
    )
    tables = Tables.empty()
    statuses = []
    for (_key, value), outs in zip(messages, run_requests(pipeline, messages, tables)):
        for out in outs:
            body = orjson.loads(out.value)
            if out.topic == T.decisions:
                decision_schema.validate(body)
                if body["decision"] == "approved":
                    request_schema.validate(orjson.loads(value))
                for scan in scans_for(body, random.Random(0)) if body["pass"] else ():
                    scan_schema.validate(scan)
                    statuses += scan_on_its_partition(pipeline, scan, tables)
            elif out.topic == T.deadletter:
                dead_schema.validate(body)
            else:
                statuses.append(out)
    assert len(tables.passes) > 50 and len(statuses) > 200
    assert {o.topic for o in statuses} == {T.status}
    for out in statuses:
        status_schema.validate(orjson.loads(out.value))


def test_decisions_are_byte_identical_across_runs_and_interleavings(scenario_messages):
    scenario, messages = scenario_messages
    first, second = make_pipeline(), make_pipeline()
    feed_reference(first, scenario)
    feed_reference(second, scenario)
    a = {o.key: o.value for outs in run_requests(first, messages) for o in outs if o.topic == T.decisions}
    # Two partitions consumed in another interleaving: odd messages first, then even ones.
    reordered = messages[1::2] + messages[0::2]
    b = {o.key: o.value for outs in run_requests(second, reordered) for o in outs if o.topic == T.decisions}
    assert a == b and len(a) == len(messages) - 3


def test_reference_data_order_does_not_change_decisions(scenario_messages):
    scenario, messages = scenario_messages
    risk = [
        {"adcode": "43", "level": "high", "effective_at": "2020-02-25T08:30:00Z"},
        {"adcode": "43", "level": "low", "effective_at": "2020-02-25T09:00:00Z"},
    ]
    results = []
    for order in (risk, risk[::-1]):
        pipeline = make_pipeline()
        feed_reference(pipeline, scenario)
        for i, r in enumerate(order):
            pipeline.on_risk(None, orjson.dumps(r), RecordMeta(pipeline.topics.risk, 0, i, 0))
        results.append([o.value for outs in run_requests(pipeline, messages) for o in outs])
    assert results[0] == results[1]


def test_scan_answers_are_idempotent():
    pipeline = make_pipeline()
    scenario = Scenario(seed=5)
    body = scenario.request(1, kind="P0")
    body.update(origin={"adcode": "420111"}, destination={"adcode": "440106"})
    tables = Tables.empty()
    outs = run_requests(pipeline, [(b"k", orjson.dumps(body))], tables)[0]
    decision = orjson.loads(outs[0].value)
    scan = scans_for(decision, random.Random(0))[0]
    first = scan_on_its_partition(pipeline, scan, tables)
    state = tables.passes[scan["pass_id"]]
    again = scan_on_its_partition(pipeline, scan, tables)
    assert len(first) == len(again) == 1 and first[0].value == again[0].value
    assert orjson.loads(first[0].value)["status"] == "at_checkpoint"
    assert tables.passes[scan["pass_id"]] == state  # the repeat changed nothing
    [(answer_key, answer)] = tables.answers.items()  # answers are kept beside the state, not in it
    assert answer_key == f"{scan['pass_id']}/{scan['scan_id']}" and load_answer(answer).body == first[0].value


def test_a_scan_landing_on_another_partition_is_re_keyed_to_its_pass_and_applied_there():
    pipeline = make_pipeline()
    body = Scenario(seed=5).request(2, kind="P0")
    body.update(origin={"adcode": "420111"}, destination={"adcode": "440106"})
    tables = Tables.empty()
    decision = orjson.loads(run_requests(pipeline, [(b"k2", orjson.dumps(body))], tables)[0][0].value)
    scan = scans_for(decision, random.Random(0))[0]
    pid = scan["pass_id"]
    home = kafka_partition(pid.encode(), pipeline.partitions)
    elsewhere = (home + 1) % pipeline.partitions
    [forwarded] = pipeline.on_scan(
        b"some-plate", orjson.dumps(scan), RecordMeta(pipeline.topics.scans, elsewhere, 0, 0), tables=tables
    )
    assert (forwarded.topic, forwarded.key) == (T.pass_events, pid.encode()) and not tables.answers
    assert kafka_partition(forwarded.key, pipeline.partitions) == home
    [status] = pipeline.on_pass_event(forwarded.value, partition=home, tables=tables)
    assert status.topic == T.status and orjson.loads(status.value)["status"] == "at_checkpoint"
    assert scan_on_its_partition(pipeline, scan, tables)[0].value == status.value


def test_a_pass_stored_by_a_worker_before_0_4_keeps_its_answers():
    """The state of an older worker held the scan answers inside it: a redelivered scan of that
    pass gets its first answer again, and the answers move out of the state on its next write."""
    pipeline = make_pipeline()
    body = Scenario(seed=5).request(3, kind="P0")
    body.update(origin={"adcode": "420111"}, destination={"adcode": "440106"})
    tables = Tables.empty()
    decision = orjson.loads(run_requests(pipeline, [(b"k3", orjson.dumps(body))], tables)[0][0].value)
    first, second = scans_for(decision, random.Random(0))[:2]
    pid = first["pass_id"]
    [answer] = scan_on_its_partition(pipeline, first, tables)
    old = orjson.loads(load_pass(tables.passes[pid]).to_json())  # as a worker before 0.4 kept it
    old["scans"] = {first["scan_id"]: answer.value.decode()}
    old_tables = Tables({}, {}, {pid: orjson.dumps(old)}, {})
    assert scan_on_its_partition(pipeline, first, old_tables)[0].value == answer.value
    [nxt] = scan_on_its_partition(pipeline, second, old_tables)
    assert nxt.value == scan_on_its_partition(pipeline, second, tables)[0].value
    assert b"scans" not in old_tables.passes[pid] and len(old_tables.answers) == 2


def test_a_risk_change_visits_only_the_passes_on_the_regions_it_touches():
    pipeline = make_pipeline()
    scenario = Scenario(seed=6)
    tables = Tables.empty()
    messages = []
    for n, (o, d) in enumerate([("420111", "440106"), ("110105", "310101"), ("510104", "500103")] * 5):
        body = scenario.request(n, kind="P0")
        body.update(origin={"adcode": o}, destination={"adcode": d})
        messages.append((body["shipment_id"].encode(), orjson.dumps(body)))
    run_requests(pipeline, messages, tables)
    visited = []
    original = pipeline.tracker.risk_changed
    pipeline.tracker.risk_changed = lambda s, r: (visited.append(s.pass_id), original(s, r))[1]
    change = canonical({"kind": "risk", "adcode": "4201", "level": "medium", "effective_at": "2020-02-25T08:00:00Z"})
    for p in range(pipeline.partitions):
        pipeline.on_pass_event(change, partition=p, tables=tables)
    wuhan = {pid for pid, raw in tables.passes.items() if load_pass(raw).origin == "420111"}
    assert len(wuhan) == 5 and set(visited) == wuhan and len(visited) == 5


# --- reference entries on the wire --------------------------------------------------------------


def test_an_entry_without_effective_at_takes_effect_from_its_record_time():
    from datetime import datetime

    pipeline = make_pipeline()
    record_ms = int(datetime(2020, 2, 25, 9, 0, tzinfo=UTC).timestamp() * 1000)
    outs = pipeline.on_risk(
        b"4201", orjson.dumps({"adcode": "4201", "level": "high"}), RecordMeta(pipeline.topics.risk, 0, 0, record_ms)
    )
    assert [o.topic for o in outs] == [T.pass_events] * 4
    assert orjson.loads(outs[0].value)["effective_at"] == "2020-02-25T09:00:00Z"
    book = pipeline.decider.risk
    assert book.level_at("420111", datetime(2020, 2, 25, 8, 59, tzinfo=UTC)) == "low"
    assert book.level_at("420111", datetime(2020, 2, 25, 9, 0, tzinfo=UTC)) == "high"

    code = Scenario(seed=1).key_enterprises[0][0]
    added = pipeline.on_enterprise(
        code.encode(),
        orjson.dumps({"credit_code": code, "action": "add"}),
        RecordMeta(pipeline.topics.enterprises, 0, 1, record_ms),
    )
    # Additions are broadcast too (since 0.6): every worker's books learn them, and a decision's
    # `known` names a prefix of the topic on every partition.
    assert [o.topic for o in added] == [T.pass_events] * 4
    books = pipeline.decider.enterprises
    assert not books.is_listed(code, datetime(2020, 2, 25, 8, 59, tzinfo=UTC))
    assert books.is_listed(code, datetime(2020, 2, 25, 9, 0, tzinfo=UTC))


@pytest.mark.parametrize("adcode", ["999999", "99", "4299", "420199"])
def test_a_risk_entry_for_an_adcode_naming_no_region_is_dead_lettered(adcode):
    pipeline = make_pipeline()
    value = orjson.dumps({"adcode": adcode, "level": "high", "effective_at": "2020-02-25T00:00:00Z"})
    outs = pipeline.on_risk(adcode.encode(), value, RecordMeta(pipeline.topics.risk, 1, 7, 0))
    assert [o.topic for o in outs] == [T.deadletter]
    body = orjson.loads(outs[0].value)
    assert body["error"] == f"adcode {adcode} names no province, prefecture or county of the gazetteer"
    assert body["value"] == value.decode() and (body["partition"], body["offset"]) == (1, 7)
    assert len(pipeline.decider.risk) == 0  # nothing applied


@pytest.mark.parametrize("adcode", ["42", "4201", "420000", "420100", "420111", "1101", "441900"])
def test_a_risk_entry_for_a_known_region_is_applied(adcode):
    pipeline = make_pipeline()
    value = orjson.dumps({"adcode": adcode, "level": "high", "effective_at": "2020-02-25T00:00:00Z"})
    outs = pipeline.on_risk(adcode.encode(), value, RecordMeta(pipeline.topics.risk, 0, 0, 0))
    assert {o.topic for o in outs} == {T.pass_events} and len(pipeline.decider.risk) == 1
