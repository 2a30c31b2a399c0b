"""streams.worker.compat: each touch of private Faust and aiokafka internals, and its premise.

Broker-free. A premise test reads the installed Faust or aiokafka code a touch relies on: an
upgrade that changes it fails here, by name, before it fails in a worker. The effects are
shown elsewhere: tests/faults/test_faults.py (takeover and exactly_once on a real cluster), the latency
rows of `make bench` (fetch wait).
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version
from types import SimpleNamespace

import aiokafka
import faust
import pytest
from aiokafka.client import AIOKafkaClient
from faust.assignor.partition_assignor import PartitionAssignor
from faust.tables.base import Collection
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer, TransactionManager
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Producer as FaustAIOKafkaProducer

from streams.worker import compat
from streams.worker.eos import CommitGate


def test_the_pinned_versions_are_installed():
    """pyproject.toml pins the minor versions these touches were proven on."""
    assert version("faust-streaming").startswith("0.15.")
    assert version("aiokafka").startswith("0.14.")


# --- fetch wait -----------------------------------------------------------------------------------


async def worker_consumer():
    app = faust.App("gc-test-fetchwait", broker="kafka://127.0.0.1:1")
    return app.consumer._thread._create_worker_consumer(app.transport)


async def test_worker_consumer_uses_the_fetch_wait_setting():
    compat.set_fetch_wait(25)
    compat.set_fetch_wait(40)  # installing again replaces the value, it does not stack wrappers
    consumer = await worker_consumer()
    try:
        assert consumer._fetch_max_wait_ms == 40
    finally:
        await consumer.stop()
    # the premise: Faust passes its own constant, so without this the setting would be ignored
    source = inspect.getsource(AIOKafkaConsumerThread._create_worker_consumer.__wrapped__)
    assert "fetch_max_wait_ms=1500" in source
    # ... and aiokafka's consumer builds its fetcher from the attribute when it starts
    assert "self._fetch_max_wait_ms" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)


# --- recovery: seek before resume -------------------------------------------------------------------


class RecordingConsumer:
    def __init__(self, fail_seek: bool = False) -> None:
        self.calls: list = []
        self.fail_seek = fail_seek

    def resume_partitions(self, tps) -> None:
        self.calls.append(("resume", frozenset(tps)))

    async def perform_seek(self) -> None:
        self.calls.append(("seek",))
        if self.fail_seek:
            raise TimeoutError("seek timed out")


def faust_order(*, seek: bool = True):
    """What Faust's two methods do: resume the stream partitions, then seek them."""

    async def method(self):
        consumer = self.app.consumer
        consumer.resume_partitions({"requests-0", "requests-1"})
        consumer.calls.append(("between",))
        if seek:
            await consumer.perform_seek()
        consumer.calls.append(("after",))
        return "done"

    return method


def owner(consumer) -> SimpleNamespace:
    return SimpleNamespace(app=SimpleNamespace(consumer=consumer))


async def test_seek_comes_before_resume():
    consumer = RecordingConsumer()
    wrapped = compat._seek_before_resume(faust_order())
    assert await wrapped(owner(consumer)) == "done"
    assert consumer.calls == [("between",), ("seek",), ("resume", frozenset({"requests-0", "requests-1"})), ("after",)]
    # the consumer's own methods are back
    assert "resume_partitions" not in vars(consumer) and "perform_seek" not in vars(consumer)


async def test_resume_still_happens_without_a_seek():
    consumer = RecordingConsumer()
    await compat._seek_before_resume(faust_order(seek=False))(owner(consumer))
    assert consumer.calls == [("between",), ("after",), ("resume", frozenset({"requests-0", "requests-1"}))]


async def test_failed_seek_still_resumes_and_raises():
    consumer = RecordingConsumer(fail_seek=True)
    with pytest.raises(TimeoutError):
        await compat._seek_before_resume(faust_order())(owner(consumer))
    assert consumer.calls == [("between",), ("seek",), ("resume", frozenset({"requests-0", "requests-1"}))]


