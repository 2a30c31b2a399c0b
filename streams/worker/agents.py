"""The worker's agents, and the tasks and timer beside them: one `register_*(app, runtime, …)` each.

Agents are thin: each hands raw messages to `streams.handlers.Pipeline` (through
`Runtime.guarded`) and sends what it returns. One event at a time: each event's table writes and
outputs are handed to the producer (under exactly_once, to its partition's transaction) before the
next is handled; their delivery is awaited by the commit of the event's offset, not by the event.
A request is decided and its pass issued in one event; a scan is applied in one event on its
pass's partition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import faust

from ..dispatch import Given
from ..metrics import sample_lag
from .reference import load_reference_data
from .runtime import Runtime

__all__ = [
    "register_reference_load",
    "register_decide",
    "register_scan",
    "register_reference_data",
    "register_track",
    "register_clock",
    "register_consumer_lag",
]

log = logging.getLogger("greenchannel")


def register_reference_load(app: faust.App, runtime: Runtime) -> None:
    """The start-up task reading the whole reference topics; the agents deciding wait for it."""
    pipeline, settings, ready = runtime.pipeline, runtime.settings, runtime.ready

    @app.task
    async def bootstrap() -> None:
        n = await load_reference_data(pipeline, settings)
        pipeline.withdrawals_in_the_past()  # a replay does not: it applies them in event-time order
        log.info("reference data loaded: %d records", n)
        await runtime.learn_answer_partitions()  # answers on the event's partition (Runtime.named)
        ready.set()


def register_decide(app: faust.App, runtime: Runtime, requests: faust.TopicT) -> None:
    """Decide each pass request (and issue its pass) at the channel's time, once the reference data is loaded."""
    tables = runtime.tables
    _register_guarded(
        app, runtime, requests, "decide", lambda event: Given(tables, now=runtime.decision_now(event.message.partition))
    )


def register_scan(app: faust.App, runtime: Runtime, scans: faust.TopicT) -> None:
    """Apply each checkpoint scan, its date bounded by the channel's time (re-keyed to its pass: no
    reference data needed, so no wait)."""
    tables = runtime.tables
    _register_guarded(
        app,
        runtime,
        scans,
        "scan",
        lambda event: Given(tables, now=runtime.now(event.message.partition)),
        after_ready=False,
    )


def register_reference_data(app: faust.App, runtime: Runtime, reference: faust.TopicT) -> None:
    """Apply each risk-level, key-enterprise and key record, after the whole topics were loaded."""
    tables = runtime.tables
    _register_guarded(app, runtime, reference, "reference_data", lambda event: Given(tables))


def register_track(app: faust.App, runtime: Runtime, pass_events: faust.TopicT) -> None:
    """Apply each pass event on its pass's partition: re-keyed scans, the risk, key-list and
    keyring broadcasts, and the clock's ticks."""
    tables = runtime.tables
    _register_guarded(app, runtime, pass_events, "track", lambda event: Given(tables))


def _register_guarded(
    app: faust.App,
    runtime: Runtime,
    channel: faust.TopicT,
    name: str,
    given_for: Callable[[Any], Given],
    *,
    after_ready: bool = True,
) -> None:
    """The agent `name` on `channel`: each event, one at a time, goes through the one dispatch
    (`Runtime.guarded`) with what the worker gives it (`given_for(event)`), its table writes and
    outputs handed to the producer before the next event; with `after_ready`, once the reference data is loaded."""
    guarded, in_flight, ready = runtime.guarded, runtime.in_flight, runtime.ready

    async def agent(stream) -> None:
        if after_ready:
            await ready.wait()
        async for event in stream.events():
            async with in_flight():
                await guarded(event, given_for(event))

    agent.__name__ = agent.__qualname__ = name
    app.agent(channel, name=f"{__name__}.{name}")(agent)


def register_clock(app: faust.App, runtime: Runtime, seconds: float) -> None:
    """The channel's clock, every `seconds`."""
    pipeline = runtime.pipeline
    names = pipeline.topics

    @app.timer(seconds)
    async def clock() -> None:
        """The channel's clock: a tick of the time now to each pass partition this worker owns.
        Ticks go through the log, so expiry and retention are replayed as they happened."""
        now = datetime.now(UTC)
        owned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == names.pass_events)
        for out in (pipeline.clock_tick(now, p) for p in owned):  # a few a minute: each delivery awaited
            await app.producer.send_and_wait(out.topic, out.key, out.value, out.partition, None, None)


def register_consumer_lag(app: faust.App, runtime: Runtime) -> None:
    """The task sampling gc_consumer_lag."""
    meter = runtime.meter

    @app.task
    async def consumer_lag() -> None:
        """gc_consumer_lag per assigned partition: its high watermark less the consumer's position."""

        async def lags() -> dict:
            consumer = app.consumer
            return {
                (tp.topic, tp.partition): max(0, consumer.highwater(tp) - (await consumer.position(tp) or 0))
                for tp in consumer.assignment()
            }

        await sample_lag(meter.lag, lags)
