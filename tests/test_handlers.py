"""The worker's message handling without a broker: outputs, determinism, schemas."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator, FormatChecker

from models.decide import Decider
from models.passes import Signer, kafka_partition
from models.policy import load_catalog
from models.reference import EnterpriseBook, RiskBook
from models.tracking import Tracker
from routing import Gazetteer, RegionGraph, RoutePlanner
from streams.handlers import Pipeline, Topics
from streams.simulator import Scenario, scans_for

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
T = Topics.with_prefix("gc.")


def validator(name):
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()),
                                format_checker=FormatChecker())


def make_pipeline() -> Pipeline:
    graph = RegionGraph.default()
    decider = Decider(catalog=load_catalog(), gazetteer=Gazetteer.default(), graph=graph,
                      planner=RoutePlanner(graph), risk=RiskBook(), enterprises=EnterpriseBook(),
                      signer=Signer(KEY, "test"))
    return Pipeline(decider, Tracker(decider, KEY.public_key()), T, partitions=4)


def feed_reference(pipeline: Pipeline, scenario: Scenario) -> None:
    for i, entry in enumerate(scenario.enterprise_entries()):
        pipeline.on_enterprise(None, orjson.dumps(entry), partition=0, offset=i, timestamp_ms=0)


def run_requests(pipeline, messages, decided=None, serials=None):
    """The requests through the handlers, each on the partition its key is produced to."""
    decided = {} if decided is None else decided
    serials = {} if serials is None else serials
    outs = []
    for offset, (key, value) in enumerate(messages):
        partition = kafka_partition(key, pipeline.partitions) if key else 0
        outs.append(pipeline.on_request(key, value, partition=partition, offset=offset, timestamp_ms=1582617600000,
                                        decided=decided, serials=serials))
    return outs


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
            assert [o.topic for o in outs] == [T.pass_events, T.decisions]  # tracker hears first


def test_outputs_match_the_published_schemas(scenario_messages):
    scenario, messages = scenario_messages
    pipeline = make_pipeline()
    feed_reference(pipeline, scenario)
    decision_schema, dead_schema = validator("PassDecision"), validator("DeadLetter")
    request_schema, scan_schema, status_schema = (validator("ShipmentRequest"), validator("CheckpointScan"),
                                                  validator("PassStatus"))
    passes: dict = {}
    statuses = []
    for (key, value), outs in zip(messages, run_requests(pipeline, messages)):
        for out in outs:
            body = orjson.loads(out.value)
            if out.topic == T.decisions:
                decision_schema.validate(body)
                if body["decision"] == "approved":
                    request_schema.validate(orjson.loads(value))
                for scan in scans_for(body, random.Random(0)) if body["pass"] else ():
                    scan_schema.validate(scan)
                    forwarded = pipeline.on_scan(None, orjson.dumps(scan), partition=0, offset=0, timestamp_ms=0)
                    statuses += pipeline.on_pass_event(forwarded[0].value, passes=passes)
            elif out.topic == T.deadletter:
                dead_schema.validate(body)
            else:
                statuses += pipeline.on_pass_event(out.value, passes=passes)
    assert len(passes) > 50 and len(statuses) > 200
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
    risk = [{"adcode": "43", "level": "high", "effective_at": "2020-02-25T08:30:00Z"},
            {"adcode": "43", "level": "low", "effective_at": "2020-02-25T09:00:00Z"}]
    results = []
    for order in (risk, risk[::-1]):
        pipeline = make_pipeline()
        feed_reference(pipeline, scenario)
        for i, r in enumerate(order):
            pipeline.on_risk(None, orjson.dumps(r), partition=0, offset=i, timestamp_ms=0)
        results.append([o.value for outs in run_requests(pipeline, messages) for o in outs])
    assert results[0] == results[1]


def test_scan_answers_are_idempotent():
    pipeline = make_pipeline()
    scenario = Scenario(seed=5)
    body = scenario.request(1, kind="P0")
    body.update(origin={"adcode": "420111"}, destination={"adcode": "440106"})
    outs = run_requests(pipeline, [(b"k", orjson.dumps(body))])[0]
    passes: dict = {}
    pipeline.on_pass_event(outs[0].value, passes=passes)
    decision = orjson.loads(outs[1].value)
    scan = scans_for(decision, random.Random(0))[0]
    forwarded = pipeline.on_scan(None, orjson.dumps(scan), partition=0, offset=0, timestamp_ms=0)
    first = pipeline.on_pass_event(forwarded[0].value, passes=passes)
    again = pipeline.on_pass_event(forwarded[0].value, passes=passes)
    assert len(first) == len(again) == 1 and first[0].value == again[0].value
    assert orjson.loads(first[0].value)["status"] == "at_checkpoint"
