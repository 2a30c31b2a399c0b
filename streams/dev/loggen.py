"""A log generator for the bench: fills the topics quickly with a simulator `Scenario`'s inputs,
and the decisions and status events a worker would have published for them."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import timedelta

import orjson

from models.records import format_time

__all__ = ["generate_log"]

_PROVINCES = ["430000", "360000", "410000", "340000", "500000", "370000"]
_PER_BLOCK = 2000  # requests between a province's raise to high risk and the next one's


async def generate_log(settings, n: int, *, seed: int = 2020, outputs: bool = True, progress: bool = False) -> dict:
    """Fill the topics with at least `n` input events from a simulator `Scenario`.

    Requests (the simulator's mix), the scans each approved truck makes along its route, the
    key enterprises, and a province raised to high risk and lowered again every 2,000
    requests. With `outputs`, the decisions and status events a worker would publish are
    computed by the same handlers (in event-time order) and published too, so a replay has a
    record to prove. Sends are batched by the aiokafka producer (linger, large batches).
    """
    from aiokafka import AIOKafkaProducer

    from ..bootstrap import build_pipeline
    from ..handlers import RecordMeta, Topics
    from ..topics import ensure_topics
    from .simulator import Scenario

    t = Topics.with_prefix(settings.topic_prefix)
    await ensure_topics(
        settings.connection,
        t.public() + [t.pass_events],
        partitions=settings.partitions,
        replication_factor=settings.replication_factor,
    )
    scenario = Scenario(seed=seed)
    reference = _reference(t, scenario, n)
    pipeline = build_pipeline(settings)
    for i, (topic, key, value) in enumerate(reference):
        (pipeline.on_risk if topic == t.risk else pipeline.on_enterprise)(key, value, RecordMeta(topic, 0, i, 0))
    inputs, count, requests = _inputs(settings, t, scenario, pipeline, reference, n, random.Random(seed))
    producer = AIOKafkaProducer(
        **settings.connection.kwargs(), linger_ms=50, max_batch_size=1024 * 1024, max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    sent = Counter()
    try:
        await _send_all(producer, inputs, sent)
        if outputs:
            await _send_all(producer, await _outputs(settings, t), sent)
    finally:
        await producer.stop()
    return {"inputs": count, "requests": requests, "sent": dict(sent)}


def _reference(t, scenario, n: int) -> list[tuple[str, bytes, bytes]]:
    """The key enterprises, and each block of requests' province raised to high risk and lowered 6 hours later."""
    reference: list[tuple[str, bytes, bytes]] = [
        (t.enterprises, e["credit_code"].encode(), orjson.dumps(e)) for e in scenario.enterprise_entries()
    ]
    planned = n // 5 + _PER_BLOCK
    for k in range(0, planned // _PER_BLOCK + 1):
        adcode = _PROVINCES[k % len(_PROVINCES)]
        high = scenario.start + timedelta(minutes=k * _PER_BLOCK + 600)
        for level, at in (("high", high), ("low", high + timedelta(hours=6))):
            reference.append(
                (
                    t.risk,
                    adcode.encode(),
                    orjson.dumps({"adcode": adcode, "level": level, "effective_at": format_time(at)}),
                )
            )
    return reference


def _inputs(
    settings, t, scenario, pipeline, reference: list, n: int, rng: random.Random
) -> tuple[list[tuple[str, bytes, bytes]], int, int]:
    """The reference entries, then requests and the scans of each approved one's truck, until `n`
    input events; with how many events and requests."""
    from models.passes import kafka_partition

    from ..handlers import RecordMeta, Tables
    from .simulator import scans_for

    inputs: list[tuple[str, bytes, bytes]] = list(reference)
    count, i, tables = len(reference), 0, Tables.empty()
    while count < n:
        body = scenario.request(i)
        value = orjson.dumps(body)
        key = body["shipment_id"].encode()
        inputs.append((t.requests, key, value))
        count += 1
        # The partition the producer will put it on: pass numbers are allocated there.
        partition = kafka_partition(key, settings.partitions)
        for out in pipeline.on_request(key, value, RecordMeta(t.requests, partition, i, 0), tables=tables):
            if out.topic == t.decisions:
                decision = orjson.loads(out.value)
                if decision["pass"]:
                    for scan in scans_for(decision, rng, mismatch=rng.random() < 0.02):
                        inputs.append((t.scans, decision["pass"]["pass_id"].encode(), orjson.dumps(scan)))
                        count += 1
        i += 1
    return inputs, count, i


async def _send_all(producer, messages, sent: Counter) -> None:
    """Send (topic, key, value[, headers]) messages, awaiting deliveries 10,000 at a time."""
    pending = []
    for topic, key, value, *headers in messages:
        pending.append(await producer.send(topic, value, key=key, headers=headers[0] if headers else None))
        sent[topic] += 1
        if len(pending) >= 10000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def _outputs(settings, t) -> list[tuple]:
    """The decisions and status events a worker would publish for the inputs now in the log: the
    audit's replay of them."""
    from ..audit import Replayer
    from ..audit.reader import Spec, read_log
    from ..bootstrap import build_pipeline

    read = await read_log(settings, [Spec(x) for x in (t.requests, t.scans, t.risk, t.enterprises)])
    rep = Replayer(build_pipeline(settings))
    rep.load_reference(read[t.risk] + read[t.enterprises])
    rep.replay(read[t.requests] + read[t.scans] + read[t.risk] + read[t.enterprises])
    made: list[tuple] = [(t.decisions, sid.encode(), body) for sid, body in rep.decisions.items()]
    for pid, events in rep.statuses.items():
        for ce_id, body in events.items():
            made.append((t.status, pid.encode(), body, [("ce_id", ce_id.encode())]))
    return made
