"""Audit replay without a broker: `streams.audit`'s merge and comparison driven with in-memory records
(through the broker: tests/integration/test_replay_live.py)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from models.passes import kafka_partition
from models.records import format_time
from streams.audit import Record, Replayer, compare, parse_position
from streams.dev.simulator import Scenario, scans_for
from streams.handlers import Pipeline, RecordMeta, Tables
from tests.support.factories import T, make_pipeline

START = datetime(2020, 3, 1, 8, 0, tzinfo=UTC)
WUHAN, GUANGZHOU, CHANGSHA = {"adcode": "420111"}, {"adcode": "440106"}, {"adcode": "430104"}


class FakeLog:
    """Topics in memory: records get partitions by key, offsets and increasing timestamps."""

    def __init__(self, partitions: int = 4) -> None:
        self.partitions = partitions
        self.records: list[Record] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.clock = 1_700_000_000_000

    def append(self, topic: str, key: bytes | None, value: bytes, headers=(), partition: int | None = None) -> Record:
        if partition is None:
            partition = kafka_partition(key or b"", self.partitions)
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        self.clock += 1
        record = Record(topic, partition, offset, self.clock, key, value, tuple(headers))
        self.records.append(record)
        return record

    def topic(self, name: str) -> list[Record]:
        return [r for r in self.records if r.topic == name]


def run_worker(pipeline: Pipeline, log: FakeLog, inputs: list[tuple[str, bytes | None, bytes]]) -> None:
    """What the live agents do, in arrival order, with the worker's tables."""
    tables = Tables.empty()
    handlers = {T.risk: pipeline.on_risk, T.enterprises: pipeline.on_enterprise}

    def route(out) -> None:
        if out.topic == T.pass_events:
            p = out.partition if out.partition is not None else kafka_partition(out.key, log.partitions)
            for more in pipeline.on_pass_event(out.value, partition=p, tables=tables):
                route(more)
        else:
            log.append(out.topic, out.key, out.value, out.headers)

    for topic, key, value in inputs:
        r = log.append(topic, key, value)
        meta = RecordMeta(r.topic, r.partition, r.offset, r.timestamp_ms)
        outs = (
            pipeline.on_request(key, value, meta, tables=tables)
            if topic == T.requests
            else pipeline.on_scan(key, value, meta, tables=tables)
            if topic == T.scans
            else handlers[topic](key, value, meta)
        )
        for out in outs:
            route(out)


def scenario_inputs(seed: int = 31) -> tuple[list[tuple[str, bytes | None, bytes]], list[dict]]:
    """Enterprises, requests, a risk change between two waves, and every approved truck's scans."""
    scenario = Scenario(seed=seed, start=START)
    pipeline = make_pipeline()
    inputs = [(T.enterprises, e["credit_code"].encode(), orjson.dumps(e)) for e in scenario.enterprise_entries()]
    for _topic, key, value in inputs:
        pipeline.on_enterprise(key, value, RecordMeta(pipeline.topics.enterprises, 0, 0, 0))
    bodies = [scenario.request(n) for n in range(60)]
    for n, kind in ((60, "P0"), (61, "P3"), (62, "P2")):
        body = scenario.request(n, kind=kind)
        body.update(origin=WUHAN, destination=GUANGZHOU if kind == "P0" else CHANGSHA)
        bodies.append(body)
    later = []
    for n in range(63, 70):
        body = scenario.request(n, kind="P2" if n % 2 else "P0")
        at = START + timedelta(hours=5, minutes=n)
        body.update(
            origin=WUHAN,
            destination=CHANGSHA,
            submitted_at=format_time(at),
            departure_at=format_time(at + timedelta(hours=2)),
        )
        later.append(body)
    risk = {"adcode": "430000", "level": "high", "effective_at": format_time(START + timedelta(hours=4))}
    decisions, tables = [], Tables.empty()
    for body in bodies + later:
        if body is later[0]:
            inputs.append((T.risk, b"430000", orjson.dumps(risk)))
            pipeline.on_risk(b"430000", orjson.dumps(risk), RecordMeta(pipeline.topics.risk, 0, 0, 0))
        value = orjson.dumps(body)
        inputs.append((T.requests, body["shipment_id"].encode(), value))
        key = body["shipment_id"].encode()
        outs = pipeline.on_request(
            key,
            value,
            RecordMeta(pipeline.topics.requests, kafka_partition(key, 4), 0, 0),
            tables=Tables({}, tables.serials, {}, {}),
        )
        decisions.append(orjson.loads(outs[0].value))
    inputs.append((T.requests, b"bad-1", b"{not json"))
    inputs.append((T.requests, bodies[0]["shipment_id"].encode(), orjson.dumps(bodies[0])))  # a repeat
    rng = random.Random(seed)
    for d in decisions:
        if d["pass"]:
            for scan in scans_for(d, rng, mismatch=rng.random() < 0.1):
                inputs.append((T.scans, d["pass"]["pass_id"].encode(), orjson.dumps(scan)))
    return inputs, decisions


