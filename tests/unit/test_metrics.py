"""/metrics in the Prometheus text format: what the pipeline counts, the helper for any aiohttp
app, and the worker's and the projector's endpoints in the running system."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from models.passes import kafka_partition
from streams.broker import free_port
from streams.handlers import Tables
from streams.metrics import PrometheusMeter, add_metrics_route, new_registry, render
from streams.simulator import Scenario
from streams.web import start_site
from tests.conftest import start_projector, stop_processes
from support import T, make_pipeline


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_pipeline_counts_decisions_statuses_dead_letters_and_times_handlers():
    pipeline = make_pipeline()
    meter = pipeline.meter = PrometheusMeter(new_registry())
    tables = Tables.empty()
    scenario = Scenario(seed=7)
    for n, kind in enumerate(("P0", "P0", "none")):
        key = f"SHP-M-{n}".encode()
        body = {**scenario.request(n, kind=kind), "shipment_id": key.decode()}
        pipeline.on_request(key, orjson.dumps(body), partition=kafka_partition(key, 4), offset=n, timestamp_ms=0,
                            tables=tables)
    pipeline.on_request(b"x", b"not json", partition=0, offset=9, timestamp_ms=0, tables=tables)
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
        body, kind = await asyncio.to_thread(_get, url)
        assert kind.startswith("text/plain") and samples(body)[("gc_pass_statuses_total", (("status", "delivered"),))] == 1
    finally:
        await runner.cleanup()


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode(), answer.headers["Content-Type"]


async def _scrape_until(url: str, ready, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = samples((await asyncio.to_thread(_get, url))[0])
            if ready(last):
                return last
        except OSError:
            pass
        await asyncio.sleep(0.2)  # polling a condition with a deadline
    raise AssertionError(f"{url} never showed the series; last scrape: {sorted(last or {})[:40]}")


@pytest.mark.integration
async def test_the_worker_serves_its_series_at_metrics(system):
    body = Scenario(seed=913).request(1, kind="P0")
    await system.send(system.topics.requests, body, key=body["shipment_id"])
    await system.tap.wait_for(system.topics.decisions, lambda m: m.key == body["shipment_id"].encode())
    url = f"http://127.0.0.1:{system.env['GC_WEB_PORT']}/metrics"
    got = await _scrape_until(url, lambda s: any(n == "gc_consumer_lag" for n, _ in s)
                              and any(n == "gc_decisions_total" for n, _ in s))
    assert sum(v for (n, labels), v in got.items() if n == "gc_decisions_total" and ("outcome", "approved") in labels) >= 1
    assert any(n == "gc_handler_seconds_count" and ("topic", system.topics.requests) in labels for n, labels in got)
    assert {dict(labels)["topic"] for n, labels in got if n == "gc_consumer_lag"} >= {system.topics.requests}


@pytest.mark.integration
async def test_the_projector_serves_its_series_at_metrics(system):
    port = free_port()
    proc = start_projector({**system.env, "GC_METRICS_PORT": str(port)}, system.data_dir, "projector-metrics")
    try:
        got = await _scrape_until(f"http://127.0.0.1:{port}/metrics",
                                  lambda s: ("gc_projector_batch_seconds_count", ()) in s)
        assert ("process_resident_memory_bytes", ()) in got
    finally:
        stop_processes([proc])
