"""Prometheus metrics, the ecosystem's way: prometheus-client series served as `/metrics`.

- The worker counts decisions by outcome and class, status events by kind and dead letters by
  topic (`PrometheusMeter`, handed to the `Pipeline`), times each handler call (a histogram per
  input topic) and samples its consumer lag per partition; served on the Faust web server
  (`GC_WEB_ENABLED`, `GC_WEB_PORT`) at `/metrics`.
- The projector counts the records it writes by kind and times its batches, with its lag per
  partition; served at `/metrics` on `GC_METRICS_PORT` (off when 0).
- Any aiohttp app (the checkpoint station's page, the dashboard) adds the route with
  `add_metrics_route(app, registry)`.

The worker's hot path pays a dict look-up and an increment per event: the labelled children are
made once per label set and kept, never looked up through `labels()` again.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

__all__ = [
    "Meter",
    "PrometheusMeter",
    "new_registry",
    "add_metrics_route",
    "metrics_app",
    "sample_lag",
    "group_lag",
    "CONTENT_TYPE",
    "render",
]

log = logging.getLogger("greenchannel.metrics")
CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0]  # aiohttp wants the charset apart
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Meter:
    """What the pipeline reports as it goes; this one keeps nothing (tests, replay)."""

    def decision(self, outcome: str, priority: str | None) -> None: ...

    def status(self, kind: str) -> None: ...

    def dead_letter(self, topic: str) -> None: ...

    def handled(self, topic: str, seconds: float) -> None: ...


def new_registry() -> CollectorRegistry:
    """A registry with the process's CPU and memory, for one process's series."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


class PrometheusMeter(Meter):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._decisions = Counter(
            "gc_decisions", "Decisions published, by outcome and class", ["outcome", "priority"], registry=registry
        )
        self._statuses = Counter(
            "gc_pass_statuses", "Pass status events published, by kind", ["status"], registry=registry
        )
        self._dead = Counter(
            "gc_dead_letters", "Inputs dead-lettered, by the topic they came from", ["topic"], registry=registry
        )
        self._latency = Histogram(
            "gc_handler_seconds",
            "Time to handle one input, by topic",
            ["topic"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.lag = Gauge(
            "gc_consumer_lag",
            "Records not yet consumed, per input partition",
            ["topic", "partition"],
            registry=registry,
        )
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels):
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def decision(self, outcome: str, priority: str | None) -> None:
        self._child(self._decisions, outcome, priority or "none").inc()

    def status(self, kind: str) -> None:
        self._child(self._statuses, kind).inc()

    def dead_letter(self, topic: str) -> None:
        self._child(self._dead, topic).inc()

    def handled(self, topic: str, seconds: float) -> None:
        self._child(self._latency, topic).observe(seconds)


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of `registry`."""
    return generate_latest(registry)


def add_metrics_route(app: web.Application, registry: CollectorRegistry, path: str = "/metrics") -> None:
    """GET `path` on an aiohttp app answers the registry's series in the Prometheus text format."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(registry), content_type=CONTENT_TYPE, charset="utf-8")

    app.router.add_get(path, metrics)


def metrics_app(registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    add_metrics_route(app, registry)
    return app


async def sample_lag(gauge: Gauge, lags, every: float = 5.0) -> None:
    """Set `gauge` from `lags()` ({(topic, partition): records behind}) every `every` seconds."""
    while True:
        try:
            for (topic, partition), behind in (await lags()).items():
                gauge.labels(topic, str(partition)).set(behind)
        except Exception as exc:  # noqa: BLE001 — a rebalance in progress: sample at the next tick
            log.debug("lag not sampled: %s", exc)
        await asyncio.sleep(every)  # a sampling period, not a synchronisation


async def group_lag(admin, consumer, group: str, parts: list) -> dict:
    """{partition: (records behind, committed offset)} of consumer group `group` on `parts`, asked of the
    broker: the log's end (`consumer`) less the group's committed offset (`admin`), never below 0 (Tansu
    can report an end a little behind a commit). Nothing committed yet counts from offset 0."""
    ends = await consumer.end_offsets(parts)
    committed = await admin.list_consumer_group_offsets(group, partitions=parts)
    lag = {}
    for tp, end in ends.items():
        done = committed.get(tp)
        offset = done.offset if done is not None and done.offset >= 0 else 0
        lag[tp] = (max(0, end - offset), offset)
    return lag