def event_order(inputs):
    """Arrival in event-time order, as a real system sees it (scans after their pass is issued)."""

    def at(item):
        topic, _, value = item
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            return ""
        return obj.get({T.requests: "submitted_at", T.scans: "scanned_at"}.get(topic, "effective_at"), "")

    return sorted(inputs, key=at)


@pytest.fixture(scope="module")
def live_log():
    inputs, decisions = scenario_inputs()
    log = FakeLog()
    run_worker(make_pipeline(), log, event_order(inputs))
    return log, decisions


def replay_log(log: FakeLog, inputs: list[Record] | None = None) -> Replayer:
    rep = Replayer(make_pipeline())
    rep.load_reference(log.topic(T.risk) + log.topic(T.enterprises))
    rep.replay(
        inputs
        if inputs is not None
        else [r for r in log.records if r.topic in (T.requests, T.scans, T.risk, T.enterprises)],
        recorded=log.topic(T.decisions),
    )
    return rep


def test_replay_reproduces_a_clean_log_without_a_broker(live_log):
    log, decisions = live_log
    rep = replay_log(log)
    c = compare(rep, log.topic(T.decisions), log.topic(T.status))
    assert c.mismatches == [], [m.to_dict() for m in c.mismatches][:3]
    assert c.decisions_matched == len(rep.decisions) == len(decisions)
    assert rep.repeats == 1 and rep.dead_letters == 1
    assert c.passes_compared > 20 and c.statuses_matched > 100
    statuses = [orjson.loads(v)["status"] for events in rep.statuses.values() for v in events.values()]
    assert {"issued", "at_checkpoint", "in_transit", "delivered", "rerouted", "suspended"} <= set(statuses)
    rejected_after = [
        d for d in decisions if d["decision"] == "rejected" and d["reasons"][0]["code"] == "high_risk_region"
    ]
    assert rejected_after  # the P2 requests into Changsha after the risk change


def test_replays_are_byte_identical_in_any_partition_interleaving(live_log):
    log, _ = live_log
    inputs = [r for r in log.records if r.topic in (T.requests, T.scans, T.risk, T.enterprises)]
    first, again = replay_log(log, inputs), replay_log(log, inputs)
    # Consumed another way: partitions drained one after another, in reverse, then shuffled.
    by_partition = sorted(inputs, key=lambda r: (-r.partition, r.topic, r.offset))
    shuffled = random.Random(3).sample(inputs, len(inputs))
    others = [replay_log(log, by_partition), replay_log(log, shuffled)]
    for other in [again, *others]:
        assert list(other.decisions.items()) == list(first.decisions.items())
        assert other.statuses == first.statuses


def test_tampered_orphan_and_altered_records_are_mismatches(live_log):
    log, decisions = live_log
    rep = replay_log(log)
    recorded = list(log.topic(T.decisions))
    rejected = next(d for d in decisions if d["decision"] == "rejected")
    approved = next(d for d in decisions if d["decision"] == "approved")
    forged_pass = {
        **approved["pass"],
        "pass_id": "990000000001",
        "token": approved["pass"]["token"].split(".")[0] + ".AAAA",
    }
    forged = {**rejected, "decision": "approved", "priority": "P0", "reasons": [], "pass": forged_pass}
    recorded.append(Record(T.decisions, 0, 10**6, 1, rejected["shipment_id"].encode(), orjson.dumps(forged)))
    orphan = {**approved, "shipment_id": "SHP-NOBODY-1"}
    recorded.append(Record(T.decisions, 0, 10**6 + 1, 1, b"SHP-NOBODY-1", orjson.dumps(orphan)))
    statuses = list(log.topic(T.status))
    i = next(i for i, r in enumerate(statuses) if orjson.loads(r.value)["status"] == "in_transit")
    altered = {**orjson.loads(statuses[i].value), "dwell_seconds": 60.0, "dwell_exceeded": False}
    statuses[i] = Record(
        T.status,
        statuses[i].partition,
        statuses[i].offset,
        statuses[i].timestamp_ms,
        statuses[i].key,
        orjson.dumps(altered),
        statuses[i].headers,
    )

    c = compare(rep, recorded, statuses)
    kinds = sorted((m.kind, m.shipment_id) for m in c.mismatches)
    assert kinds == sorted(
        [
            ("decision_differs", rejected["shipment_id"]),
            ("orphan_decision", "SHP-NOBODY-1"),
            ("status_differs", altered["shipment_id"]),
        ]
    )
    tampered = next(m for m in c.mismatches if m.kind == "decision_differs")
    assert tampered.recorded["decision"] == "approved" and tampered.replayed["decision"] == "rejected"
    assert tampered.replayed_reasons == [r["code"] for r in rejected["reasons"]] and tampered.recorded_reasons == []
    assert "does not verify" in tampered.explanation and "decision" in tampered.differing_fields
    status = next(m for m in c.mismatches if m.kind == "status_differs")
    assert status.differing_fields == ["dwell_seconds"] or "dwell_seconds" in status.differing_fields


