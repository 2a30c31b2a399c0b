"""The firms' gateway over HTTP (FastAPI's TestClient), its requests decided by the real decision core
in process and projected by the projector's own code: two firms, neither sees nor takes the other's."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from models.firms import TokenBucket, channel_shipment_id, parse_api_key, webhook_signature
from models.records import GATEWAY_PREFIX
from models.store import firms as rows
from models.store.db import init_db, make_engine, project_batch
from models.stored import load_decided
from streams.gateway.app import Gateway, create_gateway
from streams.gateway.notify import envelope_of, store_deliveries
from streams.handlers import RecordMeta, Tables
from tests.support.factories import REAL_CREDIT_CODES, good_request, make_pipeline

ALIBABA, TENCENT, XIAOMI = REAL_CREDIT_CODES
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class Channel:
    """The gateway's publisher: each record straight to the decision core, its outputs projected."""

    def __init__(self, engine) -> None:
        self.pipeline, self.tables, self.engine = make_pipeline(), Tables.empty(), engine
        self.published: list[tuple[str, dict]] = []
        self.pipeline_outs: list = []  # every output of the core, for the fuzz's check
        self.failing = False

    async def publish(self, shipment_id: str, value: bytes) -> None:
        if self.failing:
            raise ConnectionError("broker unreachable")
        self.published.append((shipment_id, orjson.loads(value)))
        meta = RecordMeta(self.pipeline.topics.gateway_requests, 0, len(self.published), 1582617600000)
        outs = self.pipeline.on_request(shipment_id.encode(), value, meta, tables=self.tables)
        self.pipeline_outs.extend(outs)
        t = self.pipeline.topics
        dead = [envelope_of("dead_letter", o.value, o.headers, "") for o in outs if o.topic == t.deadletter]
        store_deliveries(self.engine, [e for e in dead if e is not None], NOW)  # as the gateway's feed does
        decisions = [orjson.loads(o.value) for o in outs if o.topic == t.decisions]
        statuses = [
            (f"e{len(self.published)}-{i}", orjson.loads(o.value)) for i, o in enumerate(outs) if o.topic == t.status
        ]
        with Session(self.engine) as s:
            project_batch(s, decisions=decisions, statuses=statuses)


