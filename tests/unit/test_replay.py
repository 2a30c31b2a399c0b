"""Audit replay: re-decide the logged inputs, prove every recorded decision, rebuild the database.

The broker-free tests drive `streams.replay`'s merge and comparison with in-memory records; the
others publish through the session's worker and run `greenchannel replay` on the same broker,
each in its own window (`--since` the moment it started publishing) and with its own seed.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from models.passes import kafka_partition
from models.records import format_time
from streams.handlers import Pipeline, Tables
from streams.replay import Record, Replayer, compare, parse_position, rebuild_database, run_replay
from streams.settings import Settings
from streams.simulator import Scenario, scans_for
from tests.test_handlers import T, make_pipeline

pytestmark = pytest.mark.integration

START = datetime(2020, 3, 1, 8, 0, tzinfo=timezone.utc)
WUHAN, GUANGZHOU, CHANGSHA = {"adcode": "420111"}, {"adcode": "440106"}, {"adcode": "430104"}


# --- without a broker -------------------------------------------------------------------------------

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
        kw = dict(partition=r.partition, offset=r.offset, timestamp_ms=r.timestamp_ms)
        outs = pipeline.on_request(key, value, tables=tables, **kw) if topic == T.requests \
            else pipeline.on_scan(key, value, tables=tables, **kw) if topic == T.scans \
            else handlers[topic](key, value, **kw)
        for out in outs:
            route(out)


def scenario_inputs(seed: int = 31) -> tuple[list[tuple[str, bytes | None, bytes]], list[dict]]:
    """Enterprises, requests, a risk change between two waves, and every approved truck's scans."""
    scenario = Scenario(seed=seed, start=START)
    pipeline = make_pipeline()
    inputs = [(T.enterprises, e["credit_code"].encode(), orjson.dumps(e)) for e in scenario.enterprise_entries()]
    for topic, key, value in inputs:
        pipeline.on_enterprise(key, value, partition=0, offset=0, timestamp_ms=0)
    bodies = [scenario.request(n) for n in range(60)]
    for n, kind in ((60, "P0"), (61, "P3"), (62, "P2")):
        body = scenario.request(n, kind=kind)
        body.update(origin=WUHAN, destination=GUANGZHOU if kind == "P0" else CHANGSHA)
        bodies.append(body)
    later = []
    for n in range(63, 70):
        body = scenario.request(n, kind="P2" if n % 2 else "P0")
        at = START + timedelta(hours=5, minutes=n)
        body.update(origin=WUHAN, destination=CHANGSHA, submitted_at=format_time(at),
                    departure_at=format_time(at + timedelta(hours=2)))
        later.append(body)
    risk = {"adcode": "430000", "level": "high", "effective_at": format_time(START + timedelta(hours=4))}
    decisions, tables = [], Tables.empty()
    for body in bodies + later:
        if body is later[0]:
            inputs.append((T.risk, b"430000", orjson.dumps(risk)))
            pipeline.on_risk(b"430000", orjson.dumps(risk), partition=0, offset=0, timestamp_ms=0)
        value = orjson.dumps(body)
        inputs.append((T.requests, body["shipment_id"].encode(), value))
        key = body["shipment_id"].encode()
        outs = pipeline.on_request(key, value, partition=kafka_partition(key, 4), offset=0, timestamp_ms=0,
                                   tables=Tables({}, tables.serials, {}, {}))
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
    rep.replay(inputs if inputs is not None else [r for r in log.records if r.topic in (T.requests, T.scans, T.risk,
                                                                                         T.enterprises)])
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
    rejected_after = [d for d in decisions if d["decision"] == "rejected" and d["reasons"][0]["code"] == "high_risk_region"]
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
    forged_pass = {**approved["pass"], "pass_id": "990000000001",
                   "token": approved["pass"]["token"].split(".")[0] + ".AAAA"}
    forged = {**rejected, "decision": "approved", "priority": "P0", "reasons": [], "pass": forged_pass}
    recorded.append(Record(T.decisions, 0, 10**6, 1, rejected["shipment_id"].encode(), orjson.dumps(forged)))
    orphan = {**approved, "shipment_id": "SHP-NOBODY-1"}
    recorded.append(Record(T.decisions, 0, 10**6 + 1, 1, b"SHP-NOBODY-1", orjson.dumps(orphan)))
    statuses = list(log.topic(T.status))
    i = next(i for i, r in enumerate(statuses) if orjson.loads(r.value)["status"] == "in_transit")
    altered = {**orjson.loads(statuses[i].value), "dwell_seconds": 60.0, "dwell_exceeded": False}
    statuses[i] = Record(T.status, statuses[i].partition, statuses[i].offset, statuses[i].timestamp_ms,
                         statuses[i].key, orjson.dumps(altered), statuses[i].headers)

    c = compare(rep, recorded, statuses)
    kinds = sorted((m.kind, m.shipment_id) for m in c.mismatches)
    assert kinds == sorted([("decision_differs", rejected["shipment_id"]), ("orphan_decision", "SHP-NOBODY-1"),
                            ("status_differs", altered["shipment_id"])])
    tampered = next(m for m in c.mismatches if m.kind == "decision_differs")
    assert tampered.recorded["decision"] == "approved" and tampered.replayed["decision"] == "rejected"
    assert tampered.replayed_reasons == [r["code"] for r in rejected["reasons"]] and tampered.recorded_reasons == []
    assert "does not verify" in tampered.explanation and "decision" in tampered.differing_fields
    status = next(m for m in c.mismatches if m.kind == "status_differs")
    assert status.differing_fields == ["dwell_seconds"] or "dwell_seconds" in status.differing_fields


