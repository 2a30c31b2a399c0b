"""The secure Apache Kafka (SASL_SSL, SCRAM-SHA-512, the StandardAuthorizer and the ACLs of
streams/dev/secure.py): who is refused, and that the whole system works with every component
authenticated as its own principal. Runs in the secure lane only (GC_TEST_BROKER=kafka-secure,
tests/services/lanes.sh secure); skipped elsewhere, saying why.

The system's harness (its producer and tap) is the admin, which sees everything; the worker, the
projector, the firm, the operator and the checkpoint are each their own principal.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from streams.connection import Connection
from streams.dev.broker import free_port
from streams.settings import Settings
from tests.support.factories import station_request, until
from tests.support.faults import worker_killed_mid_stream
from tests.support.system import (
    ROOT,
    Client,
    Tap,
    make_broker,
    start_gateway,
    start_station,
    start_system,
    stop_processes,
)

pytestmark = [
    pytest.mark.secure,
    pytest.mark.skipif(
        not (shutil.which("java") and shutil.which("mvn")), reason="needs java and mvn on PATH to run real Kafka"
    ),
    pytest.mark.timeout(900),
]

TIMEOUT = 180.0


@pytest.fixture(scope="module")
async def secure_system(broker, tmp_path_factory):
    sysm = await start_system(broker, tmp_path_factory.mktemp("secure"), prefix="sec.")
    yield sysm
    await sysm.close()


async def send_as(connection: Connection, topic: str, value: dict, key: str) -> None:
    producer = AIOKafkaProducer(**connection.kwargs(), acks="all", request_timeout_ms=15000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, orjson.dumps(value), key=key.encode())
    finally:
        await producer.stop()


async def refused_at_connect(kwargs: dict) -> KafkaConnectionError:
    producer = AIOKafkaProducer(**kwargs, request_timeout_ms=10000)
    with pytest.raises(KafkaConnectionError) as refused:
        await producer.start()
    await producer.stop()
    return refused.value


def broker_log_has(broker, text: str):
    return lambda: text in broker.node_log(0).read_text(errors="replace")


# --- refused -----------------------------------------------------------------------------------
async def test_a_plain_text_client_is_refused(broker, secure_system):
    await refused_at_connect(Connection(broker.bootstrap).kwargs())


async def test_a_tls_client_without_credentials_is_refused(broker, secure_system):
    tls = broker.connection_as("operator")
    await refused_at_connect(
        {**Connection(broker.bootstrap).kwargs(), "security_protocol": "SSL", "ssl_context": tls.ssl_context()}
    )
    # The TLS handshake itself was good: the same client with its credentials is let in.
    await send_as(
        tls,
        secure_system.topics.risk,
        {"adcode": "11", "level": "low", "effective_at": "2020-01-01T00:00:00Z"},
        key="11",
    )


async def test_a_wrong_password_is_refused(broker, secure_system):
    await refused_at_connect(broker.connection_as("firm-demo", password="not-the-password").kwargs())
    await until(
        broker_log_has(broker, "invalid credentials with SASL mechanism SCRAM-SHA-512"),
        30,
        "the broker's log of the failed authentication",
    )


# --- the ACLs ----------------------------------------------------------------------------------
async def test_a_firm_cannot_change_risk_levels_or_the_key_enterprise_list(broker, secure_system):
    s, firm = secure_system, broker.connection_as("firm-demo")
    forged_risk = {"adcode": "4403", "level": "low", "effective_at": "2020-02-20T00:00:00Z"}
    forged_firm = {"credit_code": "91440300MA5FORGED1", "name": "a firm listing itself", "action": "add"}
    with pytest.raises(TopicAuthorizationFailedError):
        await send_as(firm, s.topics.risk, forged_risk, key="4403")
    with pytest.raises(TopicAuthorizationFailedError):
        await send_as(firm, s.topics.enterprises, forged_firm, key=forged_firm["credit_code"])

    # The operator's change, later, through the command line: the only one the worker sees. (Medium:
    # a high level could refuse a later request of this module bound for Shenzhen.)
    done = s.cli("risk", "set", "4403", "medium", "--at", "2020-02-21T00:00:00Z", principal="operator")
    assert done.returncode == 0, done.stderr
    events = await Tap(s.connection, [s.topics.pass_events]).start()
    try:
        broadcasts = await events.wait_for(s.topics.pass_events, lambda m: m.key == b"4403", count=4, timeout=TIMEOUT)
        await s.tap.caught_up()
        assert sorted(m.json["level"] for m in broadcasts) == ["medium"] * 4
        assert [m.json["level"] for m in s.tap.where(s.topics.risk, lambda m: m.key == b"4403")] == ["medium"]
        assert s.tap.where(s.topics.enterprises, lambda m: m.key == forged_firm["credit_code"].encode()) == []
        assert s.tap.where(s.topics.deadletter, lambda m: m.key in (b"4403", forged_firm["credit_code"].encode())) == []
        listed = s.cli("risk", "list", "--at", "2020-02-22T00:00:00Z", principal="operator")
        assert listed.returncode == 0 and "4403" in listed.stdout and "medium" in listed.stdout, listed
    finally:
        await events.stop()


async def test_only_the_key_admin_writes_keys_and_only_root_signed_records_count(broker, secure_system):
    """The dashboard's principal reads only, and the operator's no longer writes gc.pass.keys; the key
    admin may, but a record the root did not sign is dead-lettered by the worker all the same."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from models.keyring import ACTIVE, key_entry, key_id

    s = secure_system
    key = Ed25519PrivateKey.generate().public_key()
    forged = key_entry(key, ACTIVE, at=None, root=Ed25519PrivateKey.generate())  # a root of its own
    kid = key_id(key)
    for principal in ("dashboard", "operator"):
        with pytest.raises(TopicAuthorizationFailedError):
            await send_as(broker.connection_as(principal), s.topics.keys, forged, key=kid)
    with pytest.raises(TopicAuthorizationFailedError):
        await send_as(broker.connection_as("dashboard"), s.topics.risk, {"adcode": "11", "level": "low"}, key="11")
    await send_as(broker.connection_as("keyadmin"), s.topics.keys, forged, key=kid)
    [letter] = await s.tap.wait_for(s.topics.deadletter, lambda m: m.key == kid.encode(), timeout=TIMEOUT)
    assert "not by the pinned root" in letter.json["error"]
    listed = s.cli("keys", "list", principal="keyadmin")
    assert listed.returncode == 0 and kid in listed.stderr and "refused" in listed.stderr, listed


