"""The gateway's notifications: whose an event is, one delivery per firm and event, webhooks signed
and retried against a real HTTP receiver on loopback, the event stream's queue."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import UTC, datetime

import orjson
import pytest
from aiohttp import web
from sqlmodel import Session, select

from models.firms import split_channel_id, webhook_url_refusal
from models.store import firms as rows
from models.store.db import init_db, make_engine
from models.store.tables import WebhookDelivery
from streams.gateway.notify import Deliverer, Hub, envelope_of, retry_after, store_deliveries
from tests.support.factories import REAL_CREDIT_CODES, until

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
DECISION = {
    "shipment_id": "gw:sf-wuhan:SO-1",
    "decision": "approved",
    "pass": {"pass_id": "P42"},
    "requested_by": "sf-wuhan",
}
STATUS = {"pass_id": "P42", "shipment_id": "gw:sf-wuhan:SO-1", "status": "rerouted", "cause": "risk:4201"}


def test_an_event_is_the_firms_whose_shipment_id_it_is():
    e = envelope_of("decision", orjson.dumps(DECISION), [], "d:0:1")
    assert (e.firm_id, e.shipment_id, e.pass_id, e.event_id) == ("sf-wuhan", "SO-1", "P42", "decision:gw:sf-wuhan:SO-1")
    assert e.data["shipment_id"] == "SO-1"  # the firm's own id, everywhere it reads
    s = envelope_of("status", orjson.dumps(STATUS), [("ce_id", b"ev-9")], "s:0:7")
    assert (s.kind, s.event_id, s.pass_id) == ("status", "ev-9", "P42")
    assert (
        envelope_of("status", orjson.dumps(STATUS | {"shipment_id": "S-1"}), [], "s:0:8") is None
    )  # the Kafka route's
    assert envelope_of("status", b"not json", [], "s:0:9") is None
    assert split_channel_id("gw:sf-wuhan:a:b") == ("sf-wuhan", "a:b") and split_channel_id("gw:X:1") is None


def test_webhooks_go_to_https_or_the_loopback_only():
    assert webhook_url_refusal("https://hooks.example.cn/gc") is None
    assert webhook_url_refusal("http://127.0.0.1:9000/hook") is None
    assert webhook_url_refusal("http://10.0.0.5/hook") and webhook_url_refusal("file:///etc/passwd")


def test_backoff_doubles_to_an_hour_and_gives_up():
    assert [retry_after(n, 5.0) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert retry_after(9, 5.0) == 1280.0 and retry_after(10, 5.0) is None


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/gw.db")
    init_db(engine)
    with Session(engine) as s:
        for firm_id, code in (("sf-wuhan", REAL_CREDIT_CODES[0]), ("jd-hubei", REAL_CREDIT_CODES[1])):
            rows.create_firm(
                s, firm_id=firm_id, name=firm_id, credit_code=code, acts_for=[], requests_per_minute=60, now=NOW
            )
    return engine


def test_one_delivery_per_firm_and_event_and_none_without_a_webhook(engine):
    e = envelope_of("decision", orjson.dumps(DECISION), [], "d:0:1")
    other = envelope_of("decision", orjson.dumps(DECISION | {"shipment_id": "gw:jd-hubei:SO-1"}), [], "d:0:2")
    assert store_deliveries(engine, [e, other], NOW) == 0  # no webhooks yet
    with Session(engine) as s:
        rows.set_webhook(s, firm_id="sf-wuhan", url="https://hooks.example.cn/gc")
    assert store_deliveries(engine, [e, other], NOW) == 1
    assert store_deliveries(engine, [e], NOW) == 0  # the record read again: the same delivery
    with Session(engine) as s:
        assert [(d.firm_id, d.event_id) for d in s.exec(select(WebhookDelivery))] == [("sf-wuhan", e.event_id)]


async def test_a_failing_webhook_is_retried_and_each_delivery_is_signed(engine, unused_tcp_port):
    hits: list[tuple[int, dict, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append((len(hits), dict(request.headers), await request.read()))
        return web.Response(status=503 if len(hits) == 1 else 204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    with Session(engine) as s:
        _, secret = rows.set_webhook(s, firm_id="sf-wuhan", url=f"http://127.0.0.1:{unused_tcp_port}/hook")
    store_deliveries(engine, [envelope_of("status", orjson.dumps(STATUS), [("ce_id", b"ev-9")], "s:0:7")], NOW)
    deliverer = Deliverer(engine, retry_s=0.05)
    task = asyncio.create_task(deliverer.run())
    try:
        await until(lambda: len(hits) >= 2, 30, "the webhook's second try")
        with Session(engine) as s:
            delivered = await until(
                lambda: s.exec(select(WebhookDelivery)).one().delivered_at, 30, "the delivery marked"
            )
            row = s.exec(select(WebhookDelivery)).one()
    finally:
        task.cancel()
        await runner.cleanup()
    assert delivered and row.attempts == 2 and row.last_error is None
    _, headers, body = hits[1]
    assert headers["Greenchannel-Event-Id"] == "ev-9" and orjson.loads(body)["data"]["status"] == "rerouted"
    t, v1 = (part.split("=", 1)[1] for part in headers["Greenchannel-Signature"].split(","))
    assert hmac.compare_digest(v1, hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest())


async def test_an_event_stream_that_falls_behind_is_closed():
    hub = Hub()
    queue = hub.open("sf-wuhan")
    e = envelope_of("decision", orjson.dumps(DECISION), [], "d:0:1")
    for _ in range(1001):
        hub.tell(e)
    assert not hub.streams["sf-wuhan"]
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    assert items[-1] is None and len(items) == 1000
