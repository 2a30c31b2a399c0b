"""The station's link takes each pass's decision before the statuses that follow it, though the two
come on different topics, each read at its own pace: a consumer may hand a partition of statuses
long before the decision partition those statuses follow. Read here through a stand-in for the
consumer that does exactly that (the real broker is in tests/integration/test_station_catch_up.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace

import orjson
from aiokafka.structs import TopicPartition
from msgspec.structs import replace

from models.passes import S, status_event
from streams.keys import key_id
from streams.station.checks import check
from streams.station.link import Station
from streams.station.store import Store
from tests.support.factories import (
    DEPARTURE,
    KEY,
    SETTINGS,
    SIGNER,
    decision_of,
    make_tracker,
    token_of,
    until,
    wuhan_to_guangzhou,
)

KEYS = {key_id(KEY.public_key()): KEY.public_key()}


class StatusesFirst:
    """What the link needs of an AIOKafkaConsumer, over fixed logs: each call hands a partition of
    the topic `whole` whole, and one record of any other partition."""

    def __init__(self, logs: dict[TopicPartition, list[dict]], whole: str) -> None:
        self.whole = whole
        self.logs = {
            tp: [SimpleNamespace(value=orjson.dumps(v), offset=i, timestamp=0) for i, v in enumerate(values)]
            for tp, values in logs.items()
        }
        self.at = dict.fromkeys(logs, 0)
        self.committed: dict = {}

    def assignment(self) -> set:
        return set(self.logs)

    async def end_offsets(self, partitions) -> dict:
        return {tp: len(self.logs[tp]) for tp in partitions}

    async def position(self, tp) -> int:
        return self.at[tp]

    async def getmany(self, *partitions, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        batch = {}
        for tp in partitions or self.logs:
            n = len(self.logs[tp]) if tp.topic == self.whole else 1
            records = self.logs[tp][self.at[tp] : self.at[tp] + n]
            if records:
                batch[tp] = records
                self.at[tp] += len(records)
        if not batch:
            await asyncio.sleep(timeout_ms / 1000)  # as a consumer waits for records that do not come
        return batch

    async def commit(self) -> None:
        self.committed = dict(self.at)

    def highwater(self, tp) -> int:
        return len(self.logs[tp])

    def last_stable_offset(self, tp) -> None:
        return None

    def last_poll_timestamp(self, tp) -> None:
        return None  # no fetch to the end: the views stay as old as they were (tests/unit/test_station_freshness.py)


async def test_a_status_handed_before_its_decision_is_taken_after_it(tmp_path):
    the_pass = wuhan_to_guangzhou(make_tracker(SIGNER, KEYS), priority="P0", trip="single")
    here = the_pass.checkpoint_ids[0]
    station = Station(SETTINGS, [here], Store(tmp_path / "station.db", [here]), KEYS)
    revoked = status_event(
        replace(the_pass, status=S.REVOKED),
        S.REVOKED,
        DEPARTURE + timedelta(hours=1),
        reason="key_enterprise_removed",
        cause="enterprise:test:remove",
    )
    others = [{"decision": "rejected", "shipment_id": f"S-other-{i}"} for i in range(3)]
    logs = {
        TopicPartition(station.topics.status, 1): [revoked],
        TopicPartition(station.topics.decisions, 1): [*others, decision_of(the_pass)],
    }
    consumer = StatusesFirst(logs, whole=station.topics.status)

    reading = asyncio.create_task(station.read(consumer))
    try:
        everything = {tp: len(values) for tp, values in logs.items()}
        await until(lambda: consumer.committed == everything, 10, "the link to take and commit both logs")
    finally:
        reading.cancel()

    answer = check(station.store, KEYS, checkpoint_id=here, at=DEPARTURE + timedelta(hours=4), token=token_of(the_pass))
    assert (answer["green"], answer["reason"], answer["pass"]["status"]) == (False, "pass_revoked", "revoked")
