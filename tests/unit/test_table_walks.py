"""No event's path takes len() (or the truth) of a table: on RocksDB (GC_STORE=rocksdb://) that walks
every key of every partition the worker holds (Faust's `Store._size`), per event."""

from __future__ import annotations

import random
from datetime import timedelta

import orjson
import pytest

from models.passes import kafka_partition
from models.records import parse_time
from streams.dev.simulator import Scenario, scans_for
from streams.handlers import PassHolders, RecordMeta, Tables
from tests.support.factories import feed_reference, make_pipeline, run_requests


class NoWalk(dict):
    """A table that fails the test when its size or truth is asked."""

    def __len__(self) -> int:
        raise AssertionError("len() of a table on an event's path")

    def __bool__(self) -> bool:
        raise AssertionError("the truth of a table on an event's path (its len())")


def no_walk_tables() -> Tables:
    passes = NoWalk()
    return Tables(
        decided=NoWalk(),
        serials=PassHolders(passes),
        passes=passes,
        answers=NoWalk(),
        clocks=NoWalk(),
        applied=NoWalk(),
    )


def test_requests_scans_and_ticks_never_size_a_table():
    scenario = Scenario(seed=12)
    pipeline = make_pipeline()
    feed_reference(pipeline, scenario)
    tables = no_walk_tables()
    with pytest.raises(AssertionError):
        len(tables.serials)  # the pass numbers held: a walk of the pass table
    messages = [(b["shipment_id"].encode(), orjson.dumps(b)) for b in (scenario.request(n) for n in range(40))]
    decisions = [orjson.loads(outs[0].value) for outs in run_requests(pipeline, messages, tables)]
    approved = [d for d in decisions if d.get("pass")]
    assert approved
    for decision in approved[:10]:
        pid = decision["pass"]["pass_id"]
        partition = kafka_partition(pid.encode(), pipeline.partitions)
        for scan in scans_for(decision, random.Random(3)):
            meta = RecordMeta(pipeline.topics.scans, partition, 0, 0)
            pipeline.on_scan(pid.encode(), orjson.dumps(scan), meta, tables=tables)
    # A tick of the clock far past every pass's validity: expiry and retention over the whole partition.
    late = parse_time(approved[0]["decided_at"]) + timedelta(days=60)
    for partition in range(pipeline.partitions):
        tick = pipeline.clock_tick(late, partition)
        pipeline.on_pass_event(tick.value, partition=partition, tables=tables)