def test_install_patches_faust_once():
    compat.seek_before_resume()
    first = {name: getattr(Recovery, name) for name in compat.RECOVERY_METHODS}
    compat.seek_before_resume()
    for name, method in first.items():
        assert getattr(Recovery, name) is method
        assert method.__gc_seek_before_resume__
        # The premise: Faust's own method resumes the stream partitions before it seeks them.
        # If an upgrade changes that, this fails and streams.worker.compat.seek_before_resume should be revisited.
        source = inspect.getsource(method.__wrapped__)
        assert source.index("consumer.resume_partitions(") < source.index("consumer.perform_seek()")


# --- exactly_once: commits, table writes, transactions -----------------------------------------------


def test_premise_every_faust_commit_goes_through_consumer_commit():
    # The timer and the rebalance paths call self.commit(): wrapping it gates them all.
    source = inspect.getsource(Consumer)
    assert source.count("await self.commit(") >= 3
    assert "def commit(" in source


async def test_wrapped_commit_waits_for_the_event_in_flight():
    calls = []

    class Stub:
        async def commit(self, *args, **kwargs):
            calls.append(("commit", args, kwargs))
            return True

    consumer, gate = Stub(), CommitGate()
    gate.install(consumer)
    gate.install(consumer)  # once per consumer
    async with gate.event():
        pending = asyncio.ensure_future(consumer.commit("tp", start_new_transaction=False))
        await asyncio.sleep(0)  # let the commit reach the gate (a scheduling step, not a wait for time)
        assert not pending.done() and calls == []
    assert await asyncio.wait_for(pending, 5) is True
    assert calls == [("commit", ("tp",), {"start_new_transaction": False})]


def test_transactional_id_is_the_one_faust_keeps_for_the_source_partition():
    app = faust.App("gc-test-tid", broker="kafka://127.0.0.1:1", processing_guarantee="exactly_once")
    assignor = SimpleNamespace(group_for_topic=lambda topic: {"gc.requests": 2}[topic])
    fake = SimpleNamespace(conf=app.conf, assignor=assignor)
    assert compat.transactional_id(fake, "gc.requests", 3) == "gc-test-tid-2-3"
    # The premises: Faust names its per-partition transactions with this format, and its
    # producer sends into the one named.
    assert TransactionManager.transactional_id_format == "{group_id}-{tpg.group}-{tpg.partition}"
    assert "self.transactional_id_format.format(" in inspect.getsource(TransactionManager._tps_to_transactional_ids)
    assert "transactional_id" in inspect.signature(FaustAIOKafkaProducer.send).parameters
    assert "self._transaction_producers.get(transactional_id)" in inspect.getsource(FaustAIOKafkaProducer.send)
    assert callable(PartitionAssignor.group_for_topic)


# --- metadata -----------------------------------------------------------------------------------------


def test_premise_metadata_refresh_and_the_faust_producers_client():
    # force_metadata_update returns an awaitable (a shielded future) that the synchroniser resolves.
    assert "return asyncio.shield(self._md_update_fut)" in inspect.getsource(AIOKafkaClient.force_metadata_update)
    assert "self._client" in inspect.getsource(aiokafka.AIOKafkaConsumer.__init__)
    assert callable(FaustAIOKafkaProducer._ensure_producer)
    assert asyncio.iscoroutinefunction(aiokafka.AIOKafkaProducer.partitions_for)


# --- at_least_once outputs, straight to the producer (streams.worker.runtime.Runtime.send_all) ---------


def test_faust_flushes_the_producer_before_it_commits_offsets_without_transactions():
    """The worker sends its outputs with `app.producer.send` and does not await their delivery:
    safe only because Faust's commit, outside a transaction, flushes the producer first."""
    source = inspect.getsource(Consumer._commit_offsets)
    flush, commit = (
        source.index("await self.app.producer.flush()"),
        source.index("await self._commit(committable_offsets)"),
    )
    assert flush < commit
    assert "async def send" in inspect.getsource(FaustAIOKafkaProducer.send)


