"""How old the station's view is (streams/station/freshness.py): fresh only once its consumer has read
every partition of a topic to its end, stale past the view's limit, said beside every verdict, and
kept across a restart. No broker and no sleeping: a stand-in consumer and an injected wall clock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from aiokafka.structs import TopicPartition

from streams.keys import key_id
from streams.settings import Settings
from streams.station.freshness import STALE_AFTER, freshness, stale_warning
from streams.station.link import NOTE_FRESH_EVERY, Station
from streams.station.store import Store
from tests.support.factories import DEPARTURE, KEY, SIGNER, decision_of, make_tracker, token_of, wuhan_to_guangzhou

KEYS = {key_id(KEY.public_key()): KEY.public_key()}
T0 = 1_800_000_000.0  # the wall clock's start (seconds since the epoch)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Fetched:
    """What the link asks an AIOKafkaConsumer of its partitions after a fetch: the end the broker
    gave (high watermark, last stable offset), when it gave it (ms) and where the consumer is."""

    def __init__(self, partitions: dict[TopicPartition, int]) -> None:
        self.position_of = dict.fromkeys(partitions, 0)
        self.hw = dict(partitions)
        self.lso: dict[TopicPartition, int | None] = dict.fromkeys(partitions)
        self.polled: dict[TopicPartition, float | None] = dict.fromkeys(partitions)

    def fetch(self, at: float) -> None:
        """A fetch at `at` (seconds): the broker answered for every partition."""
        for tp in self.polled:
            self.polled[tp] = at * 1000

    def read_all(self) -> None:
        self.position_of = {tp: self.lso[tp] if self.lso[tp] is not None else hw for tp, hw in self.hw.items()}

    def assignment(self) -> set:
        return set(self.hw)

    def highwater(self, tp) -> int:
        return self.hw[tp]

    def last_stable_offset(self, tp) -> int | None:
        return self.lso[tp]

    def last_poll_timestamp(self, tp) -> float | None:
        return self.polled[tp]

    async def position(self, tp) -> int:
        return self.position_of[tp]


@pytest.fixture(scope="module")
def the_pass():
    return wuhan_to_guangzhou(make_tracker(SIGNER, KEYS), priority="P0", trip="single")


def a_station(the_pass, path, clock: Clock, guarantee: str = "at_least_once") -> Station:
    here = the_pass.checkpoint_ids[0]
    store = Store(path, [here])
    store.take_decision(decision_of(the_pass))
    settings = Settings(_env_file=None, processing_guarantee=guarantee)
    return Station(settings, [here], store, KEYS, clock_start=DEPARTURE + timedelta(hours=4), wall=clock)


def every_topic(station: Station) -> Fetched:
    t = station.topics
    return Fetched(
        {
            TopicPartition(t.decisions, 0): 5,
            TopicPartition(t.decisions, 1): 3,
            TopicPartition(t.status, 0): 4,
            TopicPartition(t.keys, 0): 1,
        }
    )


def test_a_view_is_stale_past_its_limit_and_one_never_fresh_is_stale():
    now = T0 + 10_000
    f = freshness({"decisions": now - 600, "statuses": now - 601, "keys": None}, now)
    assert f["decisions"] == {
        "as_of": f["decisions"]["as_of"],
        "age_seconds": 600.0,
        "stale_after_seconds": STALE_AFTER["decisions"],
        "stale": False,  # at its limit, not past it
    }
    assert f["statuses"]["stale"] and f["statuses"]["age_seconds"] == 601.0
    assert f["keys"] == {"as_of": None, "age_seconds": None, "stale_after_seconds": 86_400.0, "stale": True}


def test_the_warning_names_the_stale_views_and_the_oldest_age():
    now = T0 + 100_000
    assert stale_warning(freshness(dict.fromkeys(STALE_AFTER, now - 30), now)) is None
    w = stale_warning(freshness({"decisions": now - 30, "statuses": now - 12 * 60, "keys": now - 3600}, now))
    assert w["views"] == ["statuses"]
    assert w["text_en"] == "view of statuses is 12 min old: call in to confirm"
    assert w["text_zh"] == "本站状态信息已 12 分钟未更新，请电话核实"
    w = stale_warning(freshness({"decisions": now - 3 * 3600, "statuses": now - 3 * 3600, "keys": None}, now))
    assert w["views"] == ["decisions", "statuses", "keys"] and w["age_seconds"] is None
    assert "never up to date: call in to confirm" in w["text_en"]


async def test_a_view_is_fresh_only_once_every_partition_is_read_to_its_end(the_pass, tmp_path):
    clock = Clock()
    station = a_station(the_pass, tmp_path / "s.db", clock)
    consumer = every_topic(station)
    consumer.fetch(T0)
    await station.note_caught_up(consumer)  # a fetch, nothing read yet: not fresh
    assert station.fresh_as_of == dict.fromkeys(STALE_AFTER)

    decisions_0 = TopicPartition(station.topics.decisions, 0)
    consumer.read_all()
    consumer.position_of[decisions_0] = 4  # one record of one decision partition still behind
    await station.note_caught_up(consumer)
    assert station.fresh_as_of == {"decisions": None, "statuses": T0, "keys": T0}

    consumer.position_of[decisions_0] = 5
    consumer.fetch(T0 + 30)  # the broker told the end again, 30 s on: nothing new
    await station.note_caught_up(consumer)
    assert station.fresh_as_of == dict.fromkeys(STALE_AFTER, T0 + 30)

    consumer.hw[decisions_0] = 9  # four new decisions at the next fetch, not yet read: as fresh as before
    consumer.fetch(T0 + 60)
    await station.note_caught_up(consumer)
    assert station.fresh_as_of == {"decisions": T0 + 30, "statuses": T0 + 60, "keys": T0 + 60}


async def test_reading_committed_the_end_is_the_last_stable_offset(the_pass, tmp_path):
    station = a_station(the_pass, tmp_path / "s.db", Clock(), guarantee="exactly_once")
    consumer = every_topic(station)
    statuses = TopicPartition(station.topics.status, 0)
    consumer.lso[statuses] = 2  # a transaction open past offset 2: its records cannot be read yet
    consumer.fetch(T0)
    consumer.read_all()
    await station.note_caught_up(consumer)
    assert station.fresh_as_of["statuses"] == T0


async def test_a_check_says_beside_its_verdict_that_the_view_is_stale(the_pass, tmp_path):
    clock = Clock()
    station = a_station(the_pass, tmp_path / "s.db", clock)
    consumer = every_topic(station)
    consumer.fetch(T0)
    consumer.read_all()
    await station.note_caught_up(consumer)
    token, plate = token_of(the_pass), the_pass.plate

    clock.now = T0 + 9 * 60  # the link stopped 9 minutes ago
    fresh = station.check(None, token, plate)
    assert (fresh["green"], fresh["stale_view"], fresh["stale_warning"]) == (True, False, None)
    assert fresh["freshness"]["statuses"] == {**fresh["freshness"]["statuses"], "age_seconds": 540.0, "stale": False}

    clock.now = T0 + 12 * 60 + 5
    stale = station.check(None, token, plate)
    assert stale["green"] and stale["reason"] is None  # the verdict stands
    assert stale["stale_view"] is True
    assert stale["stale_warning"]["text_en"] == "view of decisions, statuses is 12 min old: call in to confirm"
    assert station.state()["freshness"]["statuses"]["stale"] is True

    clock.now = T0 + 25 * 3600  # a day on: the keys too
    assert station.check(None, token, plate)["stale_warning"]["views"] == ["decisions", "statuses", "keys"]


async def test_a_station_restarted_offline_knows_how_old_its_view_is(the_pass, tmp_path):
    clock = Clock()
    station = a_station(the_pass, tmp_path / "s.db", clock)
    consumer = every_topic(station)
    consumer.read_all()
    for second in (0, 1, NOTE_FRESH_EVERY + 1):  # noted at once, then at most every NOTE_FRESH_EVERY s
        consumer.fetch(T0 + second)
        await station.note_caught_up(consumer)
    assert station.store.fresh_as_of() == dict.fromkeys(STALE_AFTER, T0 + NOTE_FRESH_EVERY + 1)
    station.store.note_fresh("keys", T0 - 100)  # an earlier moment never goes back
    assert station.store.fresh_as_of()["keys"] == T0 + NOTE_FRESH_EVERY + 1

    clock.now = T0 + 3600
    again = Station(Settings(_env_file=None), station.ids, Store(tmp_path / "s.db", station.ids), KEYS, wall=clock)
    f = again.freshness()
    assert f["statuses"]["age_seconds"] == 3600 - NOTE_FRESH_EVERY - 1 and f["statuses"]["stale"]
    assert f["keys"]["stale"] is False
