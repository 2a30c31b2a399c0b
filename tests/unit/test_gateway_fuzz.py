"""Fuzzing the gateway's API with the worker's hostile inputs (tests/unit/test_fuzz.py): any bytes,
schema-shaped JSON, a valid request with an extreme value anywhere, hostile ids and keys. Every call
gets one clear answer (a 2xx, or an error with its code and message) and never a 500; what reaches the
worker is answered by it without an internal error."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from urllib.parse import quote

import orjson
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from sqlmodel import Session

from models.store import firms as rows
from models.store.db import init_db, make_engine
from streams.gateway.app import Gateway, create_gateway
from tests.support.factories import SCHEMAS
from tests.unit.test_fuzz import EXTREMES, REQUESTS, encode, mutated
from tests.unit.test_gateway import NOW, Channel

ANSWERS = {200, 202, 400, 401, 403, 404, 409, 413, 422, 429}
# Each example goes through the database and the decision core: fewer than the worker's fuzz, which
# covers the core itself (the `ci` profile's other settings hold: derandomized, no deadline).
FEW = settings(max_examples=50)


def _client() -> tuple[TestClient, dict, Channel]:
    engine = make_engine(f"sqlite:///{tempfile.mkdtemp()}/gw.db")
    init_db(engine)
    shippers = sorted({r["shipper"]["credit_code"] for r in REQUESTS})
    with Session(engine) as s:
        rows.create_firm(
            s, firm_id="fuzz", name="f", credit_code=shippers[0], acts_for=shippers, requests_per_minute=10**9, now=NOW
        )
        key = rows.create_key(s, firm_id="fuzz", now=NOW).text
    channel = Channel(engine)
    return (
        # hostile keys by the thousand from one address: not slowed here (tests/unit/test_portal.py is)
        TestClient(
            create_gateway(Gateway(engine=engine, publisher=channel, failures_per_minute=10**9, failures_burst=10**9))
        ),
        {"Authorization": f"Bearer {key}"},
        channel,
    )


CLIENT, AUTH, CHANNEL = _client()
SCHEMA = json.loads((SCHEMAS / "ShipmentRequest.schema.json").read_text())


def answered(response) -> None:
    assert response.status_code in ANSWERS, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert body["error"] and body["message"], body


def no_internal_error() -> None:
    for record in CHANNEL.pipeline_outs:
        assert b"internal error" not in record.value, record.value[:500]
    CHANNEL.pipeline_outs.clear()


def post(body: bytes) -> None:
    answered(CLIENT.post("/v1/requests", content=body, headers=AUTH | {"content-type": "application/json"}))
    no_internal_error()


@FEW
@given(st.binary(max_size=2048))
def test_any_bytes_as_a_request(value):
    post(value)


@FEW
@given(from_schema(SCHEMA))
def test_schema_shaped_requests(obj):
    post(encode(obj))


@FEW
@given(st.sampled_from(REQUESTS).flatmap(mutated))
def test_requests_with_an_extreme_value_anywhere(obj):
    post(encode(obj))


@FEW
@given(EXTREMES.map(lambda v: v if isinstance(v, str) else encode(v).decode()))
def test_hostile_ids_keys_and_pages(text):
    quoted = quote(text[:1000], safe="")
    for path in (f"/v1/requests/{quoted}", f"/v1/passes/{quoted}", f"/v1/passes/{quoted}/print.pdf"):
        answered(CLIENT.get(path, headers=AUTH))
    answered(CLIENT.get("/v1/requests", params={"before": text[:3000], "limit": 5}, headers=AUTH))
    header = "".join(c for c in text if 32 <= ord(c) < 127)[:3000]
    answered(CLIENT.get("/v1/requests", headers={"Authorization": f"Bearer {header}"}))


def test_query_parameters_out_of_range_are_field_errors():
    for limit in ("0", "-1", "201", "x", "1e9"):
        r = CLIENT.get("/v1/requests", params={"limit": limit}, headers=AUTH)
        assert r.status_code == 422 and r.json()["fields"][0]["field"] == "query.limit", r.text


def test_unknown_paths_and_methods_answer_in_the_same_shape():
    assert CLIENT.get("/v1/nothing", headers=AUTH).json()["error"] == "not_found"
    assert CLIENT.delete("/v1/requests", headers=AUTH).json()["error"] == "method_not_allowed"


def test_the_worker_answers_what_the_gateway_took(tmp_path: Path):
    accepted = [r for r in REQUESTS if CLIENT.post("/v1/requests", json=r, headers=AUTH).status_code == 202]
    assert accepted  # the scenario's own requests pass the gateway's checks
    decided = {
        orjson.loads(o.value)["shipment_id"]
        for o in CHANNEL.pipeline_outs
        if o.topic == CHANNEL.pipeline.topics.decisions
    }
    assert {f"gw:fuzz:{r['shipment_id']}" for r in accepted} <= decided
    no_internal_error()