def test_a_late_reference_update_is_explained_not_just_flagged():
    """A risk change effective before a request but received after its decision: the live
    decision used the level it knew; the replay, with all reference data as of, differs."""
    scenario = Scenario(seed=41, start=START)
    body = scenario.request(1, kind="P2")
    body.update(origin=WUHAN, destination=CHANGSHA)
    risk = {"adcode": "43", "level": "high", "effective_at": format_time(START - timedelta(hours=1))}
    log = FakeLog()
    run_worker(make_pipeline(), log, [(T.enterprises, e["credit_code"].encode(), orjson.dumps(e))
                                      for e in scenario.enterprise_entries()]
               + [(T.requests, body["shipment_id"].encode(), orjson.dumps(body)), (T.risk, b"43", orjson.dumps(risk))])
    live = orjson.loads(log.topic(T.decisions)[-1].value)
    assert live["decision"] == "approved"
    rep = replay_log(log)
    assert orjson.loads(rep.decisions[body["shipment_id"]])["reasons"][0]["code"] == "high_risk_region"
    c = compare(rep, log.topic(T.decisions), [])
    [m] = [m for m in c.mismatches if m.kind == "decision_differs"]
    assert m.explanation.startswith("late_reference_data: reproduced without the 1 reference record(s)")


def test_positions_parse():
    assert parse_position("offset:0").is_beginning and parse_position("offset:12").offset == 12
    assert parse_position("2020-03-01T08:00:00Z").time_ms == 1583049600000
    assert parse_position("2020-03-01T16:00:00+08:00").time_ms == 1583049600000
    for bad in ("offset:-1", "offset:x", "yesterday", "2020-03-01T08:00:00"):
        with pytest.raises(ValueError):
            parse_position(bad)


# --- through the broker -------------------------------------------------------------------------------

def settings_for(system) -> Settings:
    env = system.env
    return Settings(broker_url=env["GC_BROKER_URL"], data_dir=Path(env["GC_DATA_DIR"]), app_id=env["GC_APP_ID"],
                    database_url=env["GC_DATABASE_URL"], partitions=int(env["GC_PARTITIONS"]), topic_prefix="gc.")


def now_text() -> str:
    return format_time(datetime.now(timezone.utc))


