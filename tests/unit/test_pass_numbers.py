"""Pass numbers: Kafka's partitioner, the allocation on the request's partition, and cities
without counties (no broker)."""

from __future__ import annotations

import os
from collections import Counter

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from models.passes import SERIALS, allocate_pass_id, kafka_partition, murmur2, serial_start
from streams.dev.simulator import Scenario
from streams.handlers import RecordMeta, Tables
from tests.support.factories import CITIES_WITHOUT_COUNTIES, T, feed_reference, make_pipeline, run_requests

# org.apache.kafka.common.utils.UtilsTest#testMurmur2: the Java client's own vectors.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_is_the_java_clients():
    assert {key: murmur2(key) for key in JAVA_MURMUR2} == JAVA_MURMUR2


@pytest.mark.parametrize("partitions", [1, 4, 12])
def test_partition_is_the_one_aiokafka_produces_to(partitions):
    keys = [os.urandom(n % 23) for n in range(3000)] + [f"420111{n:06d}".encode() for n in range(3000)]
    everything = list(range(partitions))
    assert [kafka_partition(k, partitions) for k in keys] == [
        DefaultPartitioner()(k, everything, everything) for k in keys
    ]


def _nobody(pass_id: str) -> None:
    return None


def test_a_pass_number_is_the_issuer_and_a_serial_on_the_requests_partition():
    for n in range(200):
        sid = f"SHP-{n}"
        partition = kafka_partition(sid.encode(), 12)
        pid = allocate_pass_id("420111", sid, partition=partition, partitions=12, holder=_nobody)
        assert len(pid) == 12 and pid.isdigit() and pid.startswith("420111")
        assert kafka_partition(pid.encode(), 12) == partition
        assert allocate_pass_id("420111", sid, partition=partition, partitions=12, holder=_nobody) == pid


def test_a_held_serial_goes_to_the_next_free_one_and_its_holder_keeps_it():
    sid, partition = "SHP-1", kafka_partition(b"SHP-1", 4)
    first = allocate_pass_id("420111", sid, partition=partition, partitions=4, holder=_nobody)
    held = {first: "SHP-other"}
    second = allocate_pass_id("420111", sid, partition=partition, partitions=4, holder=held.get)
    assert second != first and kafka_partition(second.encode(), 4) == partition
    assert (int(second[6:]) - serial_start(sid)) % SERIALS > (int(first[6:]) - serial_start(sid)) % SERIALS
    # Held by the shipment itself (a redelivery, a replay): the same number again.
    assert allocate_pass_id("420111", sid, partition=partition, partitions=4, holder={first: sid}.get) == first


def test_an_issuer_without_free_serials_gets_none_never_a_shared_number():
    held: dict[str, str] = {}
    for n in range(200):
        pid = allocate_pass_id("441900", f"S{n}", partition=1, partitions=4, holder=held.get, serials=40)
        if pid is None:
            break
        assert pid not in held
        held[pid] = f"S{n}"
    on_partition = [s for s in range(40) if kafka_partition(f"441900{s:06d}".encode(), 4) == 1]
    assert sorted(int(p[6:]) for p in held) == on_partition
    assert allocate_pass_id("441900", "late", partition=1, partitions=4, holder=held.get, serials=40) is None


def _from(adcode: str, n: int, scenario: Scenario, **over) -> tuple[bytes, bytes]:
    body = scenario.request(n, kind="P0")
    body.update(origin={"adcode": adcode}, **over)
    return body["shipment_id"].encode(), orjson.dumps(body)


def test_twenty_thousand_requests_from_one_county_get_distinct_passes_each_issued_once():
    scenario, pipeline = Scenario(seed=9), make_pipeline()
    messages = [_from("420111", n, scenario) for n in range(20_000)]
    # The old serial (a hash of the shipment id) collides hundreds of times at this volume.
    assert len({serial_start(key.decode()) for key, _ in messages}) < 20_000 - 100

    tables = Tables.empty()
    issued, pass_of = Counter(), {}
    for (key, _), outs in zip(messages, run_requests(pipeline, messages, tables)):
        [decision] = [orjson.loads(o.value) for o in outs if o.topic == T.decisions]
        assert decision["decision"] == "approved", decision["reasons"]
        pid = pass_of[key] = decision["pass"]["pass_id"]
        # Co-partitioned: the pass lives on its request's partition.
        assert kafka_partition(pid.encode(), pipeline.partitions) == kafka_partition(key, pipeline.partitions)
        for out in outs:
            if out.topic == T.status:
                issued[orjson.loads(out.value)["pass_id"]] += 1
    assert len(set(pass_of.values())) == 20_000 == len(tables.passes)
    assert set(issued) == set(pass_of.values()) and set(issued.values()) == {1}


def test_a_repeated_request_keeps_its_number_among_many():
    scenario, pipeline = Scenario(seed=10), make_pipeline()
    messages = [_from("420111", n, scenario) for n in range(3000)]
    tables = Tables.empty()
    first = [o.value for outs in run_requests(pipeline, messages, tables) for o in outs if o.topic == T.decisions]
    again = [o.value for outs in run_requests(pipeline, messages[::-1], tables) for o in outs if o.topic == T.decisions]
    assert again[::-1] == first
    # Decided afresh elsewhere (another worker after recovery: the tables came back from the changelog).
    other = [o.value for outs in run_requests(make_pipeline(), messages) for o in outs if o.topic == T.decisions]
    assert other == first


