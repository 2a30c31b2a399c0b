"""streams.worker, broker-free: what create_app registers, and one event through `Runtime.guarded`.

The worker's behaviour on a broker is shown by tests/test_pipeline.py and the other live tests;
this pins what the app is made of, so that a change to its wiring is seen here by name.
"""

from __future__ import annotations

import asyncio
import random
import warnings
from datetime import UTC, datetime
from types import SimpleNamespace

import orjson
import pytest

from streams.dispatch import Given
from streams.handlers import Out, RecordMeta, Tables, Topics
from streams.settings import Settings
from streams.worker.app import create_app
from streams.worker.runtime import Runtime, meta, on_partition


def worker_app(tmp_path, **fields):
    settings = Settings(
        _env_file=None,
        broker_url="kafka://127.0.0.1:1",
        data_dir=tmp_path,
        topic_prefix="gc.",
        partitions=4,
        catalog="catalog-2020.02-v1.json",
        geocoder="offline",
        **fields,
    )
    return create_app(settings)


def test_the_worker_registers_its_agents_on_raw_topics(tmp_path):
    app = worker_app(tmp_path)
    topics = {name.rsplit(".", 1)[-1]: list(agent.channel.topics) for name, agent in app.agents.items()}
    assert topics == {
        "decide": ["gc.shipment.requests", "gc.gateway.requests"],
        "scan": ["gc.checkpoint.scans"],
        "reference_data": ["gc.region.risk", "gc.enterprises", "gc.pass.keys"],
        "track": ["gc.pass.events"],
    }
    for agent in app.agents.values():
        assert (agent.channel.key_serializer, agent.channel.value_serializer) == ("raw", "raw")
        assert agent.channel.partitions == 4


def test_the_worker_tables_tasks_and_views(tmp_path):
    app = worker_app(tmp_path)
    assert list(app.tables) == ["passes", "decided", "answers", "clock", "applied"]
    assert [task.__name__ for task in app._app_tasks] == [
        "bootstrap",
        "learn_table_partitions",
        "clock",
        "consumer_lag",
    ]
    assert list(app.web.views) == ["/passes/{pass_id}/", "/metrics", "/keys/", "/checkpoints/"]
    assert app.pipeline.meter is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # producer_linger_ms: deprecated in Faust, still honoured
        assert (app.conf.producer_linger_ms, app.conf.stream_buffer_maxsize) == (1, 8192)
    assert app.conf.consumer_auto_offset_reset == "earliest"


@pytest.mark.parametrize("seconds", [0, -1])
def test_no_clock_timer_without_a_clock_interval(tmp_path, seconds):
    app = worker_app(tmp_path, clock_seconds=seconds)
    assert "clock" not in [task.__name__ for task in app._app_tasks]


# --- one event through Runtime.guarded ------------------------------------------------------------