@pytest.fixture(scope="module")
async def firms(system) -> Scenario:
    """Key enterprises the worker has applied before any test's window opens.

    The worker applies reference data in another agent than the one deciding requests, so a
    request sent right after an enterprise entry may be decided before the entry is in the
    books: the replay rightly reports such a decision (late_reference_data). Here every entry
    is proven applied by a P2 probe request that needs it, re-sent until approved.
    """
    base = Scenario(seed=600, start=START - timedelta(days=1))
    for entry in base.enterprise_entries():
        await system.send(system.topics.enterprises, entry, key=entry["credit_code"])
    pending, deadline, n = list(base.key_enterprises), time.monotonic() + 120, 0
    while pending:
        probes = []
        for code, name in pending:
            body = base.request(n, kind="P2")
            body.update(shipment_id=f"PROBE-{uuid.uuid4().hex[:12]}", consignee={"credit_code": code, "name": name},
                        origin={"adcode": "420111"}, destination={"adcode": "330106"})
            probes.append(body)
            n += 1
        decided = await publish(system, base, probes)
        pending = [firm for firm, body in zip(pending, probes) if decided[body["shipment_id"]]["decision"] != "approved"]
        assert time.monotonic() < deadline, f"{len(pending)} key enterprises not applied by the worker"
    return base


def scenario_for(firms: Scenario, seed: int, days: int) -> Scenario:
    return Scenario(seed=seed, start=START + timedelta(days=days), key_enterprises=firms.key_enterprises,
                    suppliers=firms.suppliers)


async def publish(system, scenario: Scenario, bodies: list[dict]) -> dict[str, dict]:
    """Send the requests and wait for one decision each, and for the `issued` status of each
    pass approved (on Kafka it commits in a transaction of its own, often after the decision's:
    a replay started in between would miss it); {shipment_id: decision}."""
    for body in bodies:
        await system.send(system.topics.requests, body, key=body["shipment_id"])
    ids = {b["shipment_id"].encode() for b in bodies}
    found = await system.tap.wait_for(system.topics.decisions, lambda m: m.key in ids, len(ids), timeout=120)
    passes = {m.json["pass"]["pass_id"].encode() for m in found if m.json["pass"]}
    await system.tap.wait_for(system.topics.status, lambda m: m.key in passes and m.json["status"] == "issued",
                              len(passes), timeout=120)
    return {m.key.decode(): m.json for m in found}


async def drive(system, decision: dict, seed: int = 1) -> list[dict]:
    """A truck along its route: every scan, then wait for an answer to each."""
    pass_id = decision["pass"]["pass_id"]
    scans = scans_for(decision, random.Random(seed))
    for scan in scans:
        await system.send(system.topics.scans, scan, key=pass_id)
    await system.tap.wait_for(system.topics.status, lambda m: m.key == pass_id.encode(), 1 + len(scans), timeout=120)
    return scans


def failure(result, report_path: Path | None = None) -> str:
    """What a failed replay said: its mismatches from the JSON report when there is one."""
    text = report_path.read_text() if report_path is not None and report_path.exists() else result.stdout
    try:
        report = json.loads(text)
    except ValueError:
        return result.stdout[-3000:] + result.stderr[-3000:]
    return "\n".join(f"{m['kind']} {m['shipment_id']} {m['pass_id']}: {m['explanation']} {m['differing_fields']}\n"
                     f"  recorded {m['recorded']}\n  replayed {m['replayed']}" for m in report["mismatches"][:6])