async def test_a_checkpoint_cannot_submit_requests(broker, secure_system):
    s, body = secure_system, station_request("P0")
    with pytest.raises(TopicAuthorizationFailedError):
        await send_as(broker.connection_as("checkpoint-demo"), s.topics.requests, body, key=body["shipment_id"])
    await s.tap.caught_up()
    assert s.tap.where(s.topics.requests, lambda m: m.key == body["shipment_id"].encode()) == []


async def test_a_firm_cannot_mark_a_pass_scanned(broker, secure_system):
    s = secure_system
    scan = {
        "scan_id": f"forged-{uuid.uuid4().hex[:6]}",
        "checkpoint_id": "DST-440305",
        "pass_id": "330106000001",
        "plate": "浙A12345",
        "kind": "arrival",
        "scanned_at": "2020-02-25T07:52:00Z",
    }
    with pytest.raises(TopicAuthorizationFailedError):
        await send_as(broker.connection_as("firm-demo"), s.topics.scans, scan, key=scan["pass_id"])


async def test_a_firm_cannot_write_as_the_gateway_nor_take_its_ids(broker, secure_system):
    """Only the gateway writes its topic, so only it names the firm that asked (`requested_by`);
    on the firms' topic, the gateway's ids and `requested_by` are dead-lettered."""
    s, body = secure_system, station_request("P0")
    forged = body | {"shipment_id": "gw:sf-wuhan:SO-1", "requested_by": "sf-wuhan"}
    with pytest.raises(TopicAuthorizationFailedError):
        await send_as(broker.connection_as("firm-demo"), s.topics.gateway_requests, forged, key=forged["shipment_id"])
    await send_as(broker.connection_as("firm-demo"), s.topics.requests, forged, key=forged["shipment_id"])
    [dead] = await s.tap.wait_for(s.topics.deadletter, lambda m: m.key == b"gw:sf-wuhan:SO-1", timeout=TIMEOUT)
    assert dead.json["error"].startswith("reserved:"), dead.json


