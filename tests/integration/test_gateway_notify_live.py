"""A firm told of its pass's reroute by the running system: by its webhook (signed, checked here as a
firm would) and on its event stream. Its own topics (own_system): the test raises a province now."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from datetime import timedelta

import aiohttp
import orjson
import pytest
from aiohttp import web

from models.records import format_time, parse_time
from streams.dev.simulator import Scenario
from tests.support.factories import STATION_TIMEOUT, until
from tests.support.system import start_gateway, stop_processes


@pytest.fixture(scope="module")
async def receiver(unused_tcp_port_factory):
    """A firm's webhook endpoint on loopback: what it received, in order."""
    port, got = unused_tcp_port_factory(), []

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hook", got
    await runner.cleanup()


async def _stream(http, url: str, headers: dict, into: list) -> None:
    """Read the event stream into `into` as (event, data) until cancelled; ("connected", None) first."""
    async with http.get(f"{url}v1/events", headers=headers, timeout=aiohttp.ClientTimeout(total=None)) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
        event = None
        async for line in r.content:
            text = line.decode().rstrip("\n")
            if text == ": connected":
                into.append(("connected", None))
            elif text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: "):
                into.append((event, orjson.loads(text[6:])))


async def test_the_reroute_of_a_pass_reaches_the_firms_webhook_signed_and_its_event_stream(own_system, receiver):
    system, (hook_url, got) = own_system, receiver
    scenario, firm_id = Scenario(seed=2627), f"sf-{uuid.uuid4().hex[:6]}"
    body = scenario.request(1, kind="P0")
    body.update(shipment_id="SO-R1", origin={"adcode": "420111"}, destination={"adcode": "440106"})  # via Hunan
    shipper = body["shipper"]["credit_code"]
    assert system.cli("firms", "add", firm_id, "--name", "sf", "--credit-code", shipper).returncode == 0
    made = system.cli("firms", "key", "new", firm_id)
    assert made.returncode == 0, made.stdout + made.stderr
    key = made.stdout.strip().splitlines()[-1]
    hooked = system.cli("firms", "webhook", firm_id, hook_url)
    assert hooked.returncode == 0, hooked.stdout + hooked.stderr
    secret = hooked.stdout.rsplit(": ", 1)[1].strip()
    gateway = start_gateway(system.env_as("gateway"), system.data_dir, "gateway").ready()
    events: list = []
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with aiohttp.ClientSession() as http:
            streaming = asyncio.create_task(_stream(http, gateway.url, headers, events))
            await until(
                lambda: events,
                60,
                "the event stream connected",
                alive=lambda: not streaming.done() or streaming.result(),
            )  # its error, if it ended
            async with http.post(f"{gateway.url}v1/requests", json=body, headers=headers) as r:
                assert r.status == 202, await r.text()
            decided = await until(
                lambda: any(e == "decision" for e, _ in events), STATION_TIMEOUT, "the decision event"
            )
            assert decided
            [decision] = [d["data"] for e, d in events if e == "decision"]
            assert decision["decision"] == "approved" and decision["shipment_id"] == "SO-R1"
            at = format_time(parse_time(decision["decided_at"]) + timedelta(minutes=1))
            await system.send(
                system.topics.risk, {"adcode": "430000", "level": "high", "effective_at": at}, key="430000"
            )

            def rerouted():
                return [b for _, b in got if orjson.loads(b)["data"].get("status") == "rerouted"]

            [hooked_body] = await until(rerouted, STATION_TIMEOUT, "the reroute at the webhook")
            await until(
                lambda: any(d and d["data"].get("status") == "rerouted" for _, d in events), 30, "the reroute streamed"
            )
            streaming.cancel()
            async with http.get(f"{gateway.url}v1/webhook/deliveries", headers=headers) as r:
                deliveries = (await r.json())["deliveries"]
    finally:
        stop_processes([gateway.proc])
    sent_headers = next(h for h, b in got if b == hooked_body)
    t, v1 = (part.split("=", 1)[1] for part in sent_headers["Greenchannel-Signature"].split(","))
    assert hmac.compare_digest(
        v1, hmac.new(secret.encode(), f"{t}.".encode() + hooked_body, hashlib.sha256).hexdigest()
    )
    assert orjson.loads(hooked_body)["shipment_id"] == "SO-R1"
    # A decision and its pass's statuses are on different topics: they may come in either order.
    kinds = {orjson.loads(b)["type"] for _, b in got}
    assert kinds == {"decision", "status"}
    assert all(d["delivered_at"] for d in deliveries) and {d["kind"] for d in deliveries} == {"decision", "status"}