async def test_a_clean_replay_proves_every_decision_and_status(system, firms, tmp_path):
    scenario = scenario_for(firms, 601, 0)
    since = now_text()
    bodies = [scenario.request(n) for n in range(40)] + [scenario.request(40, kind="bad_fields"),
                                                         scenario.request(41, kind="none")]
    decided = await publish(system, scenario, bodies)
    await system.send(system.topics.requests, bodies[0], key=bodies[0]["shipment_id"])  # a repeat
    bad_key = f"bad-{uuid.uuid4().hex[:8]}"
    await system.send(system.topics.requests, b"{not json", key=bad_key)
    await system.tap.wait_for(system.topics.deadletter, lambda m: m.key == bad_key.encode(), timeout=120)
    await system.tap.wait_for(system.topics.decisions, lambda m: m.key == bodies[0]["shipment_id"].encode(), 2)
    approved = [d for d in decided.values() if d["decision"] == "approved"]
    driven = [d for d in approved if d["pass"]["trip"] == "single"][:3]  # each ends delivered
    for i, d in enumerate(driven):
        await drive(system, d, seed=i)
    pass_id = driven[0]["pass"]["pass_id"]

    json_path, html_path = tmp_path / "audit.json", tmp_path / "audit.html"
    result = system.cli("replay", "--since", since, "--json", str(json_path), "--html", str(html_path),
                        "--pass", pass_id)
    assert result.returncode == 0, failure(result, json_path)
    report = json.loads(json_path.read_text())
    assert report["ok"] and report["mismatches"] == []
    d = report["decisions"]
    assert d["replayed"] == d["matched"] == len(bodies)
    assert d["repeated_requests"] == 1 and d["dead_letters"] == 1
    assert sum(d["by_class"]["approved"].values()) == len(approved)
    assert d["by_decision"]["rejected"] == len(bodies) - len(approved)
    assert {"bad_id_number", "not_in_catalog"} <= set(d["rejection_reasons"])
    s = report["statuses"]
    assert s["passes_compared"] == len(approved) and s["matched"] == s["events_replayed"] > len(approved)
    assert s["by_status"]["delivered"] == len(driven)
    timeline = report["timelines"][pass_id]
    assert timeline["final_status"] == "delivered" and timeline["decision"]["pass_id"] == pass_id
    assert {row["match"] for row in timeline["events"]} == {"same"}
    assert any(row["dwell_seconds"] for row in timeline["events"])
    assert report["events"]["total"] >= len(bodies) + 2 and report["timing"]["events_per_second"] > 0
    assert pass_id in html_path.read_text() and "OK" in result.stdout and "Re-decisions" in result.stdout

    # Replayed twice: byte-identical decisions (the precondition of the audit).
    settings = settings_for(system)
    first = await run_replay(settings, since=parse_position(since))
    second = await run_replay(settings, since=parse_position(since))
    assert first["ok"] and second["ok"]
    assert first["replayed_decisions"] == second["replayed_decisions"]
    assert {k: v for k, v in first["replayed_decisions"].items()} == \
        {m.key.decode(): m.value for m in system.tap.where(system.topics.decisions)
         if m.key.decode() in first["replayed_decisions"]}

    # The whole log from offset 0 (other tests' records included) proves this test's decisions too.
    whole = system.cli("replay", "--since", "offset:0", "--json", "-", "--no-progress")
    assert whole.returncode in (0, 1), whole.stderr[-3000:]
    everything = json.loads(whole.stdout)
    assert everything["decisions"]["replayed"] > len(bodies)
    assert not [m for m in everything["mismatches"] if m["shipment_id"] in decided], failure(whole)

    # The pass's story from the log.
    story = system.cli("pass", "history", pass_id, "--json", "-")
    assert story.returncode == 0, story.stderr[-3000:]
    told = json.loads(story.stdout)
    assert told["final_status"] == "delivered" and told["request"]["shipment_id"] == driven[0]["shipment_id"]
    assert len(told["events"]) == 1 + told["scans"] and told["unanswered_scans"] == []
    assert any(e.get("scan") and e["dwell_seconds"] for e in told["events"])
    shown = system.cli("pass", "history", pass_id)
    assert shown.returncode == 0 and "delivered" in shown.stdout and driven[0]["shipment_id"] in shown.stdout
    assert system.cli("pass", "history", "999999999999").returncode == 1


async def test_a_tampered_and_an_orphan_decision_fail_the_replay(system, firms):
    scenario = scenario_for(firms, 602, 1)
    since = now_text()
    bodies = [scenario.request(n, kind="P0") for n in range(3)] + [scenario.request(n, kind="none") for n in (3, 4)]
    decided = await publish(system, scenario, bodies)
    rejected = decided[bodies[3]["shipment_id"]]
    approved = decided[bodies[0]["shipment_id"]]
    assert rejected["decision"] == "rejected" and approved["decision"] == "approved"
    # An approval injected by hand, and a decision for a shipment nobody requested.
    forged = {**rejected, "decision": "approved", "priority": "P0", "reasons": [],
              "pass": {**approved["pass"], "pass_id": "990000" + str(602000 + 1)[-6:],
                       "token": approved["pass"]["token"].split(".")[0] + ".AAAA"}}
    orphan_id = f"SHP-NOBODY-{uuid.uuid4().hex[:8]}"
    orphan = {**approved, "shipment_id": orphan_id, "pass": {**approved["pass"], "pass_id": "990000602002"}}
    await system.send(system.topics.decisions, forged, key=rejected["shipment_id"])
    await system.send(system.topics.decisions, orphan, key=orphan_id)
    await system.tap.wait_for(system.topics.decisions, lambda m: m.key == orphan_id.encode())

    result = system.cli("replay", "--since", since, "--json", "-", "--no-progress")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert not report["ok"]
    found = sorted((m["kind"], m["shipment_id"]) for m in report["mismatches"])
    assert found == sorted([("decision_differs", rejected["shipment_id"]), ("orphan_decision", orphan_id)])
    tampered = next(m for m in report["mismatches"] if m["kind"] == "decision_differs")
    assert tampered["recorded"]["decision"] == "approved" and tampered["replayed"]["decision"] == "rejected"
    assert tampered["replayed_reasons"] == ["not_in_catalog"] and tampered["recorded_reasons"] == []
    assert "does not verify" in tampered["explanation"]
    assert report["decisions"]["matched"] == len(bodies) - 1
    assert "MISMATCH" in result.stderr and "decision_differs" in result.stderr