async def test_the_gateway_as_its_own_principal_takes_a_firms_request_to_its_pass(broker, secure_system, tmp_path):
    s, body = secure_system, station_request("P0")
    firm = f"sec-{uuid.uuid4().hex[:6]}"
    shipper = body["shipper"]["credit_code"]
    assert s.cli("firms", "add", firm, "--name", "f", "--credit-code", shipper).returncode == 0
    key = s.cli("firms", "key", "new", firm).stdout.strip().splitlines()[-1]
    gateway = start_gateway(s.env_as("gateway"), tmp_path).ready()
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with aiohttp.ClientSession() as http:
            body["shipment_id"] = "SO-SEC-1"
            async with http.post(f"{gateway.url}v1/requests", json=body, headers=headers) as r:
                assert r.status == 202, await r.text()

            async def decided():
                async with http.get(f"{gateway.url}v1/requests/SO-SEC-1", headers=headers) as r:
                    view = await r.json()
                    return view if view.get("status") not in (None, "pending") else None

            view = await until(decided, TIMEOUT, "the decision at the gateway", lambda: gateway.proc.poll() is None)
    finally:
        stop_processes([gateway.proc])
    assert view["status"] == "approved", view
    [decision] = s.tap.where(s.topics.decisions, lambda m: m.key == f"gw:{firm}:SO-SEC-1".encode())
    assert decision.json["requested_by"] == firm


# --- the whole system, each component as itself ------------------------------------------------
async def test_the_pipeline_end_to_end_with_every_component_authenticated(broker, secure_system, tmp_path):
    s = secure_system
    # A firm submits through the command line and gets its decision back.
    body = station_request("P0")
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(body, ensure_ascii=False))
    submitted = s.cli("request", "submit", str(request_file), "--wait", str(TIMEOUT), principal="firm-demo")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    decision = (
        await s.tap.wait_for(s.topics.decisions, lambda m: m.key == body["shipment_id"].encode(), timeout=TIMEOUT)
    )[0].json
    assert decision["decision"] == "approved", decision
    pass_ = decision["pass"]
    assert pass_["pass_id"] in submitted.stdout
    await s.tap.wait_for(
        s.topics.status,
        lambda m: m.json["pass_id"] == pass_["pass_id"] and m.json["status"] == "issued",
        timeout=TIMEOUT,
    )

    # A checkpoint station, as checkpoint-demo, reads the pass and records the truck's arrival.
    checkpoint_id = pass_["route"]["checkpoints"][0]["checkpoint_id"]
    station = start_station(s.env_as("checkpoint-demo"), tmp_path, [checkpoint_id], s.public_key_path).ready()
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, station)

            async def station_knows_the_pass():
                return any(a.get("pass_id") == pass_["pass_id"] for a in (await client.state())["arrivals"])

            await until(station_knows_the_pass, TIMEOUT, "the pass at the station", lambda: station.proc.poll() is None)
            scan = await client.post(
                "api/scan",
                {
                    "kind": "arrival",
                    "pass_id": pass_["pass_id"],
                    "plate": pass_["plate"],
                    "token": pass_["token"],  # the QR shown: a plate alone is `no_token`
                    "checkpoint_id": checkpoint_id,
                },
            )
        status = await s.tap.wait_for(
            s.topics.status, lambda m: m.json["cause"] == f"scan:{scan['scan_id']}", timeout=TIMEOUT
        )
        assert status[0].json["status"] == "at_checkpoint", status[0].json
    finally:
        stop_processes([station.proc])

    # The projector, as projector, put the pass in the database; the operator reads it there.
    async def projected():
        shown = await asyncio.to_thread(s.cli, "pass", "show", pass_["pass_id"])
        return shown.returncode == 0 and "at_checkpoint" in shown.stdout

    await until(
        projected,
        TIMEOUT,
        "the pass and its scan in the projector's database",
        lambda: all(p.poll() is None for p in s.projectors),
    )