# --- table writes straight to the store (streams.worker.compat.DirectTable) --------------------------------


def test_a_direct_table_write_is_what_faust_would_store_and_recover():
    """The worker writes a table's store itself and sends the changelog record Faust would have
    sent (its own serializers); Faust's recovery decodes that record back to the same entry."""
    from faust.tables.table import Table
    from faust.types import Message
    from mode.utils.collections import ManagedUserDict

    app = faust.App("gc-test-direct", broker="kafka://127.0.0.1:1")
    table = app.Table("t", key_type=str, value_type=bytes, partitions=4)
    pending: list = []
    direct = compat.DirectTable(table, pending)
    direct["420111000001"] = b'{"status":"issued"}'
    assert table.data["420111000001"] == direct.get("420111000001") == b'{"status":"issued"}'
    assert direct.get("nothing") is None and list(direct) == ["420111000001"] and len(direct) == 1
    [(topic, key, value)] = pending
    assert topic == table.changelog_topic.get_topic_name() == "gc-test-direct-t-changelog"
    record = Message(
        topic=topic,
        partition=0,
        offset=0,
        timestamp=0.0,
        timestamp_type=0,
        headers=[],
        key=key,
        value=value,
        checksum=None,
    )
    schema = table.changelog_topic.schema
    assert schema.loads_key(app, record, serializer=table.key_serializer) == "420111000001"
    assert schema.loads_value(app, record, serializer=table.value_serializer) == b'{"status":"issued"}'
    # Premises: Faust's own write is `on_key_set` (the changelog, with the table's serializers)
    # and then the store; there is nothing else to do.
    assert "self.on_key_set(key, value)" in inspect.getsource(ManagedUserDict.__setitem__)
    assert "self.data[key] = value" in inspect.getsource(ManagedUserDict.__setitem__)
    assert "self.send_changelog(self.partition_for_key(key), key, value)" in inspect.getsource(Table.on_key_set)
    send = inspect.getsource(Collection.send_changelog)
    assert "key_serializer = self.key_serializer" in send and "value_serializer = self.value_serializer" in send
    # A deletion (a pass leaving the working state) sends a tombstone, which Faust's recovery of
    # the memory store reads as a deletion.
    del direct["420111000001"]
    assert "420111000001" not in table.data and pending[-1] == (topic, key, None)
    from faust.stores.memory import Store

    iterator = inspect.getsource(Store._create_batch_iterator)
    assert "if event.message.value is None:" in iterator and "mark_as_delete(key)" in iterator
    assert "delete_key(key, None)" in inspect.getsource(Store.apply_changelog_batch)


# --- table recovery: where each changelog ends ---------------------------------------------------


def test_premise_faust_takes_recovery_highwaters_from_the_cached_last_stable_offset_under_transactions():
    """If an upgrade stops doing this, streams.worker.compat.ask_highwaters can go."""
    compat.ask_highwaters()
    original = AIOKafkaConsumerThread._highwaters.__wrapped__
    source = inspect.getsource(original)
    assert "in_transaction" in source and "consumer.last_stable_offset(tp)" in source


async def test_premise_a_consumer_knows_no_last_stable_offset_before_it_fetched():
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", isolation_level="read_committed")
    tp = TopicPartition("t", 0)
    consumer._subscription.assign_from_user({tp})  # assigned, nothing fetched yet
    assert consumer.last_stable_offset(tp) is None  # Faust reads None as -1: an empty changelog


async def test_recovery_highwaters_are_asked_of_the_broker():
    compat.ask_highwaters()
    compat.ask_highwaters()
    assert AIOKafkaConsumerThread._highwaters.__gc_ask_highwaters__
    assert not getattr(AIOKafkaConsumerThread._highwaters.__wrapped__, "__gc_ask_highwaters__", False)

    class Broker:
        async def end_offsets(self, partitions):
            return {tp: 41 + i for i, tp in enumerate(partitions)}

        def last_stable_offset(self, tp):  # what Faust read: None before the first fetch
            return None

    thread = SimpleNamespace(_ensure_consumer=lambda: Broker(), consumer=SimpleNamespace(in_transaction=True))
    got = await AIOKafkaConsumerThread._highwaters(thread, ["changelog-0", "changelog-1"])
    assert got == {"changelog-0": 41, "changelog-1": 42}


