"""The worker's table values, typed (models.stored): MessagePack Structs read by field name, and the
JSON a worker before 0.5 stored, read alike (a worker upgraded over an older changelog)."""

from __future__ import annotations

import random
from datetime import timedelta

import orjson

from models.passes import kafka_partition
from models.records import canonical, parse_time
from models.stored import (
    Answer,
    Decided,
    dump,
    load_answer,
    load_applied,
    load_decided,
    load_decided_head,
    load_holder,
    load_pass,
)
from streams.dev.simulator import Scenario, scans_for
from streams.handlers import RecordMeta, Tables
from tests.support.factories import T, make_pipeline


def _requests(n: int) -> list[dict]:
    scenario = Scenario(seed=11)
    return [scenario.request(i, kind="P0" if i % 3 else "P2") for i in range(n)]


def _decide(pipeline, tables, body: dict, offset: int) -> list:
    key = body["shipment_id"].encode()
    meta = RecordMeta(T.requests, kafka_partition(key, pipeline.partitions), offset, 1582617600000)
    return pipeline.on_request(key, orjson.dumps(body), meta, tables=tables)


def _scan(pipeline, tables, scan: dict) -> list:
    key = scan["pass_id"].encode()
    meta = RecordMeta(T.scans, kafka_partition(key, pipeline.partitions), 0, 0)
    return pipeline.on_scan(key, orjson.dumps(scan), meta, tables=tables)


def _as_before_0_5(tables: Tables) -> Tables:
    """The same tables as a worker before 0.5 kept them: JSON, the decisions and answers as published."""
    applied = {
        p: canonical({n: {str(k): o for k, o in v.items()} for n, v in load_applied(raw).items()})
        for p, raw in tables.applied.items()
    }
    return Tables(
        decided={sid: load_decided(raw).body for sid, raw in tables.decided.items()},
        serials=dict(tables.serials),
        passes={pid: load_pass(raw).to_json() for pid, raw in tables.passes.items()},
        answers={key: load_answer(raw).body for key, raw in tables.answers.items()},
        clocks=dict(tables.clocks),
        applied=applied,
    )


def test_each_value_is_stored_as_messagepack_and_read_by_its_fields():
    pipeline, tables = make_pipeline(), Tables.empty()
    outs = [_decide(pipeline, tables, body, i) for i, body in enumerate(_requests(12))]
    approved = [orjson.loads(o[0].value) for o in outs if orjson.loads(o[0].value)["pass"]]
    refused = [orjson.loads(o[0].value) for o in outs if not orjson.loads(o[0].value)["pass"]]
    assert approved and refused
    for raw in [*tables.passes.values(), *tables.decided.values()]:
        assert raw[:1] != b"{"  # not JSON: MessagePack arrays
    for decision, out in ((orjson.loads(o[0].value), o[0]) for o in outs):
        filed = load_decided(tables.decided[decision["shipment_id"]])
        assert filed.body == out.value and filed.decided_at == decision["decided_at"]
        assert filed.pass_id == (decision["pass"] or {}).get("pass_id")
        assert load_decided_head(tables.decided[decision["shipment_id"]]) == filed.head
    for decision in approved:
        state = load_pass(tables.passes[decision["pass"]["pass_id"]])
        assert (state.shipment_id, state.status) == (decision["shipment_id"], "issued")
        assert load_holder(tables.passes[state.pass_id]) == decision["shipment_id"]
        assert load_decided(tables.decided[decision["shipment_id"]]).kid == state.kid is not None
    answer = Answer("2020-02-25T08:00:00Z", b'{"x":1}')
    assert load_answer(dump(answer)) == answer
    assert load_decided(dump(Decided("t", None, None, b"{}"))).pass_id is None


def test_a_worker_upgraded_over_json_tables_answers_as_on_its_own():
    """Tables an older worker wrote as JSON: a repeated request gets its decision's bytes, a
    repeated scan its answer's, and new scans, a risk change and clock ticks give the same bytes
    as on the same state stored as MessagePack."""
    pipeline = make_pipeline()
    typed = Tables.empty()
    outs = [_decide(pipeline, typed, body, i) for i, body in enumerate(_requests(12))]
    decisions = [orjson.loads(o[0].value) for o in outs]
    scans = [s for d in decisions if d["pass"] for s in scans_for(d, random.Random(1))]
    first = [_scan(pipeline, typed, s) for s in scans[::2]]
    old = _as_before_0_5(typed)
    assert all(raw[:1] == b"{" for t in (old.passes, old.decided, old.answers, old.applied) for raw in t.values())

    # Repeats: the bytes published the first time, from either form.
    for i, body in enumerate(_requests(12)):
        assert [o.value for o in _decide(pipeline, old, body, i)] == [outs[i][0].value]
    for scan, answered in zip(scans[::2], first):
        assert [o.value for o in _scan(pipeline, old, scan)] == [o.value for o in answered]
        assert [o.headers for o in _scan(pipeline, old, scan)] == [o.headers for o in answered]

    def then(tables: Tables) -> list:
        got = [o for s in scans[1::2] for o in _scan(pipeline, tables, s)]
        change = canonical({"kind": "risk", "adcode": "4201", "level": "high", "effective_at": "2020-02-25T09:00:00Z"})
        for p in range(pipeline.partitions):
            got += pipeline.on_pass_event(change, partition=p, tables=tables)
        last = max(parse_time(d["pass"]["valid_until"]) for d in decisions if d["pass"])
        for at in (last + timedelta(seconds=1), last + pipeline.retention + timedelta(days=1)):
            for p in range(pipeline.partitions):
                tick = pipeline.clock_tick(at, p)
                got += pipeline.on_pass_event(tick.value, partition=p, tables=tables)
        return [(o.topic, o.key, o.value, o.headers) for o in got]

    pipeline.decider.risk = type(pipeline.decider.risk)()
    on_typed = then(typed)
    pipeline.decider.risk = type(pipeline.decider.risk)()
    on_old = then(old)
    assert on_old == on_typed and any(o[0] == T.status for o in on_typed)
    assert not old.passes and not old.decided and not old.answers  # all left after the retention, as from typed
    assert not typed.passes and not typed.decided and not typed.answers