@pytest.fixture
def gateway(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/gw.db")
    init_db(engine)
    with Session(engine) as s:
        rows.create_firm(
            s, firm_id="sf-wuhan", name="顺丰武汉", credit_code=ALIBABA, acts_for=[], requests_per_minute=600, now=NOW
        )
        rows.create_firm(
            s, firm_id="jd-hubei", name="京东湖北", credit_code=TENCENT, acts_for=[], requests_per_minute=600, now=NOW
        )
        keys = {f: rows.create_key(s, firm_id=f, now=NOW).text for f in ("sf-wuhan", "jd-hubei")}
    channel = Channel(engine)
    gw = Gateway(engine=engine, publisher=channel, now=lambda: NOW)
    with TestClient(create_gateway(gw), raise_server_exceptions=True) as client:
        yield client, keys, channel, gw


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_a_firm_applies_and_follows_its_request_to_the_pass_and_prints_it(gateway):
    client, keys, channel, _ = gateway
    r = client.post("/v1/requests", json=good_request(shipment_id="SO-1"), headers=auth(keys["sf-wuhan"]))
    assert r.status_code == 202, r.text
    assert r.json() == {"shipment_id": "SO-1", "status": "accepted", "request_url": "/v1/requests/SO-1"}
    sid, sent = channel.published[0]
    assert sid == "gw:sf-wuhan:SO-1" and sent["requested_by"] == "sf-wuhan" and sent["shipment_id"] == sid
    assert "id_number" not in sent["driver"] and sent["driver"]["binding"]  # the ID number stays out of Kafka
    view = client.get("/v1/requests/SO-1", headers=auth(keys["sf-wuhan"])).json()
    assert view["status"] == "approved" and view["shipment_id"] == "SO-1"
    pass_id = view["decision"]["pass_id"]
    assert view["pass_url"] == f"/v1/passes/{pass_id}"
    the_pass = client.get(f"/v1/passes/{pass_id}", headers=auth(keys["sf-wuhan"])).json()
    assert the_pass["shipment_id"] == "SO-1" and the_pass["status"] == "issued" and the_pass["token"].startswith("GC1:")
    assert [e["status"] for e in the_pass["history"]] == ["issued"]
    png = client.get(f"/v1/passes/{pass_id}/print.png", headers=auth(keys["sf-wuhan"]))
    pdf = client.get(f"/v1/passes/{pass_id}/print.pdf", headers=auth(keys["sf-wuhan"]))
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")


def test_the_decision_names_the_firm_that_asked(gateway):
    client, keys, channel, _ = gateway
    client.post("/v1/requests", json=good_request(shipment_id="SO-2"), headers=auth(keys["sf-wuhan"]))
    decided = load_decided(channel.tables.decided[channel_shipment_id("sf-wuhan", "SO-2")])
    assert orjson.loads(decided.body)["requested_by"] == "sf-wuhan"


def test_two_firms_neither_sees_nor_takes_the_others_requests_or_passes(gateway):
    client, keys, channel, _ = gateway
    sf, jd = auth(keys["sf-wuhan"]), auth(keys["jd-hubei"])
    assert client.post("/v1/requests", json=good_request(shipment_id="SAME"), headers=sf).status_code == 202
    other = good_request(shipment_id="SAME", shipper={"credit_code": TENCENT, "name": "京东"})
    assert client.post("/v1/requests", json=other, headers=jd).status_code == 202  # its own id, not a collision
    assert [sid for sid, _ in channel.published] == ["gw:sf-wuhan:SAME", "gw:jd-hubei:SAME"]
    sf_view, jd_view = (client.get("/v1/requests/SAME", headers=h).json() for h in (sf, jd))
    assert sf_view["decision"]["pass_id"] != jd_view["decision"]["pass_id"]
    sf_pass = sf_view["decision"]["pass_id"]
    for path in (f"/v1/passes/{sf_pass}", f"/v1/passes/{sf_pass}/print.png", f"/v1/passes/{sf_pass}/print.pdf"):
        r = client.get(path, headers=jd)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    listed = client.get("/v1/requests", headers=jd).json()["requests"]
    assert [(v["shipment_id"], v["decision"]["pass_id"]) for v in listed] == [("SAME", jd_view["decision"]["pass_id"])]


def test_a_request_the_worker_dead_letters_says_why_and_is_not_pending_forever(gateway):
    client, keys, channel, _ = gateway
    channel.tables.clocks["0"] = b"2021-02-25T08:00:00Z"  # a year on: a request of 2020 is past the retention
    assert (
        client.post("/v1/requests", json=good_request(shipment_id="OLD-1"), headers=auth(keys["sf-wuhan"])).status_code
        == 202
    )
    view = client.get("/v1/requests/OLD-1", headers=auth(keys["sf-wuhan"])).json()
    assert view["status"] == "dead_letter" and "more than the pass retention" in view["error"], view
    assert view["accepted_at"].endswith("Z") or "+00:00" in view["accepted_at"]


def test_a_repeat_is_accepted_once_and_a_different_body_under_the_same_id_conflicts(gateway):
    client, keys, channel, _ = gateway
    sf = auth(keys["sf-wuhan"])
    body = good_request(shipment_id="SO-3")
    assert client.post("/v1/requests", json=body, headers=sf).status_code == 202
    assert client.post("/v1/requests", json=body, headers=sf).status_code == 202
    assert len(channel.published) == 1
    r = client.post("/v1/requests", json=body | {"trip": "multi"}, headers=sf)
    assert r.status_code == 409 and r.json()["error"] == "conflict"


def test_a_shipper_the_firm_may_not_act_for_is_refused_with_the_reason(gateway):
    client, keys, channel, gw = gateway
    body = good_request(shipment_id="SO-4", shipper={"credit_code": XIAOMI, "name": "小米"})
    r = client.post("/v1/requests", json=body, headers=auth(keys["sf-wuhan"]))
    assert r.status_code == 403 and r.json()["error"] == "not_acting_for"
    assert r.json()["fields"][0]["field"] == "shipper.credit_code" and XIAOMI in r.json()["message"]
    assert channel.published == []
    with Session(gw.engine) as s:
        rows.add_acts_for(s, firm_id="sf-wuhan", codes=[XIAOMI])
    assert client.post("/v1/requests", json=body, headers=auth(keys["sf-wuhan"])).status_code == 202


def test_no_key_a_wrong_key_and_a_revoked_key_are_refused(gateway):
    client, keys, _, gw = gateway
    body = good_request(shipment_id="SO-5")
    assert client.post("/v1/requests", json=body).status_code == 401
    wrong = keys["sf-wuhan"][:-4] + "AAAA"
    assert client.post("/v1/requests", json=body, headers=auth(wrong)).status_code == 401
    assert client.post("/v1/requests", json=body, headers=auth("not a key")).status_code == 401
    with Session(gw.engine) as s:
        rows.revoke_key(s, key_id=parse_api_key(keys["sf-wuhan"]).key_id, now=NOW)
    r = client.get("/v1/requests", headers=auth(keys["sf-wuhan"]))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_only_the_hash_of_a_key_is_stored(gateway):
    _, keys, _, gw = gateway
    key = parse_api_key(keys["sf-wuhan"])
    with Session(gw.engine) as s:
        stored = rows.list_keys(s, firm_id="sf-wuhan")[0]
    assert stored.secret_sha256 == hashlib.sha256(key.secret.encode()).hexdigest()
    assert key.secret not in str(stored.model_dump())


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 422, None),
        (orjson.dumps(good_request(shipment_id="a/b")), 422, "shipment_id"),
        (orjson.dumps(good_request(shipment_id="x" * 200)), 422, "shipment_id"),
        (orjson.dumps(good_request(shipment_id="SO-6", requested_by="jd-hubei")), 422, "requested_by"),
        (orjson.dumps(good_request(shipment_id="SO-7", vehicle={"type": "van"})), 422, "vehicle.plate"),
        (orjson.dumps(good_request(shipment_id="SO-8", cargo="masks")), 422, "cargo"),
        (
            orjson.dumps(
                good_request(
                    shipment_id="SO-9",
                    driver={"name": "张伟", "id_number": "110105194912310021", "phone": "13800138000"},
                )
            ),
            422,
            "driver",
        ),
    ],
)
def test_bad_bodies_get_one_clear_answer_and_nothing_is_sent(gateway, body, status, field):
    client, keys, channel, _ = gateway
    r = client.post("/v1/requests", content=body, headers=auth(keys["sf-wuhan"]) | {"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"] and r.json()["message"]
    if field is not None:
        assert any(f["field"] == field for f in r.json()["fields"]), r.json()
    assert channel.published == []


def test_fields_past_the_workers_input_limits_are_refused_with_their_paths(gateway):
    client, keys, channel, _ = gateway
    long_name = good_request(shipment_id="SO-L1", consignee={"credit_code": TENCENT, "name": "名" * 300})
    many = good_request(shipment_id="SO-L2", cargo=[good_request()["cargo"][0]] * 101)
    for body, field in ((long_name, "consignee.name"), (many, "cargo")):
        r = client.post("/v1/requests", json=body, headers=auth(keys["sf-wuhan"]))
        assert r.status_code == 422 and r.json()["error"] == "too_long", r.text
        assert [f["field"] for f in r.json()["fields"]] == [field]
    assert channel.published == []


def test_a_body_past_the_workers_limit_is_refused_unread(gateway):
    client, keys, channel, _ = gateway
    big = orjson.dumps(good_request(shipment_id="SO-9", filler="x" * 70_000))
    r = client.post("/v1/requests", content=big, headers=auth(keys["sf-wuhan"]) | {"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large" and channel.published == []


def test_a_request_the_broker_did_not_take_can_be_sent_again(gateway):
    client, keys, channel, _ = gateway
    channel.failing = True
    body = good_request(shipment_id="SO-10")
    r = client.post("/v1/requests", json=body, headers=auth(keys["sf-wuhan"]))
    assert r.status_code == 503 and r.json()["error"] == "unavailable"
    assert client.get("/v1/requests/SO-10", headers=auth(keys["sf-wuhan"])).status_code == 404
    channel.failing = False
    assert client.post("/v1/requests", json=body, headers=auth(keys["sf-wuhan"])).status_code == 202


def test_a_firm_past_its_rate_is_told_when_to_come_back(gateway):
    client, keys, _, gw = gateway
    now = [0.0]
    gw.monotonic = lambda: now[0]
    sf = auth(keys["sf-wuhan"])
    answers = [client.get("/v1/requests", headers=sf).status_code for _ in range(101)]
    assert answers[:100] == [200] * 100 and answers[100] == 429  # a burst of 600/6 a minute
    r = client.get("/v1/requests", headers=sf)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert client.get("/v1/requests", headers=auth(keys["jd-hubei"])).status_code == 200  # each firm its own
    now[0] += 1.0
    assert client.get("/v1/requests", headers=sf).status_code == 200  # 10 a second come back


def test_the_openapi_document_describes_the_request_body_and_the_key():
    from streams.gateway.app import create_gateway as make

    doc = make(Gateway(engine=None, publisher=None)).openapi()  # type: ignore[arg-type]
    body = doc["paths"]["/v1/requests"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "shipper" in body["properties"] and "shipment_id" in body["required"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert {"/v1/passes/{pass_id}/print.png", "/v1/passes/{pass_id}/print.pdf"} <= set(doc["paths"])


def test_the_kafka_route_may_not_use_the_gateways_ids_or_name_a_firm():
    pipeline, tables = make_pipeline(), Tables.empty()
    t = pipeline.topics
    for body in (good_request(shipment_id=f"{GATEWAY_PREFIX}sf-wuhan:SO-1"), good_request(requested_by="sf-wuhan")):
        value = orjson.dumps(body)
        [out] = pipeline.on_request(b"k", value, RecordMeta(t.requests, 0, 0, 0), tables=tables)
        assert out.topic == t.deadletter
        error = orjson.loads(out.value)["error"]
        assert error.startswith(("reserved:", "requested_by:")), error
    value = orjson.dumps(good_request(shipment_id="gw:jd-hubei:X", requested_by="sf-wuhan"))
    [out] = pipeline.on_request(b"k", value, RecordMeta(t.gateway_requests, 0, 0, 0), tables=tables)
    assert out.topic == t.deadletter  # a gateway record naming one firm and another's id: refused too


def test_a_webhook_signature_is_checked_with_the_firms_secret():
    body = b'{"pass_id":"P1"}'
    signature = webhook_signature("s3cret", 1765000000, body)
    assert signature.startswith("t=1765000000,v1=") and len(signature.split("v1=")[1]) == 64
    assert signature != webhook_signature("other", 1765000000, body)
    assert signature != webhook_signature("s3cret", 1765000001, body)


def test_a_token_bucket_refills_at_its_rate():
    bucket = TokenBucket(rate=2.0, burst=2.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert bucket.take(0.5) == 0.0
