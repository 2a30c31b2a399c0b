"""The formulas the worker and the audit share (`streams.wire`) give what the worker's handlers give."""

from __future__ import annotations

import orjson
import pytest

from models.passes import kafka_partition
from models.records import Unparseable, parse_request
from streams.dev.simulator import Scenario
from streams.handlers import RecordMeta, Tables
from streams.wire import request_sid, status_ce_id
from tests.support.factories import T, make_pipeline


@pytest.mark.parametrize(
    "obj, key",
    [
        ({"shipment_id": " S-1 "}, b"K-1"),
        ({"shipment_id": ""}, b"K-1"),
        ({"shipment_id": 7}, b" K-2 "),
        ({}, None),
        ({}, b""),
        ({"shipment_id": "S" * 129}, b"K-1"),
        ({}, "中".encode() * 50),
    ],
)
def test_the_audit_reads_a_requests_shipment_id_as_parse_request_does(obj, key):
    try:
        expected = parse_request(obj, fallback_id=None if key is None else key.decode("utf-8", "replace"))[
            0
        ].shipment_id
    except Unparseable:
        expected = None
    assert request_sid(obj, key) == expected


def test_the_status_ce_id_is_the_one_the_tracker_puts_on_its_status_events():
    pipeline, tables = make_pipeline(), Tables.empty()
    scenario = Scenario(seed=3)
    statuses = []
    for n in range(20):
        body = scenario.request(n)
        key = body["shipment_id"].encode()
        meta = RecordMeta(T.requests, kafka_partition(key, pipeline.partitions), n, 0)
        outs = pipeline.on_request(key, orjson.dumps(body), meta, tables=tables)
        statuses += [o for o in outs if o.topic == T.status]
    assert statuses
    for out in statuses:
        event = orjson.loads(out.value)
        assert dict(out.headers)["ce_id"].decode() == status_ce_id(out.key.decode(), event["cause"])
