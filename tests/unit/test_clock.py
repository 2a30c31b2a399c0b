"""The channel's clock, without a broker: ticks expire passes and bound the working state."""

from __future__ import annotations

import random
from datetime import timedelta

import orjson
import pytest

from models.passes import kafka_partition
from models.records import parse_time
from models.stored import load_pass
from streams.dev.simulator import Scenario, scans_for
from streams.handlers import RecordMeta, Tables
from tests.support.factories import T, make_pipeline, validator

RETENTION = timedelta(days=7)


def request(n: int, **fields) -> dict:
    body = Scenario(seed=5).request(n, kind="P0")
    body.update(origin={"adcode": "420111"}, destination={"adcode": "440106"}, **fields)
    return body


def decide(pipeline, tables, body: dict) -> list:
    key = body["shipment_id"].encode()
    return pipeline.on_request(
        key,
        orjson.dumps(body),
        RecordMeta(pipeline.topics.requests, kafka_partition(key, pipeline.partitions), 0, 0),
        tables=tables,
    )


def issue(pipeline, tables, n: int) -> dict:
    """A P0 pass from Wuhan to Guangzhou: its decision's `pass`."""
    outs = decide(pipeline, tables, request(n))
    the_pass = orjson.loads(outs[0].value)["pass"]
    assert the_pass is not None, outs[0].value
    return the_pass


def tick(pipeline, tables, at, partition: int) -> list:
    """The tick the worker's clock sends, handled on its partition."""
    out = pipeline.clock_tick(parse_time(at) if isinstance(at, str) else at, partition)
    assert (out.topic, out.partition) == (T.pass_events, partition)
    return pipeline.on_pass_event(out.value, partition=partition, tables=tables)


def home(pipeline, pass_id: str) -> int:
    return kafka_partition(pass_id.encode(), pipeline.partitions)


def statuses(outs) -> list[dict]:
    return [orjson.loads(o.value) for o in outs if o.topic == T.status]


def test_a_tick_expires_the_passes_whose_validity_ended_and_no_other():
    pipeline, tables = make_pipeline(), Tables.empty()
    the_pass = issue(pipeline, tables, 1)
    pid, until = the_pass["pass_id"], parse_time(the_pass["valid_until"])
    p = home(pipeline, pid)
    assert tick(pipeline, tables, until, p) == []  # valid to the end of its validity
    assert tick(pipeline, tables, until + timedelta(seconds=1), (p + 1) % 4) == []  # another partition's clock
    [expired] = statuses(tick(pipeline, tables, until + timedelta(seconds=1), p))
    validator("PassStatus").validate(expired)
    assert (expired["pass_id"], expired["status"], expired["reason"]) == (pid, "expired", "validity_ended")
    assert expired["at"] == the_pass["valid_until"]  # when it ended, whichever tick found it
    assert expired["cause"] == f"clock:{the_pass['valid_until']}"
    assert load_pass(tables.passes[pid]).status == "expired"
    assert tick(pipeline, tables, until + timedelta(hours=1), p) == []  # once


def test_a_tick_behind_the_clock_changes_nothing():
    pipeline, tables = make_pipeline(), Tables.empty()
    the_pass = issue(pipeline, tables, 2)
    p, until = home(pipeline, the_pass["pass_id"]), parse_time(the_pass["valid_until"])
    tick(pipeline, tables, until - timedelta(hours=1), p)
    held = dict(tables.clocks)
    assert tick(pipeline, tables, until - timedelta(hours=2), p) == []
    assert tables.clocks == held
    assert load_pass(tables.passes[the_pass["pass_id"]]).status == "issued"


