"""/metrics in the Prometheus text format: what the pipeline counts, and the helper for any aiohttp
app (the worker's and the projector's endpoints in the running system: tests/integration/test_metrics_live.py)."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from models.passes import kafka_partition
from streams.dev.simulator import Scenario
from streams.handlers import RecordMeta, Tables
from streams.metrics import PrometheusMeter, add_metrics_route, new_registry, render
from streams.web import start_site
from tests.support.factories import T, make_pipeline
from tests.support.metrics import http_get, samples


def test_the_pipeline_counts_decisions_statuses_dead_letters_and_times_handlers():
    pipeline = make_pipeline()
    meter = pipeline.meter = PrometheusMeter(new_registry())
    tables = Tables.empty()
    scenario = Scenario(seed=7)
    for n, kind in enumerate(("P0", "P0", "none")):
        key = f"SHP-M-{n}".encode()
        body = {**scenario.request(n, kind=kind), "shipment_id": key.decode()}
        pipeline.on_request(
            key, orjson.dumps(body), RecordMeta(pipeline.topics.requests, kafka_partition(key, 4), n, 0), tables=tables
        )
    pipeline.on_request(b"x", b"not json", RecordMeta(pipeline.topics.requests, 0, 9, 0), tables=tables)
    meter.handled(T.requests, 0.0003)
    got = samples(render(meter.registry).decode())
    assert got[("gc_decisions_total", (("outcome", "approved"), ("priority", "P0")))] == 2
    assert got[("gc_decisions_total", (("outcome", "rejected"), ("priority", "none")))] == 1
    assert got[("gc_pass_statuses_total", (("status", "issued"),))] == 2
    assert got[("gc_dead_letters_total", (("topic", T.requests),))] == 1
    assert got[("gc_handler_seconds_bucket", (("le", "0.0005"), ("topic", T.requests)))] == 1
    assert ("process_cpu_seconds_total", ()) in got


async def test_any_aiohttp_app_can_serve_its_metrics():
    registry = new_registry()
    meter = PrometheusMeter(registry)
    meter.status("delivered")
    app = web.Application()
    add_metrics_route(app, registry)
    runner = await start_site(app, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
        body, kind = await asyncio.to_thread(http_get, url)
        assert (
            kind.startswith("text/plain") and samples(body)[("gc_pass_statuses_total", (("status", "delivered"),))] == 1
        )
    finally:
        await runner.cleanup()