def test_a_late_reference_update_is_reproduced_from_what_the_decision_knew_and_followed():
    """A risk change effective before a request but read after its decision: the live decision used
    what it knew, and says so (`known`); the change then reached the pass's partition and suspended
    the pass. The replay decides as the decision knew, then applies the change it did not know to
    that pass: both reproduce byte for byte."""
    scenario = Scenario(seed=41, start=START)
    body = scenario.request(1, kind="P2")
    body.update(origin=WUHAN, destination=CHANGSHA)
    risk = {"adcode": "43", "level": "high", "effective_at": format_time(START - timedelta(hours=1))}
    log = FakeLog()
    run_worker(
        make_pipeline(),
        log,
        [(T.enterprises, e["credit_code"].encode(), orjson.dumps(e)) for e in scenario.enterprise_entries()]
        + [(T.requests, body["shipment_id"].encode(), orjson.dumps(body)), (T.risk, b"43", orjson.dumps(risk))],
    )
    live = orjson.loads(log.topic(T.decisions)[-1].value)
    assert live["decision"] == "approved" and live["known"]["risk"] == {}
    statuses = [orjson.loads(r.value) for r in log.topic(T.status)]
    assert [(s["status"], s["reason"]) for s in statuses] == [("issued", None), ("suspended", "high_risk_region")]
    rep = replay_log(log)
    assert rep.decisions[body["shipment_id"]] == log.topic(T.decisions)[-1].value
    c = compare(rep, log.topic(T.decisions), log.topic(T.status))
    assert c.mismatches == [] and c.statuses_matched == 2
    # The suspension is the change's: a replay that does not walk it records one status fewer.
    alone = Replayer(make_pipeline())
    alone.load_reference(log.topic(T.risk) + log.topic(T.enterprises))
    alone.replay([r for r in log.records if r.topic == T.requests], recorded=log.topic(T.decisions))
    assert [m.kind for m in compare(alone, log.topic(T.decisions), log.topic(T.status)).mismatches] == [
        "status_unexpected"
    ]


def test_positions_parse():
    assert parse_position("offset:0").is_beginning and parse_position("offset:12").offset == 12
    assert parse_position("2020-03-01T08:00:00Z").time_ms == 1583049600000
    assert parse_position("2020-03-01T16:00:00+08:00").time_ms == 1583049600000
    for bad in ("offset:-1", "offset:x", "yesterday", "2020-03-01T08:00:00"):
        with pytest.raises(ValueError):
            parse_position(bad)


def _colliding_requests(count: int) -> list[dict]:
    """`count` requests of one county on one partition whose serial searches all begin at the same
    pass number: each takes the next free one, so who gets which depends on the partition's order."""
    from models.passes import allocate_pass_id

    scenario, by_start = Scenario(seed=41, start=START), {}
    for n in range(200_000):
        sid = f"COLL-{n}"
        p = kafka_partition(sid.encode(), 4)
        pid = allocate_pass_id("420111", sid, partition=p, partitions=4, holder=lambda _: None)
        group = by_start.setdefault(pid, [])
        group.append(sid)
        if len(group) == count:
            break
    bodies = []
    for i, sid in enumerate(group):
        body = scenario.request(i, kind="P0")
        # Submitted in the reverse of their log order: event time and offset order disagree.
        body.update(
            shipment_id=sid,
            origin=WUHAN,
            destination=GUANGZHOU,
            submitted_at=format_time(START + timedelta(minutes=10 - i)),
        )
        bodies.append(body)
    return bodies