def test_a_delivered_pass_is_not_expired_and_leaves_after_the_retention_with_its_decision_and_answers():
    pipeline, tables = make_pipeline(), Tables.empty()
    tick(pipeline, tables, "2020-01-01T00:00:00Z", 0)  # the clock runs: the lifetimes are kept as they are written
    decision = orjson.loads(decide(pipeline, tables, request(3))[0].value)
    pid, sid = decision["pass"]["pass_id"], decision["shipment_id"]
    p, until = home(pipeline, pid), parse_time(decision["pass"]["valid_until"])
    tick(pipeline, tables, "2020-01-01T00:00:00Z", p)
    answers = []
    for scan in scans_for(decision, random.Random(1)):
        answers += statuses(
            pipeline.on_scan(
                pid.encode(), orjson.dumps(scan), RecordMeta(pipeline.topics.scans, p, 0, 0), tables=tables
            )
        )
    assert answers[-1]["status"] == "delivered" and len(tables.answers) == len(answers) > 1
    assert tick(pipeline, tables, until + timedelta(hours=1), p) == []  # nothing to expire
    assert tick(pipeline, tables, until + RETENTION, p) == []
    assert pid in tables.passes and sid in tables.decided  # not yet: the retention is not over
    tick(pipeline, tables, until + RETENTION + timedelta(seconds=1), p)
    assert pid not in tables.passes and sid not in tables.decided and not tables.answers
    assert pid not in tables.serials  # its number is free again


def test_a_rejected_decision_leaves_the_retention_after_it_was_made():
    pipeline, tables = make_pipeline(), Tables.empty()
    body = request(4, driver={"name": "张三", "id_number": "123", "phone": "13800000000"})
    sid = body["shipment_id"]
    p = kafka_partition(sid.encode(), pipeline.partitions)
    outs = decide(pipeline, tables, body)
    assert orjson.loads(outs[0].value)["decision"] == "rejected"
    decided_at = parse_time(orjson.loads(outs[0].value)["decided_at"])
    tick(pipeline, tables, decided_at + RETENTION, p)
    assert sid in tables.decided
    tick(pipeline, tables, decided_at + RETENTION + timedelta(seconds=1), p)
    assert sid not in tables.decided


def test_a_request_older_than_the_retention_is_dead_lettered_naming_where_its_decision_is():
    pipeline, tables = make_pipeline(), Tables.empty()
    body = request(5)
    first = decide(pipeline, tables, body)
    the_pass = orjson.loads(first[0].value)["pass"]
    p, until = home(pipeline, the_pass["pass_id"]), parse_time(the_pass["valid_until"])
    assert decide(pipeline, tables, body)[0].value == first[0].value  # a repeat: the first decision again
    tick(pipeline, tables, until + RETENTION + timedelta(seconds=1), p)
    assert the_pass["pass_id"] not in tables.passes
    [dead] = decide(pipeline, tables, body)  # its pass and decision have left: not decided again
    assert dead.topic == T.deadletter
    error = orjson.loads(dead.value)["error"]
    assert body["shipment_id"] in error and T.decisions in error and "retention (7 days)" in error
    assert the_pass["pass_id"] not in tables.passes and body["shipment_id"] not in tables.decided
    # A request of that age on a partition whose clock has not passed it is decided as before.
    assert decide(pipeline, Tables.empty(), body)[0].value == first[0].value


@pytest.mark.parametrize("forget", [False, True])
def test_lifetimes_built_from_the_tables_give_what_the_live_ones_give(forget):
    """A worker that (re)gets a partition builds its lifetimes from the tables at the first tick:
    the same expiries and departures as a worker that kept them from the first write."""

    def run(clock_first: bool):
        pipeline, tables = make_pipeline(), Tables.empty()
        if clock_first:
            for p in range(4):
                tick(pipeline, tables, "2020-01-01T00:00:00Z", p)
        passes = [issue(pipeline, tables, n) for n in range(10, 16)]
        for n, the_pass in enumerate(passes[:3]):
            decision = {"shipment_id": "", "pass": the_pass}
            scan = scans_for(decision, random.Random(n))[0]
            pipeline.on_scan(
                b"",
                orjson.dumps(scan),
                RecordMeta(pipeline.topics.scans, home(pipeline, the_pass["pass_id"]), 0, 0),
                tables=tables,
            )
        if forget:
            tables.forget(range(4))
        ends = sorted(parse_time(p["valid_until"]) for p in passes)
        outs = []
        for at in (ends[2] + timedelta(seconds=1), ends[-1] + RETENTION + timedelta(seconds=1)):
            for p in range(4):
                outs += [o.value for o in tick(pipeline, tables, at, p)]
        return outs, dict(tables.passes), dict(tables.answers), dict(tables.decided)

    kept, rebuilt = run(True), run(False)
    assert kept == rebuilt
    assert len(kept[0]) == 6 and all(b'"expired"' in v for v in kept[0])
    assert kept[1] == kept[2] == kept[3] == {}