async def test_a_risk_change_mid_stream_replays_each_decision_with_the_level_of_its_time(system, firms):
    scenario = scenario_for(firms, 603, 2)
    start = scenario.start
    since = now_text()

    def made(n, kind, origin, destination, hours):
        body = scenario.request(n, kind=kind)
        when = start + timedelta(hours=hours, minutes=n)
        body.update(origin=origin, destination=destination, submitted_at=format_time(when),
                    departure_at=format_time(when + timedelta(hours=2)))
        return body

    before = [made(0, "P0", WUHAN, GUANGZHOU, 0), made(1, "P3", WUHAN, CHANGSHA, 0), made(2, "P2", WUHAN, CHANGSHA, 0)]
    before += [made(n, None, {"adcode": "420111"}, {"adcode": "330106"}, 0) for n in range(3, 12)]
    first = await publish(system, scenario, before)
    through, into = first[before[0]["shipment_id"]]["pass"], first[before[1]["shipment_id"]]["pass"]
    also_into = first[before[2]["shipment_id"]]["pass"]
    assert through and into and first[before[2]["shipment_id"]]["decision"] == "approved"

    high = {"adcode": "430000", "level": "high", "effective_at": format_time(start + timedelta(hours=2))}
    await system.send(system.topics.risk, high, key="430000")
    await system.tap.wait_for(system.topics.status, lambda m: m.key == through["pass_id"].encode()
                              and m.json["status"] == "rerouted", timeout=120)
    # Each partition re-evaluates its passes when the broadcast reaches it: wait for every pass
    # the change moves, not only the first, before the window closes.
    for moved in (into, also_into):
        await system.tap.wait_for(system.topics.status, lambda m: m.key == moved["pass_id"].encode()
                                  and m.json["status"] == "suspended", timeout=120)

    after = [made(20, "P0", WUHAN, GUANGZHOU, 3), made(21, "P3", WUHAN, CHANGSHA, 3), made(22, "P2", WUHAN, CHANGSHA, 3)]
    second = await publish(system, scenario, after)
    assert second[after[0]["shipment_id"]]["decision"] == "approved"
    assert not any(a[:2] == "43" for a in second[after[0]["shipment_id"]]["pass"]["route"]["adcodes"][1:-1])
    for b in after[1:]:
        assert second[b["shipment_id"]]["reasons"][0]["code"] == "high_risk_region"

    low = {"adcode": "430000", "level": "low", "effective_at": format_time(start + timedelta(hours=4))}
    await system.send(system.topics.risk, low, key="430000")
    for moved in (into, also_into):
        await system.tap.wait_for(system.topics.status, lambda m: m.key == moved["pass_id"].encode()
                                  and m.json["status"] == "rerouted", timeout=120)

    until = now_text()
    result = system.cli("replay", "--since", since, "--until", until, "--json", "-", "--pass", through["pass_id"],
                        "--no-progress")
    assert result.returncode == 0, failure(result)
    report = json.loads(result.stdout)
    assert report["ok"] and report["mismatches"] == []
    assert report["events"]["risk"] == 2 and report["decisions"]["matched"] == len(before) + len(after)
    assert report["decisions"]["rejection_reasons"]["high_risk_region"] == 2
    assert {"rerouted", "suspended"} <= set(report["statuses"]["by_status"])
    assert [row["status"] for row in report["timelines"][through["pass_id"]]["events"]] == ["issued", "rerouted"]