class FakeProducer:
    """Faust's producer (exactly_once sends through it, in a transaction) and the aiokafka producer
    behind it (at_least_once sends straight to that), recording alike."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []
        self._transaction_producers = {"gc-test-0-2": object()}  # Faust's, by transactional id

    async def send(self, topic, key, value, partition, timestamp, headers, transactional_id=None):
        self.sent.append((topic, key, value, partition, transactional_id))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def _ensure_producer(self):
        outer = self

        class AIOKafkaProducer:
            async def send(self, topic, value=None, key=None, partition=None, timestamp_ms=None, headers=None):
                assert isinstance(headers, list)  # aiokafka's record builder takes a list
                return await outer.send(topic, key, value, partition, timestamp_ms, headers)

        return AIOKafkaProducer()


class FakeMeter:
    def __init__(self) -> None:
        self.handled_topics: list[str] = []

    def handled(self, topic: str, seconds: float) -> None:
        self.handled_topics.append(topic)


class FakePipeline:
    topics = Topics.with_prefix("gc.")

    def dead_letter(self, meta: RecordMeta, key, value, error: str) -> Out:
        return Out("gc.dead-letters", b"dead", f"{meta.topic} {error}".encode())


def fake_event(partition: int = 2, offset: int = 7):
    message = SimpleNamespace(topic="gc.shipment.requests", partition=partition, offset=offset, timestamp=1.5)
    return SimpleNamespace(message=message, key=b"k", value=b"v")


def runtime_of(guarantee: str) -> Runtime:
    app = SimpleNamespace(
        producer=FakeProducer(),
        conf=SimpleNamespace(id="gc-test"),
        assignor=SimpleNamespace(group_for_topic=lambda topic: 0),
    )
    settings = Settings(_env_file=None, processing_guarantee=guarantee, key_dir="/keys")
    return Runtime(app, settings, FakePipeline(), tables=None, meter=FakeMeter(), changelog=[])


def handling_requests_with(runtime: Runtime, handle) -> Given:
    """The runtime's dispatch of the requests topic made `handle()`; what to give it."""
    runtime.dispatch[runtime.pipeline.topics.requests] = lambda key, value, meta, given: handle()
    return Given(Tables.empty())


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_an_events_table_writes_go_out_before_its_outputs_on_its_partition(guarantee):
    runtime = runtime_of(guarantee)

    def handle():
        runtime.changelog.append(("gc-test-passes-changelog", b"p1", b"state"))
        return [Out("gc.pass.decisions", b"s1", b"decision")]

    await runtime.guarded(fake_event(), handling_requests_with(runtime, handle))
    tid = "gc-test-0-2" if guarantee == "exactly_once" else None
    assert runtime.app.producer.sent == [
        ("gc-test-passes-changelog", b"p1", b"state", 2, tid),
        ("gc.pass.decisions", b"s1", b"decision", None, tid),
    ]
    assert runtime.changelog == [] and runtime.meter.handled_topics == ["gc.shipment.requests"]


async def test_an_unexpected_error_dead_letters_the_event():
    runtime = runtime_of("at_least_once")

    def handle():
        raise ValueError("boom")

    await runtime.guarded(fake_event(), handling_requests_with(runtime, handle))
    [(topic, key, value, partition, _)] = runtime.app.producer.sent
    assert (topic, key, value) == ("gc.dead-letters", b"dead", b"gc.shipment.requests internal error: ValueError: boom")
    assert runtime.meter.handled_topics == ["gc.shipment.requests"]  # handled: into the dead letters


def test_record_metadata_of_an_event():
    assert meta(fake_event()) == RecordMeta("gc.shipment.requests", 2, 7, 1500)


def test_the_channels_time_is_the_wall_clock_or_an_operators_tick_never_an_input():
    """With a wall clock of its own the worker's time is now; with none (GC_CLOCK_SECONDS=0) its
    partition's clock as last ticked, bounded by the wall clock, and nothing before the first tick
    (a request is then bounded by the wall clock alone)."""
    app = SimpleNamespace(producer=FakeProducer(), conf=SimpleNamespace(id="gc-test"))
    tables = Tables.empty()

    def runtime(clock_seconds: float) -> Runtime:
        settings = Settings(_env_file=None, clock_seconds=clock_seconds, key_dir="/keys")
        return Runtime(app, settings, FakePipeline(), tables=tables, meter=FakeMeter(), changelog=[])

    before = datetime.now(UTC)
    walled = runtime(60).now(3)
    assert walled is not None and before <= walled <= datetime.now(UTC)
    simulated = runtime(0)
    assert simulated.now(3) is None and before <= simulated.decision_now(3) <= datetime.now(UTC)
    tables.clocks["3"] = b"2020-02-25T12:00:00Z"
    assert simulated.now(3) == simulated.decision_now(3) == datetime(2020, 2, 25, 12, tzinfo=UTC)
    tables.clocks["3"] = b"2099-01-01T00:00:00Z"  # a tick ahead of the wall clock: the wall clock
    assert simulated.now(3) <= datetime.now(UTC)


# --- sends name their partition ---------------------------------------------------------------------