def test_an_issuer_with_every_serial_held_is_refused_with_a_reason():
    class Full(dict):
        def get(self, key, default=None):
            return b"someone-else"

    pipeline = make_pipeline()
    [outs] = run_requests(pipeline, [_from("420111", 1, Scenario(seed=12))], Tables({}, Full(), {}, {}))
    [decision] = [orjson.loads(o.value) for o in outs if o.topic == T.decisions]
    assert decision["decision"] == "rejected" and decision["pass"] is None
    assert [r["code"] for r in decision["reasons"]] == ["serials_exhausted"]
    assert [o.topic for o in outs] == [T.decisions]  # nothing issued


@pytest.mark.parametrize("adcode", sorted(CITIES_WITHOUT_COUNTIES))
def test_a_city_without_counties_is_an_origin_and_a_destination(adcode):
    scenario, pipeline = Scenario(seed=13), make_pipeline()
    other = "420111" if adcode != "420111" else "440106"
    out_key, out_value = _from(adcode, 1, scenario, destination={"adcode": other})
    in_key, in_value = _from(other, 2, scenario, destination={"adcode": adcode})
    answers = [
        orjson.loads(o.value)
        for outs in run_requests(pipeline, [(out_key, out_value), (in_key, in_value)])
        for o in outs
        if o.topic == T.decisions
    ]
    assert [a["decision"] for a in answers] == ["approved", "approved"], [a["reasons"] for a in answers]
    leaving, arriving = (a["pass"] for a in answers)
    assert leaving["issuer"] == adcode and leaving["pass_id"].startswith(adcode)
    assert leaving["route"]["adcodes"][0] == adcode
    assert arriving["route"]["adcodes"][-1] == adcode
    assert arriving["route"]["checkpoints"][-1]["checkpoint_id"] == f"DST-{adcode}"
    assert CITIES_WITHOUT_COUNTIES[adcode] in arriving["route"]["checkpoints"][-1]["name"]


def test_a_city_without_counties_is_found_by_address_and_by_coordinates():
    from routing import Gazetteer

    g = Gazetteer.default()
    assert g.from_address("广东省东莞市长安镇").adcode == "441900"
    assert g.nearest(22.52, 113.39).adcode == "442000"  # 中山市 itself, not a county across the river
    assert g.is_finest(g.locate("620200")) and not g.is_finest(g.locate("420100"))


def test_a_city_without_counties_has_its_own_risk_level():
    scenario, pipeline = Scenario(seed=14), make_pipeline()
    feed_reference(pipeline, scenario)
    risk = {"adcode": "441900", "level": "high", "effective_at": "2020-01-01T00:00:00Z"}
    pipeline.on_risk(b"441900", orjson.dumps(risk), RecordMeta(pipeline.topics.risk, 0, 0, 0))
    assert pipeline.decider.risk.level_at("441900", scenario.start) == "high"
    assert pipeline.decider.risk.level_at("442000", scenario.start) == "low"
    body = scenario.request(1, kind="P1")
    body.update(origin={"adcode": "441900"}, destination={"adcode": "420111"})
    [outs] = run_requests(pipeline, [(body["shipment_id"].encode(), orjson.dumps(body))])
    [decision] = [orjson.loads(o.value) for o in outs if o.topic == T.decisions]
    # P1 may leave a high-risk city (the guidance keeps food and farm inputs flowing) ...
    assert decision["decision"] == "approved"
    body = scenario.request(2, kind="P3")
    body.update(origin={"adcode": "441900"}, destination={"adcode": "420111"})
    [outs] = run_requests(pipeline, [(body["shipment_id"].encode(), orjson.dumps(body))])
    [decision] = [orjson.loads(o.value) for o in outs if o.topic == T.decisions]
    # ... a major-project load may not.
    assert decision["decision"] == "rejected"
    assert any("high" in r["code"] or "risk" in r["code"] for r in decision["reasons"]), decision["reasons"]


def test_the_worker_reads_held_pass_numbers_from_its_pass_states():
    """The worker keeps no table of serials: the pass states name their shipments (PassHolders).
    Decided that way, every number is the one a separate table of serials gives, and repeats
    keep theirs."""
    from streams.handlers import PassHolders

    scenario = Scenario(seed=13)
    messages = [_from("420111", n, scenario) for n in range(3000)]
    passes: dict = {}
    worker = Tables({}, PassHolders(passes), passes, {})
    live = [o.value for outs in run_requests(make_pipeline(), messages, worker) for o in outs if o.topic == T.decisions]
    table = [o.value for outs in run_requests(make_pipeline(), messages) for o in outs if o.topic == T.decisions]
    assert live == table and len(passes) == 3000
    again = [
        o.value
        for outs in run_requests(make_pipeline(), messages[::-1], worker)
        for o in outs
        if o.topic == T.decisions
    ]
    assert again[::-1] == live
    pid = orjson.loads(live[0])["pass"]["pass_id"]
    assert worker.serials.get(pid) == orjson.loads(live[0])["shipment_id"].encode()
    assert worker.serials.get("420111999999") is None