# --- a fault, on a secure cluster --------------------------------------------------------------
@pytest.fixture
def secure3(tmp_path_factory):
    """3 secure nodes, as tests/faults/test_faults.py kills a worker on 3 plain ones. (On 1 node, plain or
    secure, the worker taking over stops deciding after ~100 records: a fault of its own, apart
    from security, left open.)"""
    cluster = make_broker("kafka3-secure", tmp_path_factory.mktemp("secure3"))
    cluster.start()
    yield cluster
    cluster.stop()


async def test_worker_killed_mid_stream_on_a_secure_cluster(secure3, tmp_path, tmp_path_factory):
    system = await start_system(secure3, tmp_path, kind="kafka3-secure", prefix=f"sf{uuid.uuid4().hex[:4]}.")
    await worker_killed_mid_stream(system, tmp_path_factory.getbasetemp() / "fault-figures.json", nodes=3)


# --- the command ---------------------------------------------------------------------------------
async def test_the_secure_broker_command_writes_client_files_that_work(tmp_path):
    """`greenchannel broker --kind kafka --secure`: the client files it names connect each principal
    with its own rights; a second run reuses the credentials."""

    def run_broker(log_name: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GC_")} | {"GC_DATA_DIR": str(tmp_path)}
        with open(tmp_path / log_name, "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "broker", "--kind", "kafka", "--secure", "--port", "0"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def settings_of(principal: str) -> Settings:
        lines = (tmp_path / "secure" / "clients" / f"{principal}.env").read_text().splitlines()
        return Settings(
            _env_file=None,
            **{
                k[3:].lower(): v for k, v in (line.split("=", 1) for line in lines if line and not line.startswith("#"))
            },
        )

    passwords = []
    for attempt in ("broker1.log", "broker2.log"):
        proc = run_broker(attempt)
        try:
            await until(
                lambda attempt=attempt: "broker ready at" in (tmp_path / attempt).read_text(errors="replace"),
                TIMEOUT,
                "the secure broker",
                lambda proc=proc: proc.poll() is None,
            )
            assert "client settings, one file per principal, in" in (tmp_path / attempt).read_text()
            firm, operator = settings_of("firm-demo"), settings_of("operator")
            assert os.stat(tmp_path / "secure" / "clients" / "firm-demo.env").st_mode & 0o077 == 0
            await send_as(firm.connection, "gc.shipment.requests", {"shipment_id": "cmd-1"}, key="cmd-1")
            await send_as(operator.connection, "gc.region.risk", {"adcode": "11", "level": "low"}, key="11")
            with pytest.raises(TopicAuthorizationFailedError):
                await send_as(firm.connection, "gc.region.risk", {"adcode": "11", "level": "low"}, key="11")
            passwords.append(firm.kafka_password)
        finally:
            stop_processes([proc])
    assert passwords[0] == passwords[1], "a second run made new credentials"


# --- the README's Security commands, as written ---------------------------------------------------
def readme_commands(section: str) -> list[str]:
    """The command lines of the first `sh` block of README section `section` (comments left out)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = body.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def kcat_why_not() -> str | None:
    """Why the README's kcat line cannot run here (it needs librdkafka 2.6.1+), or None."""
    if shutil.which("kcat") is None:
        return "kcat is not installed"
    said = subprocess.run(["kcat", "-V"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"librdkafka (\d+)\.(\d+)\.(\d+)", said)
    if found is None or tuple(map(int, found.groups())) < (2, 6, 1):
        return f"kcat's librdkafka is older than 2.6.1: {said.strip()[:200]}"
    return None


def kill_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM the process group this test started `proc` in (a subshell and what it runs), then
    wait; SIGKILL after `timeout`."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def test_the_readme_security_commands_run_as_written_from_a_fresh_root(tmp_path):
    """Every command of README "Security", run by bash from a directory laid out as a fresh clone's
    root, with the default settings: no GC_* variable, so the data directory is the relative
    `.greenchannel`. (The only change: a free port instead of 19093, which another run may hold.)
    The broker's ACLs are made (a firm is refused what is not its own), the worker decides the
    firm's request, and the operator sets a risk level."""
    commands = readme_commands("Security")
    assert commands[0].startswith("greenchannel broker --kind kafka --secure --port 19093"), commands[0]
    root = tmp_path / "clone"
    root.mkdir()
    (root / "docs").symlink_to(ROOT / "docs")  # what the commands read of the clone: docs/request.json
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `greenchannel`, as installed
    started: list[subprocess.Popen] = []

    def background(n: int, line: str) -> subprocess.Popen:
        log = open(tmp_path / f"command{n}.log", "wb")  # noqa: SIM115 — closed with the process below
        proc = subprocess.Popen(
            ["bash", "-c", line], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        proc.log_file = log
        started.append(proc)
        return proc

    def logged(n: int) -> str:
        return (tmp_path / f"command{n}.log").read_text(errors="replace")

    broker_line = re.sub(r"\s*\[[^\]]*\]", "", commands[0]).replace("19093", str(port))  # [--nodes 3]: optional
    broker = background(0, broker_line)
    try:
        try:
            await until(
                lambda: "broker ready at" in logged(0),
                TIMEOUT,
                "the README's secure broker",
                lambda: broker.poll() is None,
            )
        except pytest.fail.Exception as exc:
            pytest.fail(f"{exc}; its output ends:\n{logged(0)[-3000:]}")
        assert (root / ".greenchannel" / "secure" / "clients" / "admin.properties").exists()
        admin = Settings(_env_file=None, **_env_file(root / ".greenchannel" / "secure" / "clients" / "admin.env"))
        deadletters = await Tap(admin.connection, ["gc.deadletter", "gc.pass.decisions"]).start()
        try:
            for n, line in enumerate(commands[1:], start=1):
                if line.startswith("kcat "):
                    why = kcat_why_not()
                    if why is not None:
                        print(f"README line {n} not run: {why}")
                        continue
                if line.rstrip().endswith("&"):
                    proc = background(n, line.rstrip().removesuffix("&"))
                    if "greenchannel worker" in line:
                        await _worker_ready(admin, deadletters, proc)
                    continue
                done = subprocess.run(
                    ["bash", "-c", line], cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT
                )
                assert done.returncode == 0, f"README line {n}: {line}\n{done.stdout}\n{done.stderr}"
                if "request submit" in line:  # exit 0: approved; and the decision is on the topic
                    decided = await deadletters.wait_for(
                        "gc.pass.decisions", lambda m: m.key == b"README-SECURITY-0001", timeout=TIMEOUT
                    )
                    assert decided[0].json["decision"] == "approved", decided[0].json
        finally:
            await deadletters.stop()
        # The ACLs are there: a firm may not set a risk level, as the operator just did.
        refused = subprocess.run(
            ["bash", "-c", "(set -a; . .greenchannel/secure/clients/firm-demo.env; greenchannel risk set 4201 low)"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert refused.returncode != 0 and "uthoriz" in refused.stdout + refused.stderr, refused
    finally:
        for proc in reversed(started):
            kill_group(proc)
            proc.log_file.close()


def _env_file(path: Path) -> dict:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {k[3:].lower(): v for k, v in pairs}


async def _worker_ready(admin: Settings, deadletters: Tap, worker: subprocess.Popen) -> None:
    """The README's worker is up once it answers a probe (a request that is not JSON: dead-lettered)."""
    probe = f"probe-{uuid.uuid4().hex}"
    await send_raw(admin.connection, "gc.shipment.requests", b"not json", key=probe)
    await deadletters.wait_for(
        "gc.deadletter", lambda m: m.key == probe.encode(), timeout=TIMEOUT, alive=lambda: worker.poll() is None
    )


async def send_raw(connection: Connection, topic: str, value: bytes, key: str) -> None:
    producer = AIOKafkaProducer(**connection.kwargs(), acks="all", request_timeout_ms=15000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()