def test_an_events_answers_go_on_its_partition_other_records_keep_theirs():
    named = frozenset({"gc.pass.decisions", "gc.pass.status"})
    outs = [
        Out("gc.pass.decisions", b"s1", b"d"),
        Out("gc.pass.status", b"p1", b"s", (("ce_id", b"x"),)),
        Out("gc.pass.events", b"p1", b"broadcast", partition=3),
        Out("gc.deadletter", b"k", b"dl"),  # not named: another partition count, Kafka's partitioner
    ]
    placed = on_partition(outs, 2, named)
    assert [(o.topic, o.partition) for o in placed] == [
        ("gc.pass.decisions", 2),
        ("gc.pass.status", 2),
        ("gc.pass.events", 3),
        ("gc.deadletter", None),
    ]
    assert placed[1].headers == (("ce_id", b"x"),) and placed[1].value == b"s"


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_an_events_answers_are_sent_on_its_partition_once_named(guarantee):
    runtime = runtime_of(guarantee)
    runtime.named = frozenset({"gc.pass.decisions"})
    runtime.dispatch[runtime.pipeline.topics.requests] = lambda *_: [Out("gc.pass.decisions", b"s1", b"decision")]
    await runtime.guarded(fake_event(partition=2), Given(Tables.empty()))
    [(topic, _, _, partition, _)] = runtime.app.producer.sent
    assert (topic, partition) == ("gc.pass.decisions", 2)


async def test_the_answer_topics_with_the_workers_partition_count_are_named():
    runtime = runtime_of("at_least_once")
    counts = {"gc.pass.decisions": 4, "gc.pass.status": 4, "gc.deadletter": 6}

    class Metadata:
        async def partitions_for(self, topic):
            if topic not in counts:
                raise LookupError(topic)
            return set(range(counts[topic]))

    runtime.app.producer._ensure_producer = Metadata
    runtime.settings = Settings(_env_file=None, partitions=4)
    await runtime.learn_answer_partitions()
    assert runtime.named == {"gc.pass.decisions", "gc.pass.status"}  # the dead letters: 6, partitioned by key


def test_the_named_partition_is_the_one_kafkas_partitioner_gives_the_key():
    """A request on the partition its shipment id hashes to (a firm producing with Kafka's default
    partitioner): its decision (keyed by shipment id) and status events (keyed by pass number,
    allocated on that partition) hash there too, so naming it changes nothing a consumer sees;
    a scan arriving elsewhere is re-keyed to its pass's partition, named."""
    from models.passes import kafka_partition
    from streams.dev.simulator import Scenario, scans_for
    from tests.support.factories import make_pipeline

    pipeline, tables = make_pipeline(), Tables.empty()
    topics, scenario = pipeline.topics, Scenario(seed=5)
    named = frozenset({topics.decisions, topics.status, topics.deadletter})
    answers, approved = 0, []
    for n in range(40):
        body = scenario.request(n)
        key = body["shipment_id"].encode()
        p = kafka_partition(key, pipeline.partitions)
        outs = pipeline.on_request(key, orjson.dumps(body), RecordMeta(topics.requests, p, n, 0), tables=tables)
        for out in on_partition(outs, p, named):
            if out.topic in named:
                assert out.partition == p == kafka_partition(out.key, pipeline.partitions), out.topic
                answers += 1
            if out.topic == topics.decisions and orjson.loads(out.value)["decision"] == "approved":
                approved.append(orjson.loads(out.value))
    assert answers > 40 and approved
    for decision in approved[:5]:
        pass_id = decision["pass"]["pass_id"]
        home = kafka_partition(pass_id.encode(), pipeline.partitions)
        scan = next(iter(scans_for(decision, random.Random(pass_id))))
        elsewhere = (home + 1) % pipeline.partitions
        meta = RecordMeta(topics.scans, elsewhere, 0, 0)
        [rekeyed] = pipeline.on_scan(pass_id.encode(), orjson.dumps(scan), meta, tables=tables)
        assert (rekeyed.topic, rekeyed.partition) == (topics.pass_events, home)
