"""The operators' and firms' commands through the running system: what they publish on the real
topics, what the worker does with it, and their exit codes (their files and entries without a broker:
tests/unit/test_operator_entries.py)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import orjson
import pytest

from models.passes import kafka_partition
from streams.dev.simulator import Scenario
from tests.support.factories import bad_check, codes, handled
from tests.support.system import PARTITIONS, ROOT


@pytest.fixture(scope="module")
def system(own_system):
    """This module's own topics: the risk levels it sets now stay out of the shared log."""
    return own_system


async def test_import_publishes_exactly_the_good_rows_and_names_the_bad_ones(system, tmp_path):
    a, b, c, d = codes(uuid.uuid4().int, 4)
    path = tmp_path / "key-list.csv"
    path.write_text(
        f"credit_code,name\n{a},甲厂\n{bad_check(b)},乙厂\n{c},丙厂\n{a},甲厂又一行\n{d},丁厂\n", encoding="utf-8-sig"
    )
    dry = system.cli("enterprises", "import", str(path), "--dry-run")
    assert dry.returncode == 1 and "would send 3 firms" in dry.stdout
    done = system.cli("enterprises", "import", str(path))
    assert done.returncode == 1, done.stderr
    assert (
        f"{path}:3: credit_code check character" in done.stderr
        and f"{path}:5: credit_code {a} repeats line 2" in done.stderr
    )
    assert "sent 3 firms" in done.stdout and "(lines 3, 5)" in done.stdout
    await system.tap.caught_up([system.topics.enterprises])
    mine = {a, b, bad_check(b), c, d}
    sent = [m for m in system.tap.where(system.topics.enterprises) if m.key.decode() in mine]
    assert sorted(m.key.decode() for m in sent) == sorted([a, c, d])  # once each: the dry run sent nothing
    assert {m.json["name"] for m in sent} == {"甲厂", "丙厂", "丁厂"}
    listed = system.cli("enterprises", "export")
    assert listed.returncode == 0 and {f"{a},甲厂", f"{c},丙厂", f"{d},丁厂"} <= set(listed.stdout.splitlines())
    removed = system.cli("enterprises", "remove", a)
    assert removed.returncode == 0 and '"action":"remove"' in removed.stdout
    await system.tap.wait_for(system.topics.enterprises, lambda m: m.key == a.encode() and m.json["action"] == "remove")
    after = system.cli("enterprises", "list")
    assert a not in after.stdout and c in after.stdout


async def test_risk_set_for_no_region_exits_non_zero_and_publishes_nothing(system):
    await system.tap.caught_up([system.topics.risk])
    before = len(system.tap.where(system.topics.risk))
    done = system.cli("risk", "set", "999999", "high")
    assert done.returncode == 1 and "999999 names no province, prefecture or county" in done.stderr
    ok = system.cli("risk", "set", "5301", "medium", "--at", "2020-02-20T00:00:00Z", "--note", "test")
    assert ok.returncode == 0 and '"adcode":"5301"' in ok.stdout
    await system.tap.caught_up([system.topics.risk])
    after = system.tap.where(system.topics.risk)[before:]
    assert [m.key for m in after] == [b"5301"]  # the one accepted, not 999999
    listing = system.cli("risk", "list")
    assert listing.returncode == 0 and "5301" in listing.stdout and "昆明市" in listing.stdout


async def test_an_entry_without_effective_at_is_in_force_from_its_record_time(system):
    code = codes(uuid.uuid4().int, 1)[0]
    await system.send(system.topics.enterprises, {"credit_code": code, "name": "无生效时间", "action": "add"}, key=code)
    listed = system.cli("enterprises", "list")
    assert listed.returncode == 0 and code in listed.stdout
    earlier = system.cli("enterprises", "list", "--at", "2020-01-01T00:00:00Z")
    assert code not in earlier.stdout
    # The worker took it too: a malformed marker behind it on its partition is dead-lettered, and
    # the entry was not.
    await handled(system, system.topics.enterprises, [kafka_partition(code.encode(), PARTITIONS)])
    assert not system.tap.where(system.topics.deadletter, lambda m: m.key == code.encode())


async def test_a_risk_entry_naming_no_region_is_dead_lettered_by_the_worker(system):
    key = f"99{uuid.uuid4().int % 10**4:04d}"
    await system.send(system.topics.risk, {"adcode": "999999", "level": "high"}, key=key)
    [dead] = await system.tap.wait_for(system.topics.deadletter, lambda m: m.key == key.encode())
    assert dead.json["error"] == "adcode 999999 names no province, prefecture or county of the gazetteer"
    assert dead.json["topic"] == system.topics.risk


async def test_request_submit_exits_0_approved_1_rejected_2_invalid(system, tmp_path):
    scenario = Scenario(seed=uuid.uuid4().int % 10**6)
    approved = scenario.request(1, kind="P0")
    rejected = scenario.request(2, kind="none")  # goods outside every class
    invalid = {k: v for k, v in scenario.request(3, kind="P0").items() if k != "driver"}
    for name, body in (("approved", approved), ("rejected", rejected), ("invalid", invalid)):
        (tmp_path / f"{name}.json").write_bytes(orjson.dumps(body))
    yes = system.cli("request", "submit", str(tmp_path / "approved.json"))
    assert yes.returncode == 0, yes.stdout + yes.stderr
    [answer] = await system.tap.wait_for(system.topics.decisions, lambda m: m.key == approved["shipment_id"].encode())
    decision = answer.json
    assert f"pass number {decision['pass']['pass_id']}" in yes.stdout and "class P0" in yes.stdout
    assert "route " in yes.stdout and "valid 2020-" in yes.stdout
    no = system.cli("request", "submit", str(tmp_path / "rejected.json"))
    assert no.returncode == 1 and "REJECTED" in no.stdout and "outside every priority class" in no.stdout, no.stdout
    again = subprocess.run(
        [sys.executable, "-m", "streams.cli", "request", "submit", "-"],
        input=orjson.dumps(approved),
        env=system.env,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )  # from standard input
    assert again.returncode == 0 and f"pass number {decision['pass']['pass_id']}".encode() in again.stdout
    bad = system.cli("request", "submit", str(tmp_path / "invalid.json"))
    assert bad.returncode == 2 and "'driver' is a required property" in bad.stderr
    await system.tap.caught_up([system.topics.requests])
    assert not system.tap.where(system.topics.requests, lambda m: m.key == invalid["shipment_id"].encode())


async def test_request_submit_batch_sends_the_valid_lines_and_sums_up(system, tmp_path):
    scenario = Scenario(seed=uuid.uuid4().int % 10**6)
    bodies = [scenario.request(n, kind="P0" if n % 2 else "none") for n in range(6)]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(orjson.dumps(b).decode() for b in bodies) + "\n{not json\n", encoding="utf-8")
    done = system.cli("request", "submit", "--batch", str(path), "--wait", "60")
    assert done.returncode == 2 and f"{path}:7: not sent" in done.stderr  # one invalid line
    assert "6 requests sent" in done.stdout and "approved" in done.stdout and "rejected" in done.stdout
    assert "not_in_catalog 3" in done.stdout