# --- fetching: only the partitions asked for ---------------------------------------------------------


def test_premise_faust_fetches_with_its_live_active_set_and_aiokafka_reads_empty_as_every_partition():
    """If an upgrade changes either, streams.worker.compat.fetch_what_was_asked should be revisited."""
    from aiokafka.consumer.fetcher import Fetcher

    assert "tps = self._active_partitions" in inspect.getsource(Consumer._get_active_partitions)
    assert "active_partitions = self._get_active_partitions()" in inspect.getsource(Consumer._wait_next_records)
    assert "if partitions and tp not in partitions:" in inspect.getsource(Fetcher.fetched_records)
    # and Faust skips, without a seek, what it fetched for a partition no longer active
    assert "or tp in active_partitions" in inspect.getsource(Consumer.getmany)
    # the fetch the wrapper replaces: called in the consumer thread with the set, as wrapped
    assert "self._fetch_records," in inspect.getsource(AIOKafkaConsumerThread.getmany)
    original = inspect.unwrap(AIOKafkaConsumerThread._fetch_records)
    assert list(inspect.signature(original).parameters) == [
        "self",
        "consumer",
        "active_partitions",
        "timeout",
        "max_records",
    ]


class Record(SimpleNamespace):
    pass


class PausingFetch:
    """What aiokafka did: while the fetch waited, Faust emptied its live active set (recovery paused
    the changelogs; the streams resume after the seek), and the fetch drained every partition."""

    def __init__(self, live: set, paused_meanwhile: set) -> None:
        self.live, self.paused_meanwhile, self.asked = live, paused_meanwhile, []

    async def __call__(self, thread, consumer, active_partitions, timeout=None, max_records=None):
        self.asked.append(active_partitions)
        self.live -= self.paused_meanwhile
        return {tp: [Record(offset=40), Record(offset=41)] for tp in (active_partitions or {"requests-1"})}


class Seeks:
    def __init__(self) -> None:
        self.seeks = []

    def seek(self, tp, offset) -> None:
        self.seeks.append((tp, offset))


async def test_a_fetch_takes_a_snapshot_and_seeks_back_what_was_paused_meanwhile():
    live = {"changelog-0", "changelog-1"}
    fetch = PausingFetch(live, paused_meanwhile={"changelog-1"})
    thread = SimpleNamespace(consumer=SimpleNamespace(_active_partitions=live, _buffered_partitions=set()))
    consumer = Seeks()
    got = await compat._fetch_asked(fetch)(thread, consumer, live, timeout=1.0)
    assert fetch.asked == [frozenset({"changelog-0", "changelog-1"})]  # not the live set
    assert got == {"changelog-0": [Record(offset=40), Record(offset=41)]}
    assert consumer.seeks == [("changelog-1", 40)]  # fetched after its pause: back where it was


async def test_nothing_is_fetched_when_nothing_is_active():
    fetch = PausingFetch(set(), paused_meanwhile=set())
    thread = SimpleNamespace(consumer=SimpleNamespace(_active_partitions=set(), _buffered_partitions=set()))
    assert await compat._fetch_asked(fetch)(thread, Seeks(), set(), timeout=1.0) == {}
    assert fetch.asked == []  # aiokafka would have read the empty set as every partition


def test_fetch_what_was_asked_patches_faust_once():
    compat.fetch_what_was_asked()
    first = AIOKafkaConsumerThread._fetch_records
    compat.fetch_what_was_asked()
    assert AIOKafkaConsumerThread._fetch_records is first and first.__gc_fetch_what_was_asked__