def snapshot(url: str) -> dict:
    """Every projected row, keyed by its natural key (the surrogate pass_event id left out)."""
    from sqlmodel import Session, select

    from models.db import make_engine
    from models.tables import Checkpoint, Enterprise, Pass, PassEvent, Region, Shipment

    def plain(value):
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return {table.__tablename__: {getattr(row, key): {k: plain(v) for k, v in row.model_dump(exclude={"id"}).items()}
                                          for row in session.exec(select(table))}
                    for table, key in ((Shipment, "shipment_id"), (Pass, "pass_id"), (PassEvent, "event_id"),
                                       (Region, "adcode"), (Enterprise, "credit_code"), (Checkpoint, "checkpoint_id"))}
    finally:
        engine.dispose()


def differences(live: dict, rebuilt: dict) -> str:
    lines = []
    for table in live:
        a, b = live[table], rebuilt[table]
        only_live, only_rebuilt = set(a) - set(b), set(b) - set(a)
        changed = [k for k in set(a) & set(b) if a[k] != b[k]]
        if only_live or only_rebuilt or changed:
            lines.append(f"{table}: {len(only_live)} only live, {len(only_rebuilt)} only rebuilt, {len(changed)} differ; "
                         f"e.g. {[(a[k], b[k]) for k in changed[:1]]} {sorted(only_live)[:3]} {sorted(only_rebuilt)[:3]}")
    return "\n".join(lines)


async def test_rebuild_makes_the_same_tables_as_the_live_projection(system, firms, tmp_path):
    scenario = scenario_for(firms, 604, 3)
    bodies = [scenario.request(n) for n in range(12)]
    decided = await publish(system, scenario, bodies)
    for i, d in enumerate([d for d in decided.values() if d["pass"]][:2]):
        await drive(system, d, seed=i)
    await system.send(system.topics.risk, {"adcode": "610000", "level": "medium",
                                           "effective_at": format_time(scenario.start + timedelta(hours=1))},
                      key="610000")

    url = f"sqlite:///{tmp_path}/rebuilt-0.db"
    result = system.cli("replay", "--rebuild", url)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rebuilt" in result.stdout
    refused = system.cli("replay", "--rebuild", url, "--no-progress")
    assert refused.returncode == 2 and "not empty" in refused.stderr

    # The live projection is asynchronous: compare until it has caught up (a fresh rebuild each
    # round, in case the log grew meanwhile), with a deadline.
    live_url, settings = system.env["GC_DATABASE_URL"], settings_for(system)
    deadline = time.monotonic() + 120
    attempt = 0
    while True:
        live, rebuilt = snapshot(live_url), snapshot(url)
        if live == rebuilt:
            break
        assert time.monotonic() < deadline, differences(live, rebuilt)
        attempt += 1
        url = f"sqlite:///{tmp_path}/rebuilt-{attempt}.db"
        await rebuild_database(settings, url)
    assert all(rebuilt[t] for t in ("shipment", "pass", "pass_event", "region", "enterprise", "checkpoint"))
    assert {d["shipment_id"] for d in decided.values()} <= set(rebuilt["shipment"])


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
        body.update(shipment_id=sid, origin=WUHAN, destination=GUANGZHOU,
                    submitted_at=format_time(START + timedelta(minutes=10 - i)))
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
    held.replay(window, held=log.topic(T.decisions))
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
        body.update(origin=WUHAN, destination=CHANGSHA, submitted_at=format_time(at),
                    departure_at=format_time(at + timedelta(hours=1)))
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
    suspended = {orjson.loads(r.value)["pass_id"] for r in log.topic(T.status)
                 if orjson.loads(r.value)["status"] == "suspended"}
    assert len(suspended) == 2  # the two passes issued before it, into a region now high risk
    rep = replay_log(log)
    c = compare(rep, log.topic(T.decisions), log.topic(T.status))
    assert c.mismatches == [] and c.decisions_matched == 12
