"""Audit replay through the broker: re-decide the logged inputs, prove every recorded decision, rebuild the database.

These tests publish through the session's worker and run `greenchannel replay` on the same broker,
each in its own window (`--since` the moment it started publishing) and with its own seed (without a
broker: tests/unit/test_replay.py).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from models.records import format_time
from streams.audit import parse_position, rebuild_database, run_replay
from streams.dev.simulator import Scenario, scans_for
from streams.settings import Settings
from tests.support.factories import load_key_enterprises, publish, wuhan_to_hangzhou_probe

START = datetime(2020, 3, 1, 8, 0, tzinfo=UTC)
WUHAN, GUANGZHOU, CHANGSHA = {"adcode": "420111"}, {"adcode": "440106"}, {"adcode": "430104"}


def settings_for(system) -> Settings:
    env = system.env
    return Settings(
        broker_url=env["GC_BROKER_URL"],
        data_dir=Path(env["GC_DATA_DIR"]),
        app_id=env["GC_APP_ID"],
        database_url=env["GC_DATABASE_URL"],
        partitions=int(env["GC_PARTITIONS"]),
        topic_prefix="gc.",
    )


def now_text() -> str:
    return format_time(datetime.now(UTC))


@pytest.fixture(scope="module")
async def firms(system) -> Scenario:
    """Key enterprises the worker has applied before any test's window opens.

    The worker applies reference data in another agent than the one deciding requests, so a
    request sent right after an enterprise entry may be decided before the entry is in the
    books: the replay rightly reports such a decision (late_reference_data). Here every entry
    is proven applied by a P2 probe request that needs it, re-sent until approved.
    """
    base = Scenario(seed=600, start=START - timedelta(days=1))
    await load_key_enterprises(system, base, wuhan_to_hangzhou_probe(base))
    return base


def scenario_for(firms: Scenario, seed: int, days: int) -> Scenario:
    return Scenario(
        seed=seed, start=START + timedelta(days=days), key_enterprises=firms.key_enterprises, suppliers=firms.suppliers
    )


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
    return "\n".join(
        f"{m['kind']} {m['shipment_id']} {m['pass_id']}: {m['explanation']} {m['differing_fields']}\n"
        f"  recorded {m['recorded']}\n  replayed {m['replayed']}"
        for m in report["mismatches"][:6]
    )


async def test_a_clean_replay_proves_every_decision_and_status(system, firms, tmp_path):
    scenario = scenario_for(firms, 601, 0)
    since = now_text()
    bodies = [scenario.request(n) for n in range(40)] + [
        scenario.request(40, kind="bad_fields"),
        scenario.request(41, kind="none"),
    ]
    decided = await publish(system, bodies)
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
    result = system.cli(
        "replay", "--since", since, "--json", str(json_path), "--html", str(html_path), "--pass", pass_id
    )
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
    assert {k: v for k, v in first["replayed_decisions"].items()} == {
        m.key.decode(): m.value
        for m in system.tap.where(system.topics.decisions)
        if m.key.decode() in first["replayed_decisions"]
    }

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
    decided = await publish(system, bodies)
    rejected = decided[bodies[3]["shipment_id"]]
    approved = decided[bodies[0]["shipment_id"]]
    assert rejected["decision"] == "rejected" and approved["decision"] == "approved"
    # An approval injected by hand, and a decision for a shipment nobody requested.
    forged = {
        **rejected,
        "decision": "approved",
        "priority": "P0",
        "reasons": [],
        "pass": {
            **approved["pass"],
            "pass_id": "990000" + str(602000 + 1)[-6:],
            "token": approved["pass"]["token"].split(".")[0] + ".AAAA",
        },
    }
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
        body.update(
            origin=origin,
            destination=destination,
            submitted_at=format_time(when),
            departure_at=format_time(when + timedelta(hours=2)),
        )
        return body

    before = [made(0, "P0", WUHAN, GUANGZHOU, 0), made(1, "P3", WUHAN, CHANGSHA, 0), made(2, "P2", WUHAN, CHANGSHA, 0)]
    before += [made(n, None, {"adcode": "420111"}, {"adcode": "330106"}, 0) for n in range(3, 12)]
    first = await publish(system, before)
    through, into = first[before[0]["shipment_id"]]["pass"], first[before[1]["shipment_id"]]["pass"]
    also_into = first[before[2]["shipment_id"]]["pass"]
    assert through and into and first[before[2]["shipment_id"]]["decision"] == "approved"

    high = {"adcode": "430000", "level": "high", "effective_at": format_time(start + timedelta(hours=2))}
    await system.send(system.topics.risk, high, key="430000")
    await system.tap.wait_for(
        system.topics.status,
        lambda m: m.key == through["pass_id"].encode() and m.json["status"] == "rerouted",
        timeout=120,
    )
    # Each partition re-evaluates its passes when the broadcast reaches it: wait for every pass
    # the change moves, not only the first, before the window closes.
    for moved in (into, also_into):
        await system.tap.wait_for(
            system.topics.status,
            lambda m, moved=moved: m.key == moved["pass_id"].encode() and m.json["status"] == "suspended",
            timeout=120,
        )

    after = [
        made(20, "P0", WUHAN, GUANGZHOU, 3),
        made(21, "P3", WUHAN, CHANGSHA, 3),
        made(22, "P2", WUHAN, CHANGSHA, 3),
    ]
    second = await publish(system, after)
    assert second[after[0]["shipment_id"]]["decision"] == "approved"
    assert not any(a[:2] == "43" for a in second[after[0]["shipment_id"]]["pass"]["route"]["adcodes"][1:-1])
    for b in after[1:]:
        assert second[b["shipment_id"]]["reasons"][0]["code"] == "high_risk_region"

    low = {"adcode": "430000", "level": "low", "effective_at": format_time(start + timedelta(hours=4))}
    await system.send(system.topics.risk, low, key="430000")
    for moved in (into, also_into):
        await system.tap.wait_for(
            system.topics.status,
            lambda m, moved=moved: m.key == moved["pass_id"].encode() and m.json["status"] == "rerouted",
            timeout=120,
        )

    until = now_text()
    result = system.cli(
        "replay", "--since", since, "--until", until, "--json", "-", "--pass", through["pass_id"], "--no-progress"
    )
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

    from models.store.db import make_engine
    from models.store.tables import Checkpoint, CrossingSlot, Enterprise, Pass, PassEvent, Region, Shipment

    def plain(value):
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return {
                table.__tablename__: {
                    (getattr(row, key) if " " not in key else tuple(getattr(row, k) for k in key.split())): {
                        k: plain(v) for k, v in row.model_dump(exclude={"id"}).items()
                    }
                    for row in session.exec(select(table))
                }
                for table, key in (
                    (Shipment, "shipment_id"),
                    (Pass, "pass_id"),
                    (PassEvent, "event_id"),
                    (Region, "adcode"),
                    (Enterprise, "credit_code"),
                    (Checkpoint, "checkpoint_id"),
                    (CrossingSlot, "slot checkpoint_id minute"),  # the public counts (migration 0005's triggers)
                )
            }
    finally:
        engine.dispose()


def differences(live: dict, rebuilt: dict) -> str:
    lines = []
    for table in live:
        a, b = live[table], rebuilt[table]
        only_live, only_rebuilt = set(a) - set(b), set(b) - set(a)
        changed = [k for k in set(a) & set(b) if a[k] != b[k]]
        if only_live or only_rebuilt or changed:
            lines.append(
                f"{table}: {len(only_live)} only live, {len(only_rebuilt)} only rebuilt, {len(changed)} differ; "
                f"e.g. {[(a[k], b[k]) for k in changed[:1]]} {sorted(only_live)[:3]} {sorted(only_rebuilt)[:3]}"
            )
    return "\n".join(lines)


async def test_rebuild_makes_the_same_tables_as_the_live_projection(system, firms, tmp_path):
    scenario = scenario_for(firms, 604, 3)
    bodies = [scenario.request(n) for n in range(12)]
    decided = await publish(system, bodies)
    for i, d in enumerate([d for d in decided.values() if d["pass"]][:2]):
        await drive(system, d, seed=i)
    await system.send(
        system.topics.risk,
        {"adcode": "610000", "level": "medium", "effective_at": format_time(scenario.start + timedelta(hours=1))},
        key="610000",
    )

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
    assert rebuilt["crossing_slot"]  # the trucks driven here departed checkpoints: counted by the rebuild's writes
    assert {d["shipment_id"] for d in decided.values()} <= set(rebuilt["shipment"])
