"""What the tests share: the core wired with a fixed test key, factories of requests, passes and stations' traffic, and
schema validators."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import random
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import base45
import cbor2
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator, FormatChecker

from models.credential import PREFIX, legacy_sign
from models.keyring import Keyring
from models.passes import PassState, Signer, kafka_partition
from models.records import format_time
from models.tracking import Tracker
from streams.bootstrap import build_pipeline
from streams.dev.simulator import Scenario, make_credit_code
from streams.handlers import Pipeline, RecordMeta, Tables, Topics
from streams.keys import key_id
from streams.settings import Settings

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SIGNER = Signer(KEY, key_id(KEY.public_key()))  # the test key under its real key id
ROOT_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))  # the tests' root of trust
T = Topics.with_prefix("gc.")


def validator(name):
    return Draft202012Validator(
        json.loads((SCHEMAS / f"{name}.schema.json").read_text()), format_checker=FormatChecker()
    )


DEPARTURE = datetime(2020, 2, 25, 8, 0, tzinfo=UTC)


# The core as the tests wire it: set here, not read from GC_ variables a lane may export.
SETTINGS = Settings(
    _env_file=None,
    topic_prefix="gc.",
    partitions=4,
    catalog="catalog-2020.02-v1.json",
    geocoder="offline",
    pass_retention_days=7.0,
)


def make_tracker(signer: Signer | Keyring | None = None, keys=None) -> Tracker:
    """The core with no risk levels or key enterprises in force yet, signing with `signer` (one key,
    or a keyring, which then also verifies)."""
    return make_pipeline(signer, keys).tracker


def make_pipeline(signer: Signer | Keyring | None = None, keys=None) -> Pipeline:
    if keys is None and not isinstance(signer, Keyring):
        keys = KEY.public_key()
    pipeline = build_pipeline(SETTINGS, signer=Signer(KEY, "test") if signer is None else signer, keys=keys)
    ring = pipeline.decider.keyring
    ring.root = ring.root or ROOT_KEY.public_key()  # the keys topic's records are the tests' root's
    return pipeline


def wuhan_to_guangzhou(tracker: Tracker, **fields) -> PassState:
    """A pass from Wuhan (420111) to Guangzhou (440106) on the shortest route, valid 48 h from
    DEPARTURE; `fields` override any of its fields."""
    d = tracker.decider
    route = d.planner.plan(d.gazetteer.locate("420111"), d.gazetteer.locate("440106"), departure=DEPARTURE)
    base = dict(
        pass_id="420111000001",
        shipment_id="S-1",
        plate="鄂A12345",
        priority="P1",
        shipper="91420100MA4K0000X1",
        consignee="91440101MA5C0000X2",
        origin="420111",
        destination="440106",
        trip="one_way",
        valid_from=format_time(DEPARTURE),
        valid_until=format_time(DEPARTURE + timedelta(hours=48)),
        departure_at=format_time(DEPARTURE),
        route=route.to_dict(),
    )
    return PassState(**{**base, **fields})


def token_of(state: PassState, signer: Signer = SIGNER, **claims) -> str:
    """The token `signer` gives `state` (its claims as the worker makes them; `claims` override them)."""
    return signer.token(
        {
            "pid": state.pass_id,
            "plate": state.plate,
            "nbf": state.valid_from,
            "exp": state.valid_until,
            "cp": state.checkpoint_ids,
            "drv": state.driver_binding,
            **claims,
        }
    )


def legacy_token_of(state: PassState, signer: Signer = SIGNER, **claims) -> str:
    """The token of the format before COSE (base64url JSON claims + signature) `signer` gave `state`
    (`claims` override its claims, `kid` too)."""
    kid = claims.pop("kid", signer.key_id)
    body = {
        "pid": state.pass_id,
        "plate": state.plate,
        "nbf": state.valid_from,
        "exp": state.valid_until,
        "rt": state.route["adcodes"],
        "cp": state.checkpoint_ids,
        **claims,
    }
    return legacy_sign(body, signer._key, kid)


def decision_of(state: PassState) -> dict:
    """An approval of `state`, as the decisions topic carries it, its token signed by SIGNER."""
    return {
        "decision": "approved",
        "shipment_id": state.shipment_id,
        "pass": {
            "pass_id": state.pass_id,
            "plate": state.plate,
            "priority": state.priority,
            "toll_exempt": True,
            "valid_from": state.valid_from,
            "valid_until": state.valid_until,
            "trip": state.trip,
            "route": state.route,
            "token": token_of(state),
        },
    }


def forged(token: str) -> str:
    """The token with its validity stretched by a year, its signature kept (either format)."""
    if not token.startswith(PREFIX):
        body, sig = token.split(".")
        claims = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        claims["exp"] = str(int(claims["exp"][:4]) + 1) + claims["exp"][4:]
        return base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode() + "." + sig
    message = cbor2.loads(base45.b45decode(token[len(PREFIX) :]))
    protected, unprotected, payload, signature = message.value
    claims = dict(cbor2.loads(payload))
    claims[4] += 365 * 86400
    stretched = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, cbor2.dumps(claims, canonical=True), signature]))
    return PREFIX + base45.b45encode(stretched).decode()


# --- the stations' tests: requests of today, from Hangzhou (330106) to Xinyu (360502) -----------
STATION_SCENARIO = Scenario(seed=1111)
_RNG = random.Random()
STATION_TIMEOUT = 120.0  # seconds: exactly_once on Apache Kafka makes a decision wait for its transaction


def station_request(kind: str) -> dict:
    """A `kind` (P0…P3) request departing a quarter of an hour ago, single trip, a fresh plate."""
    body = STATION_SCENARIO.request(_RNG.randrange(10**6), kind=kind)
    now = datetime.now(UTC)
    body.update(
        shipment_id=f"STN-{uuid.uuid4().hex[:10]}",
        submitted_at=format_time(now - timedelta(minutes=20)),
        departure_at=format_time(now - timedelta(minutes=15)),
        origin={"adcode": "330106"},
        destination={"adcode": "360502"},
        trip="single",
    )
    body["vehicle"]["plate"] = f"浙{_RNG.choice('ABCDEFG')}{_RNG.randrange(10000, 99999)}"
    return body


async def decided(system, body: dict) -> dict:
    """Send `body` as a firm would and return its decision, which must be an approval."""
    await system.send(system.topics.requests, body, key=body["shipment_id"])
    found = await system.tap.wait_for(
        system.topics.decisions, lambda m, body=body: m.key == body["shipment_id"].encode(), timeout=STATION_TIMEOUT
    )
    decision = found[0].json
    assert decision["decision"] == "approved", decision
    return decision


async def publish(system, bodies: list[dict], timeout: float = STATION_TIMEOUT) -> dict[str, dict]:
    """Send the requests and wait for one decision each, and for the `issued` status of each
    pass approved (on Kafka it commits in a transaction of its own, often after the decision's:
    a reader started in between, such as a replay's window, would miss it); {shipment_id: decision}."""
    for body in bodies:
        await system.send(system.topics.requests, body, key=body["shipment_id"])
    ids = {b["shipment_id"].encode() for b in bodies}
    found = await system.tap.wait_for(system.topics.decisions, lambda m: m.key in ids, len(ids), timeout=timeout)
    passes = {m.json["pass"]["pass_id"].encode() for m in found if m.json["pass"]}
    await system.tap.wait_for(
        system.topics.status, lambda m: m.key in passes and m.json["status"] == "issued", len(passes), timeout=timeout
    )
    return {m.key.decode(): m.json for m in found}


def wuhan_to_hangzhou_probe(scenario: Scenario) -> Callable[[int], dict]:
    """`load_key_enterprises`'s probe on a road no test raises: a P2 request Wuhan -> Hangzhou."""

    def probe(n: int) -> dict:
        body = scenario.request(n, kind="P2")
        body.update(origin={"adcode": "420111"}, destination={"adcode": "330106"})
        return body

    return probe


async def load_key_enterprises(system, scenario: Scenario, probe: Callable[[int], dict], timeout: float = 120) -> None:
    """Send `scenario`'s key-enterprise list as operators do, and wait until the worker has
    applied every entry. The list reaches it through another topic than the requests (each entry
    on the partition of its credit code), so a request sent at once may be decided before the
    entry it needs is in the books. Each entry is proven applied by a probe: a key-industry
    request `probe(n)` with that enterprise as its consignee (and an id of its own, PROBE-…,
    outside the tests'), re-sent until approved. Probes are real requests: approved ones have
    passes, whose `issued` status is out too before this returns."""
    for entry in scenario.enterprise_entries():
        await system.send(system.topics.enterprises, entry, key=entry["credit_code"])
    pending, deadline, n = list(scenario.key_enterprises), time.monotonic() + timeout, 0
    while pending:
        probes = []
        for code, name in pending:
            body = probe(n)
            body.update(shipment_id=f"PROBE-{uuid.uuid4().hex[:12]}", consignee={"credit_code": code, "name": name})
            probes.append(body)
            n += 1
        answers = await publish(system, probes)
        refused = [(firm, answers[body["shipment_id"]]) for firm, body in zip(pending, probes)]
        refused = [(firm, d) for firm, d in refused if d["decision"] != "approved"]
        others = [d for _, d in refused if d["reasons"][0]["code"] != "no_key_enterprise"]
        assert not others, f"a probe was refused for another reason than its missing entry: {others[0]}"
        pending = [firm for firm, _ in refused]
        assert not pending or time.monotonic() < deadline, f"{len(pending)} key enterprises not applied by the worker"


async def until(predicate, timeout: float, what: str, alive=lambda: True):
    """Poll `predicate()` (a plain function, or one returning an awaitable) until its value is
    truthy, and return it; fail after `timeout` seconds, or when `alive()` turns false."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if not alive():
            pytest.fail(f"gave up waiting for {what}: a process it needs has exited")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)  # polling a condition with a deadline


async def handled(system, topic: str, partitions: Iterable[int], timeout: float = STATION_TIMEOUT, alive=lambda: True):
    """Wait until the worker has handled every record sent so far to `partitions` of `topic`, and
    the tap has read what it wrote meanwhile: a malformed marker sent to each partition is
    dead-lettered after every earlier record of that partition (the worker handles a partition in
    order), whose outputs were committed with or before the marker's dead letter."""
    tag, partitions, keys = uuid.uuid4().hex[:8], sorted(partitions), set()
    for p in partitions:
        key = f"marker-{tag}-{p}".encode()
        await system.producer.send_and_wait(topic, b"marker: not json", key=key, partition=p)
        keys.add(key)
    await until(
        lambda: {m.key for m in system.tap.where(system.topics.deadletter)} >= keys,
        timeout,
        f"the markers of {topic} partitions {partitions}",
        alive,
    )
    await system.tap.caught_up([system.topics.decisions, system.topics.status, system.topics.deadletter])


def allocated(make) -> tuple[int, object]:
    """Bytes allocated (and still held) by what `make()` returns, as tracemalloc counts them."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        value = make()
        return tracemalloc.get_traced_memory()[0] - before, value
    finally:
        tracemalloc.stop()


# --- the core driven by hand, as the worker's agents drive it -----------------------------------
def feed_reference(pipeline: Pipeline, scenario: Scenario) -> None:
    for i, entry in enumerate(scenario.enterprise_entries()):
        pipeline.on_enterprise(None, orjson.dumps(entry), RecordMeta(pipeline.topics.enterprises, 0, i, 0))


def run_requests(pipeline, messages, tables=None):
    """The requests through the handlers, each on the partition its key is produced to."""
    tables = Tables.empty() if tables is None else tables
    outs = []
    for offset, (key, value) in enumerate(messages):
        partition = kafka_partition(key, pipeline.partitions) if key else 0
        outs.append(
            pipeline.on_request(
                key, value, RecordMeta(pipeline.topics.requests, partition, offset, 1582617600000), tables=tables
            )
        )
    return outs


# --- requests ------------------------------------------------------------------------------------
# Published codes of real companies (Alibaba, Tencent, Xiaomi) and the GB 11643 sample IDs.
REAL_CREDIT_CODES = ["91330100799655058B", "9144030071526726XG", "91110108551385082Q"]


def codes(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [make_credit_code(rng, "420100") for _ in range(n)]


def bad_check(code: str) -> str:
    """The same code with a wrong check character."""
    return code[:17] + ("0" if code[17] != "0" else "1")


def good_request(**over):
    body = {
        "shipment_id": "S1",
        "submitted_at": "2020-02-25T08:00:00+08:00",
        "shipper": {"credit_code": REAL_CREDIT_CODES[0], "name": "A"},
        "consignee": {"credit_code": REAL_CREDIT_CODES[1], "name": "B"},
        "cargo": [{"hs_code": "6307.90", "description": "口罩", "quantity": 10, "unit": "boxes"}],
        "vehicle": {"plate": "鄂A·12345", "type": "van"},
        "driver": {"name": "张伟", "id_number": "11010519491231002X", "phone": "13800138000"},
        "origin": {"adcode": "420111"},
        "destination": {"address": "广州市天河区"},
        "departure_at": "2020-02-25T10:00:00Z",
        "trip": "single",
    }
    body.update(over)
    return body


# Prefecture-level cities with no county below them: their passes end at the city.
CITIES_WITHOUT_COUNTIES = {"441900": "东莞市", "442000": "中山市", "620200": "嘉峪关市", "460400": "儋州市"}


def signed_key_record(public, status: str = "active", at: datetime | None = None, **grant) -> dict:
    """A keys-topic record of `public` signed by the tests' root (`ROOT_KEY`); `at` None: since ever."""
    from models.keyring import key_entry

    return key_entry(public, status, at=at, root=ROOT_KEY, **grant)
