"""/metrics of the worker and the projector in the running system (what the pipeline counts, and the helper
for any aiohttp app: tests/unit/test_metrics.py)."""

from __future__ import annotations

import asyncio
import time

from streams.dev.broker import free_port
from streams.dev.simulator import Scenario
from tests.support.metrics import http_get, samples
from tests.support.system import start_projector, stop_processes


async def _scrape_until(url: str, ready, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = samples((await asyncio.to_thread(http_get, url))[0])
            if ready(last):
                return last
        except OSError:
            pass
        await asyncio.sleep(0.2)  # polling a condition with a deadline
    raise AssertionError(f"{url} never showed the series; last scrape: {sorted(last or {})[:40]}")


async def test_the_worker_serves_its_series_at_metrics(system):
    body = Scenario(seed=913).request(1, kind="P0")
    await system.send(system.topics.requests, body, key=body["shipment_id"])
    await system.tap.wait_for(system.topics.decisions, lambda m: m.key == body["shipment_id"].encode())
    url = f"http://127.0.0.1:{system.env['GC_WEB_PORT']}/metrics"
    got = await _scrape_until(
        url, lambda s: any(n == "gc_consumer_lag" for n, _ in s) and any(n == "gc_decisions_total" for n, _ in s)
    )
    assert (
        sum(v for (n, labels), v in got.items() if n == "gc_decisions_total" and ("outcome", "approved") in labels) >= 1
    )
    assert any(n == "gc_handler_seconds_count" and ("topic", system.topics.requests) in labels for n, labels in got)
    assert {dict(labels)["topic"] for n, labels in got if n == "gc_consumer_lag"} >= {system.topics.requests}


async def test_the_projector_serves_its_series_at_metrics(system):
    port = free_port()
    proc = start_projector({**system.env, "GC_METRICS_PORT": str(port)}, system.data_dir, "projector-metrics")
    try:
        got = await _scrape_until(
            f"http://127.0.0.1:{port}/metrics", lambda s: ("gc_projector_batch_seconds_count", ()) in s
        )
        assert ("process_resident_memory_bytes", ()) in got
    finally:
        stop_processes([proc])