def test_colliding_serials_are_allocated_and_replayed_in_the_partitions_offset_order():
    bodies = _colliding_requests(3)
    log = FakeLog()
    run_worker(make_pipeline(), log, [(T.requests, b["shipment_id"].encode(), orjson.dumps(b)) for b in bodies])
    recorded = {orjson.loads(r.value)["shipment_id"]: orjson.loads(r.value) for r in log.topic(T.decisions)}
    pass_ids = [recorded[b["shipment_id"]]["pass"]["pass_id"] for b in bodies]
    assert len(set(pass_ids)) == 3
    assert len({r.partition for r in log.topic(T.requests)}) == 1

    rep = replay_log(log)
    assert compare(rep, log.topic(T.decisions), log.topic(T.status)).mismatches == []

    # A window holding only the last request: the numbers held before it come from the record.
    window = log.topic(T.requests)[-1:]
    alone = Replayer(make_pipeline())
    alone.replay(window)
    assert orjson.loads(alone.decisions[bodies[-1]["shipment_id"]])["pass"]["pass_id"] != pass_ids[-1]
    held = Replayer(make_pipeline())
    held.replay(window, recorded=log.topic(T.decisions), held=log.topic(T.decisions))
    assert held.decisions[bodies[-1]["shipment_id"]] == log.topic(T.decisions)[-1].value


def test_a_risk_entry_without_effective_at_is_replayed_at_its_record_time():
    """The worker and the replay read an entry's effective time in one place: an entry with no
    `effective_at` takes effect from its record time on both paths, so the audit still proves the
    decisions it moved (P2 requests into Changsha after it rejected, before it approved)."""
    scenario = Scenario(seed=43, start=START)
    inputs = [(T.enterprises, e["credit_code"].encode(), orjson.dumps(e)) for e in scenario.enterprise_entries()]
    bodies = []
    for n in range(12):
        body = scenario.request(n, kind="P2")
        at = START + timedelta(hours=2 + n)  # two before the change, the rest from its instant on
        body.update(
            origin=WUHAN,
            destination=CHANGSHA,
            submitted_at=format_time(at),
            departure_at=format_time(at + timedelta(hours=1)),
        )
        bodies.append(body)
    requests = [(T.requests, b["shipment_id"].encode(), orjson.dumps(b)) for b in bodies]
    change = (T.risk, b"43", orjson.dumps({"adcode": "43", "level": "high"}))
    arrivals = inputs + requests[:2] + [change] + requests[2:]  # in event time, as a real system sees them
    change_ms = int((START + timedelta(hours=4)).timestamp() * 1000)

    class Log(FakeLog):  # the change is logged at START + 4 h exactly
        def append(self, topic, *args, **kw):
            if topic == T.risk:
                self.clock = change_ms - 1
            return super().append(topic, *args, **kw)

    log = Log()
    log.clock = change_ms - 10_000
    run_worker(make_pipeline(), log, arrivals)
    live = {orjson.loads(r.value)["shipment_id"]: orjson.loads(r.value) for r in log.topic(T.decisions)}
    outcome = [live[b["shipment_id"]]["decision"] for b in bodies]
    assert outcome == ["approved"] * 2 + ["rejected"] * 10, outcome
    suspended = {
        orjson.loads(r.value)["pass_id"] for r in log.topic(T.status) if orjson.loads(r.value)["status"] == "suspended"
    }
    assert len(suspended) == 2  # the two passes issued before it, into a region now high risk
    rep = replay_log(log)
    c = compare(rep, log.topic(T.decisions), log.topic(T.status))
    assert c.mismatches == [] and c.decisions_matched == 12


def test_the_worker_and_the_replay_run_one_dispatch_and_one_guard(monkeypatch):
    """The replay hands each record to the worker's own table and guard (`streams.dispatch`): a
    handler that fails dead-letters the record in the replay exactly as the worker's agent does."""
    from streams import dispatch

    pipeline = make_pipeline()
    rep = Replayer(pipeline)
    t = pipeline.topics
    assert (
        set(rep._table)
        == set(dispatch.handlers(pipeline))
        == {t.requests, t.gateway_requests, t.scans, t.risk, t.enterprises, t.keys, t.pass_events}
    )

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(pipeline, "on_scan", broken)
    scan = Record(T.scans, 1, 5, 1_700_000_000_000, b"420111000001", b'{"scan_id": "x"}')
    live = dispatch.handle(
        pipeline, dispatch.handlers(pipeline), scan.key, scan.value, scan.meta, dispatch.Given(Tables.empty())
    )
    assert [o.topic for o in live] == [T.deadletter] and b"internal error: ValueError: boom" in live[0].value
    rep.replay([scan])
    assert rep.dead_letters == 1 and rep.events[T.scans] == 1
