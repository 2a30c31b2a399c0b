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
    gate.install(consumer, TransactionProducers())
    gate.install(consumer, TransactionProducers())  # once per consumer
    async with gate.event():
        pending = asyncio.ensure_future(consumer.commit("tp", start_new_transaction=False))
        await asyncio.sleep(0)  # let the commit reach the gate (a scheduling step, not a wait for time)
        assert not pending.done() and calls == []
    assert await asyncio.wait_for(pending, 5) is True
    assert calls == [("commit", ("tp",), {"start_new_transaction": False})]


async def test_events_go_on_while_a_commit_runs_their_records_kept_for_the_next_transaction():
    tid = "gc-test-2-3"
    producer = TransactionProducers(tid)
    app = partition_app(producer)
    committing, may_end = asyncio.Event(), asyncio.Event()
    handed_when_committing = []

    class Consumer:
        async def commit(self, topics=None, start_new_transaction=True):
            handed_when_committing.append(len(producer.futures))
            committing.set()
            await may_end.wait()  # the transactions commit meanwhile
            return True

    consumer, gate = Consumer(), CommitGate()
    gate.install(consumer, producer)
    async with gate.event():
        await compat.send_in_partition_transaction(app, event_on(3), outs(b"before"))
    commit = asyncio.ensure_future(consumer.commit())
    await asyncio.wait_for(committing.wait(), 5)

    async def during() -> None:
        async with gate.event():
            await compat.send_in_partition_transaction(app, event_on(3), outs(b"during", b"during-2"))

    await asyncio.wait_for(during(), 5)  # not blocked by the commit
    assert producer.values == [b"before"]  # kept while the commit runs
    may_end.set()
    assert await asyncio.wait_for(commit, 5) is True
    assert handed_when_committing == [1]
    assert producer.values == [b"before", b"during", b"during-2"]  # handed after, in order
    async with gate.event():
        await compat.send_in_partition_transaction(app, event_on(3), outs(b"after"))
    assert producer.values[-1] == b"after" and compat._held(producer) == {}


async def test_a_failed_commit_keeps_the_hold_and_nothing_commits_again():
    producer = TransactionProducers("gc-test-2-3")
    app = partition_app(producer)

    class Consumer:
        async def commit(self, topics=None, start_new_transaction=True):
            raise RuntimeError("EndTxn failed")

    consumer, gate = Consumer(), CommitGate()
    gate.install(consumer, producer)
    with pytest.raises(RuntimeError, match="EndTxn failed"):
        await consumer.commit()
    async with gate.event():
        await compat.send_in_partition_transaction(app, event_on(3), outs(b"kept"))
    assert producer.values == []  # never handed: its offset must not commit either
    with pytest.raises(RuntimeError, match="earlier commit"):
        await consumer.commit()


async def test_a_commit_ending_a_transaction_drops_what_was_kept_for_it_and_commits_go_on():
    """Faust ends the transactions (commit, start_new_transaction=False) as partitions are revoked:
    a rebalance, e.g. a second worker joining, or a stop. Records kept meanwhile for a transaction
    it ended have none to go to (their events' offsets were not committed: handled again by the
    partition's next owner); one it left open (no offset of its own to commit) takes them. No commit
    is made until the next assignment has begun new transactions; then the next one is, not taken
    for one after a failure."""
    ended, left = "gc-test-2-3", "gc-test-2-1"
    producer = TransactionProducers(ended, left)
    app = partition_app(producer)
    committing, may_end = asyncio.Event(), asyncio.Event()
    commits = []

    class Ending:
        async def commit(self, topics=None, start_new_transaction=True):
            commits.append(start_new_transaction)
            committing.set()
            await may_end.wait()
            producer._transaction_producers[ended]._txn_manager.is_in_transaction = lambda: False
            return True

    consumer, gate = Ending(), CommitGate()
    gate.install(consumer, producer)
    ending = asyncio.ensure_future(consumer.commit(start_new_transaction=False))
    await asyncio.wait_for(committing.wait(), 5)
    async with gate.event():
        await compat.send_in_partition_transaction(app, event_on(3), outs(b"for the ended one"))
    async with gate.event():
        await compat.send_in_partition_transaction(app, event_on(1), outs(b"for the open one"))
    may_end.set()
    assert await asyncio.wait_for(ending, 5) is True
    assert producer.values == [b"for the open one"] and compat._held(producer) == {}
    may_end.clear()
    committing.clear()
    # Until the assignment begins new transactions (a stop: never) Faust's timer has nothing to commit in.
    assert await consumer.commit() is False and commits == [False]
    await gate.on_partitions_assigned(app, set())
    follow = asyncio.ensure_future(consumer.commit())
    await asyncio.wait_for(committing.wait(), 5)
    may_end.set()
    assert await asyncio.wait_for(follow, 5) is True  # the next commit is made
    assert commits == [False, True]
    # The premises: Faust ends the transactions so when partitions are revoked, and commits (ends)
    # only those with offsets to commit; aiokafka's producer knows whether its transaction is open.
    assert "await self.commit(start_new_transaction=False)" in inspect.getsource(Consumer.commit_and_end_transactions)
    assert "self.commit_and_end_transactions" in inspect.getsource(Consumer.wait_empty)
    assert "if commit_offsets:" in inspect.getsource(Consumer._commit_tps)
    assert "return self.state == TransactionState.IN_TRANSACTION" in inspect.getsource(
        aiokafka.producer.transaction_manager.TransactionManager.is_in_transaction
    )
    assert "self._txn_manager = TransactionManager(" in inspect.getsource(aiokafka.AIOKafkaProducer.__init__)
    # Faust begins the new transactions before it signals the assignment.
    assigned = inspect.getsource(faust.App._on_partitions_assigned)
    assert assigned.index("consumer.transactions.on_rebalance") < assigned.index("self.on_partitions_assigned.send")


async def test_records_kept_for_a_transaction_replaced_meanwhile_are_dropped():
    tid = "gc-test-2-3"
    producer = TransactionProducers(tid)
    app = partition_app(producer)
    compat.hold_transactions(producer)
    await compat.send_in_partition_transaction(app, event_on(3), outs(b"kept"))
    producer._transaction_producers[tid] = transaction_producer()  # revoked and assigned again: Faust's new producer
    await compat.release_transactions(producer)
    assert producer.values == [] and compat._held(producer) == {}


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


# --- exactly_once, batched: records handed to a transaction, delivered before it commits -------------


def test_premise_aiokafka_sends_what_a_transaction_was_handed_before_it_ends_it():
    """An event's records are handed to its transaction's producer and not awaited: safe because
    aiokafka's commit first flushes every batch handed to it, then sends EndTxn."""
    from aiokafka.producer.sender import Sender

    source = inspect.getsource(Sender._do_txn_commit)
    assert source.index("await self._message_accumulator.flush_for_commit()") < source.index("EndTxnHandler(")
    # and Faust's commit of a transaction is aiokafka's: offsets, commit, the next one begun
    commit = inspect.getsource(inspect.unwrap(FaustAIOKafkaProducer.commit_transactions))
    assert "for transactional_id, offsets in tid_to_offset_map.items():" in commit
    offsets, end, begin = (
        commit.index("await transaction_producer.send_offsets_to_transaction("),
        commit.index("await transaction_producer.commit_transaction()"),
        commit.index("await transaction_producer.begin_transaction()"),
    )
    assert commit.index("async with self._trn_locks[transactional_id]:") < offsets < end < begin


async def test_premise_a_transactions_commit_waits_for_its_batches_but_not_for_their_success():
    """flush_for_commit waits for every batch handed to the transaction so far, closing them (a
    record handed after that starts a batch of its own: the next transaction's); a failed batch
    does not stop the commit. Hence `_delivered`: a transaction commits only once each record handed
    to it is delivered."""
    from aiokafka.errors import KafkaTimeoutError
    from aiokafka.producer.message_accumulator import MessageAccumulator
    from aiokafka.structs import TopicPartition

    accumulator = MessageAccumulator(None, 16384, 0, 30)
    tp = TopicPartition("gc.pass.decisions", 0)
    handed = await accumulator.add_message(tp, b"k", b"v", timeout=1)
    flushing = asyncio.ensure_future(accumulator.flush_for_commit())
    await asyncio.sleep(0)  # a scheduling step: the flush reaches its wait
    assert not flushing.done()
    [batch] = accumulator._batches[tp]
    assert batch.append(b"k2", b"v2", None) is None  # closed: a later record waits for a batch of its own
    batch.failure(KafkaTimeoutError())
    await asyncio.wait_for(flushing, 5)  # returned, no error raised: EndTxn(COMMIT) would follow
    assert isinstance(handed.exception(), KafkaTimeoutError)


def test_premise_a_record_sent_while_its_transaction_commits_lands_in_the_next():
    """Faust sends into a transaction under the lock its commit holds from the offsets to the next
    transaction's begin: a record of an event in flight during a commit would land in the next
    transaction, apart from the offset just committed. The commit gate (streams.worker.eos) keeps
    every event out of a commit's way."""
    send = inspect.getsource(FaustAIOKafkaProducer.send)
    assert "async with self._trn_locks[transactional_id]:" in send
    assert "await transaction_producer.send(" in send


def test_premise_faust_does_not_flush_its_producer_before_a_transactional_commit():
    """Faust's own table writes go through the producer's buffer (send_soon), flushed before an
    at_least_once commit but not before a transactional one: a write could land in the next
    transaction, or none. The worker writes no table through Faust (`DirectTable`)."""
    from faust.tables.base import Collection

    source = inspect.getsource(Consumer._commit_offsets)
    transactional, otherwise = source.index("if self.in_transaction:"), source.index("else:")
    assert "flush()" not in source[transactional:otherwise]
    assert "flush()" in source[otherwise:]
    assert ".send_soon(" in inspect.getsource(Collection.send_changelog)

    app = faust.App("gc-test-noflush", broker="kafka://127.0.0.1:1")
    table = app.Table("t", key_type=str, value_type=bytes, partitions=4)
    table.send_changelog = lambda *a, **k: pytest.fail("a table write went through Faust's buffer")
    pending: list = []
    compat.DirectTable(table, pending)["p"] = b"x"
    assert len(pending) == 1


def transaction_producer(open_: bool = True) -> SimpleNamespace:
    """An aiokafka producer as the touches see it: its transaction open or not."""
    return SimpleNamespace(_txn_manager=SimpleNamespace(is_in_transaction=lambda: open_))


class TransactionProducers:
    """Faust's producer as the touches see it: a transaction's aiokafka producer by id, its sends."""

    def __init__(self, *tids: str) -> None:
        self._transaction_producers = {tid: transaction_producer() for tid in tids}
        self.futures: list[asyncio.Future] = []
        self.values: list[bytes] = []
        self.committed: list[str] = []

    async def send(self, topic, key, value, partition, timestamp, headers, *, transactional_id):
        self.futures.append(asyncio.get_running_loop().create_future())
        self.values.append(value)
        return self.futures[-1]


def partition_app(producer) -> SimpleNamespace:
    """An app whose requests are group 2: partition 3's transaction is "gc-test-2-3"."""
    return SimpleNamespace(
        producer=producer, conf=SimpleNamespace(id="gc-test"), assignor=SimpleNamespace(group_for_topic=lambda t: 2)
    )


def event_on(partition: int, offset: int = 0) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(topic="gc.requests", partition=partition, offset=offset))


def outs(*values: bytes) -> list:
    return [SimpleNamespace(topic="gc.pass.decisions", key=b"k", value=v, partition=3, headers=()) for v in values]


def records_of(producer, tid: str, n: int) -> list[asyncio.Future]:
    futures = [asyncio.get_running_loop().create_future() for _ in range(n)]
    compat._sent(producer).setdefault(tid, []).extend((producer._transaction_producers[tid], f) for f in futures)
    return futures


def recording_commit(started: list, release: dict):
    async def commit_transactions(self, tid_to_offset_map, group_id, start_new_transaction=True):
        [(tid, offsets)] = tid_to_offset_map.items()  # one transaction per call
        started.append(tid)
        await release.setdefault(tid, asyncio.Event()).wait()
        self.committed.append(tid)

    return commit_transactions


async def test_send_in_partition_transaction_hands_the_records_over_without_awaiting_delivery():
    tid = "gc-test-2-3"
    producer = TransactionProducers(tid)
    sending = compat.send_in_partition_transaction(partition_app(producer), event_on(3), outs(b"a", b"b"))
    await asyncio.wait_for(sending, 5)  # nothing delivered yet
    assert compat._sent(producer)[tid] == [(producer._transaction_producers[tid], f) for f in producer.futures]


TP0, TP1 = faust.types.TP("t", 0), faust.types.TP("t", 1)


async def test_transactions_commit_concurrently_each_once_its_records_are_delivered():
    producer = TransactionProducers("t-0", "t-1")
    started, release = [], {}
    commit = compat._commit_each_when_delivered(recording_commit(started, release))
    [record] = records_of(producer, "t-0", 1)
    committing = asyncio.ensure_future(commit(producer, {"t-0": {TP0: 5}, "t-1": {TP1: 7}}, "gc"))
    await asyncio.sleep(0)  # scheduling steps: each commit reaches its wait
    await asyncio.sleep(0)
    assert started == ["t-1"]  # t-0 waits for its record; t-1 does not wait for t-0
    record.set_result(None)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert started == ["t-1", "t-0"]  # both commits in progress at once
    for event in release.values():
        event.set()
    await asyncio.wait_for(committing, 5)
    assert sorted(producer.committed) == ["t-0", "t-1"] and compat._sent(producer)["t-0"] == []


async def test_a_failed_delivery_fails_every_commit_of_its_transaction():
    from aiokafka.errors import KafkaTimeoutError

    producer = TransactionProducers("t-0")
    started, release = [], {"t-0": asyncio.Event()}
    release["t-0"].set()
    commit = compat._commit_each_when_delivered(recording_commit(started, release))
    [record] = records_of(producer, "t-0", 1)
    record.set_exception(KafkaTimeoutError())
    for _ in range(2):  # the timer's commit, then the one at shutdown: neither commits
        with pytest.raises(KafkaTimeoutError):
            await commit(producer, {"t-0": {TP0: 5}}, "gc", start_new_transaction=False)
    assert started == [] and producer.committed == []


async def test_records_of_a_stopped_transaction_producer_are_not_waited_for():
    producer = TransactionProducers("t-0")
    started, release = [], {"t-0": asyncio.Event()}
    release["t-0"].set()
    commit = compat._commit_each_when_delivered(recording_commit(started, release))
    records_of(producer, "t-0", 1)  # never delivered: its producer was stopped (the partition revoked)
    producer._transaction_producers["t-0"] = object()  # a new producer for the partition assigned again
    await asyncio.wait_for(commit(producer, {"t-0": {TP0: 5}}, "gc"), 5)
    assert producer.committed == ["t-0"]


def test_commit_transactions_concurrently_patches_faust_once():
    compat.commit_transactions_concurrently()
    first = FaustAIOKafkaProducer.commit_transactions
    compat.commit_transactions_concurrently()
    assert FaustAIOKafkaProducer.commit_transactions is first and first.__gc_commit_concurrently__
    assert not getattr(first.__wrapped__, "__gc_commit_concurrently__", False)


def test_exactly_once_commits_every_transaction_interval():
    from streams.settings import Settings
    from streams.worker.app import app_config

    eos = app_config(Settings(processing_guarantee="exactly_once", transaction_interval_ms=100))
    assert eos["broker_commit_interval"] == 0.1 and eos["producer_max_batch_size"] == 256 * 1024
    alo = app_config(Settings())
    assert "broker_commit_interval" not in alo and "producer_max_batch_size" not in alo  # Faust's own


# --- standby replicas: memory tables ------------------------------------------------------------


def changelog_event(tp, offset: int, key: str, value: bytes | None):
    message = SimpleNamespace(tp=tp, topic=tp.topic, partition=tp.partition, offset=offset, key=key, value=value)
    return SimpleNamespace(message=message, key=key, value=value)


def memory_store():
    from faust.stores.memory import Store as MemoryStore

    app = faust.App("gc-test-standby", broker="kafka://127.0.0.1:1")
    table = app.Table("t", key_type=str, value_type=bytes, partitions=2)
    return MemoryStore("memory://", app, table)


async def test_a_standby_keeps_its_memory_tables_and_answers_the_offset_it_applied():
    from faust.types import TP

    compat.keep_standby_tables()
    compat.keep_standby_tables()  # idempotent: one wrapper
    store = memory_store()
    active, standby = TP("c", 0), TP("c", 1)
    apply = lambda events: store.apply_changelog_batch(events, lambda k: k, lambda v: v)  # noqa: E731
    apply([changelog_event(active, 0, "a", b"1"), changelog_event(standby, 0, "s", b"1")])
    await store.on_recovery_completed({active}, {standby})
    assert dict(store.data) == {"a": b"1", "s": b"1"}  # Faust's own drops "s"
    # Applied before it was known as a standby: read again from the start (None), never skipped.
    assert store.persisted_offset(standby) is None and store.persisted_offset(active) is None
    apply([changelog_event(standby, 1, "s", b"2"), changelog_event(standby, 2, "t", b"3")])
    apply([changelog_event(standby, 3, "t", None)])  # a tombstone
    assert store.persisted_offset(standby) == 3 and dict(store.data) == {"a": b"1", "s": b"2"}
    store["w"] = b"written as active"  # DirectTable: no offset
    assert store.persisted_offset(active) is None
    # A rebalance keeps the standby: still followed from where it was.
    await store.on_recovery_completed({active}, {standby})
    assert store.persisted_offset(standby) == 3 and store.data["s"] == b"2"
    # The takeover: Faust's recovery starts from the offset (Recovery._add), then the partition is active.
    await store.on_recovery_completed({active, standby}, set())
    assert store.persisted_offset(standby) is None and store.data["s"] == b"2"
    # No longer anything here: its keys go, as Faust's own does.
    await store.on_recovery_completed({active}, set())
    assert "s" not in store.data


def test_keep_standby_tables_premises():
    """Faust's memory store drops what it is not active for and has no offset; its recovery starts
    an active partition from the store's persisted offset when there is one."""
    from faust.stores.memory import Store as MemoryStore

    completed = inspect.getsource(MemoryStore.on_recovery_completed.__wrapped__)
    assert "partitions = {partition for _, partition in active_tps}" in completed
    assert "self._key_partition" in inspect.getsource(MemoryStore._create_batch_iterator)
    assert "persisted_offset = table.persisted_offset(tp)" in inspect.getsource(Recovery._add)
    assert "destination[tp] = max(last_value, new_value)" in inspect.getsource(Recovery._build_offsets)
    # the standby partitions are handed to the store on completion, and changelog batches reach it
    assert "self.standbys_for_table[table]" in inspect.getsource(Recovery.on_recovery_completed)
    assert "self.data.apply_changelog_batch(" in inspect.getsource(Collection.apply_changelog_batch)


def test_standby_replicas_setting_reaches_faust():
    from streams.settings import Settings
    from streams.worker.app import app_config

    assert app_config(Settings())["table_standby_replicas"] == 0
    assert app_config(Settings(standby_replicas=1))["table_standby_replicas"] == 1


# --- table recovery: its end seen promptly -------------------------------------------------------


async def test_recovery_waits_on_its_changelog_queue_at_most_the_idle_seconds():
    import faust.tables.recovery as recovery

    compat.end_recovery_promptly()
    compat.end_recovery_promptly()  # idempotent
    assert recovery.asyncio.__gc_end_recovery_promptly__ and recovery.asyncio.Event is asyncio.Event
    never = asyncio.get_running_loop().create_future()
    started = asyncio.get_running_loop().time()
    with pytest.raises(asyncio.TimeoutError):
        await recovery.asyncio.wait_for(never, timeout=5.0)
    assert asyncio.get_running_loop().time() - started < 5.0  # capped at RECOVERY_IDLE_SECONDS


def test_end_recovery_promptly_premises():
    """Faust's recovery waits 5 s on its changelog queue, twice idle before it looks for a partition
    read past its end (a transaction marker under exactly_once); that wait is the module's only
    `asyncio.wait_for`."""
    import faust.tables.recovery as recovery

    module = inspect.getsource(recovery)
    slurp = module[module.index("async def _slurp_changelogs") : module.index("def flush_buffers")]
    assert "asyncio.wait_for(\n                        changelog_queue.get(), timeout=5.0" in slurp
    assert "timeout and self.app.in_transaction and timeout_count > 1" in slurp
    assert "await self.app.consumer.position(tp)" in slurp and "offsets[tp] = highwater" in slurp
    assert module.count("asyncio.wait_for(") == 1
    assert "value - 1 if value is not None else -1" in inspect.getsource(Recovery._build_highwaters)


def test_raw_producer_is_what_fausts_send_and_flush_use():
    """at_least_once sends go to the aiokafka producer behind Faust's (`compat.raw_producer`): the
    one Faust's own send hands a record to outside a transaction, and its flush (before each
    offset commit) waits for."""
    send = inspect.getsource(FaustAIOKafkaProducer.send)
    assert "transaction_producer = self._ensure_producer()" in send
    assert "await transaction_producer.send(" in send and "partition=partition" in send
    assert "await self._producer.flush()" in inspect.getsource(FaustAIOKafkaProducer.flush)
    assert "return self._producer" in inspect.getsource(FaustAIOKafkaProducer._ensure_producer)
    app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: "the aiokafka producer"))
    assert compat.raw_producer(app) == "the aiokafka producer"


# --- tables on RocksDB ----------------------------------------------------------------------------


def rocks_app(tmp_path, guarantee: str = "at_least_once"):
    app = faust.App(
        f"gc-test-rocks-{guarantee}",
        broker="kafka://127.0.0.1:1",
        store="rocksdb://",
        datadir=str(tmp_path),
        processing_guarantee=guarantee,
    )
    options = compat.rocksdb_options(block_cache_mb=1, write_buffer_mb=1, write_buffers=2, max_open_files=16)
    return app, app.Table("t", key_type=str, value_type=bytes, partitions=4, options=options)


def in_event(partition: int, topic: str = "gc.requests"):
    """Make the current Faust event one of `partition` (as a stream does while an agent handles it)."""
    from faust.streams import _current_event

    event = SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition))
    _current_event.set(lambda: event)  # what Faust sets is a weakref: called, it gives the event
    return event


def test_premise_faust_rocksdb_writes_the_partition_of_the_current_event_and_keeps_its_offset_there():
    from faust.stores.rocksdb import RocksDBOptions, Store

    assert "event = current_event()" in inspect.getsource(Store._set)
    assert "partition = event.message.partition" in inspect.getsource(Store._set)
    assert "self.offset_key" in inspect.getsource(Store.set_persisted_offset)
    assert "self._db_for_partition(tp.partition).get(self.offset_key)" in inspect.getsource(Store.persisted_offset)
    # Recovery puts the changelog record's bytes as they are: what DirectTable writes.
    batch = inspect.getsource(Store.apply_changelog_batch)
    assert "batches[msg.partition].put(msg.key, msg.value)" in batch and "delete(msg.key)" in batch
    # The options DirectTable's tables are opened with are Faust's (rocksdict's block cache per database).
    opened = inspect.getsource(RocksDBOptions.as_options)
    assert "rocksdict.Cache(self.block_cache_size)" in opened and "set_write_buffer_size" in opened
    assert "set_max_write_buffer_number" in opened and "set_max_open_files" in opened
    # Recovery starts reading a changelog at the offset the store persisted.
    assert "table.persisted_offset(tp)" in inspect.getsource(Recovery._add)
    # Under transactions Faust persists an offset only on a commit of the *changelog* partition,
    # which its consumer never commits (it commits source partitions): DirectTable does it itself.
    from faust.tables.manager import TableManager

    assert "self.on_commit_tp(tp)" in inspect.getsource(TableManager.on_commit)


def test_a_direct_table_on_rocksdb_writes_its_events_partition_what_recovery_would(tmp_path):
    app, table = rocks_app(tmp_path)
    pending: list = []
    direct = compat.DirectTable(table, pending)
    in_event(2)
    direct["420111000001"] = b'{"status":"issued"}'
    [(topic, key, value)] = pending
    store = table.data
    assert set(store._dbs) == {2}  # the event's partition, nothing else
    assert store._dbs[2].get(key) == value  # the changelog record's bytes, as recovery puts them
    assert direct["420111000001"] == direct.get("420111000001") == b'{"status":"issued"}'
    in_event(1)
    assert direct.get("420111000001") is None  # another partition's event reads its own database
    in_event(2)
    assert list(direct) == [] or list(direct) == ["420111000001"]  # iteration: the actives (none assigned here)
    del direct["420111000001"]
    assert pending[-1] == (topic, key, None) and store._dbs[2].get(key) is None
    with pytest.raises(KeyError):
        del direct["420111000001"]
    assert bool(direct)  # truth without a walk of every key
    _current_event_none()
    with pytest.raises(RuntimeError, match="outside an event"):
        direct["x"] = b"1"


def _current_event_none():
    from faust.streams import _current_event

    _current_event.set(None)


async def test_a_delivered_changelog_record_persists_its_offset(tmp_path):
    app, table = rocks_app(tmp_path)
    direct = compat.DirectTable(table, [])
    in_event(3)
    direct["k"] = b"v"
    assert direct.rocks.marker(3).exists()  # at_least_once too: unmarked once delivered and committed
    topic = table.changelog_topic.get_topic_name()
    tp = faust.types.TP(topic, 3)
    for offset in (41, 40):  # a late callback never moves it back
        future = asyncio.get_running_loop().create_future()
        compat.persist_delivered(app, topic, 3, future)
        future.set_result(SimpleNamespace(topic=topic, partition=3, offset=offset))
        await asyncio.sleep(0)
    assert table.data.persisted_offset(tp) == 41
    failed = asyncio.get_running_loop().create_future()
    compat.persist_delivered(app, topic, 3, failed)
    failed.set_exception(RuntimeError("not delivered"))
    await asyncio.sleep(0)
    assert table.data.persisted_offset(tp) == 41 and direct.rocks.failed == {3}
    compat.persist_delivered(app, "gc.decisions", 3, asyncio.get_running_loop().create_future())  # not a table


async def test_at_least_once_a_commit_after_the_writes_removes_their_marker(tmp_path):
    """Faust's offset commit flushes the producer first: every changelog record sent before it is
    delivered, so the partitions written no more since are unmarked; a failed delivery keeps its mark."""
    app, table = rocks_app(tmp_path)
    direct = compat.DirectTable(table, [])
    in_event(1)
    direct["a"] = b"1"
    in_event(2)
    direct["b"] = b"2"
    assert direct.rocks.marker(1).exists() and direct.rocks.marker(2).exists()
    direct.rocks.failed.add(2)
    results = [True]

    async def commit(*args, **kwargs):
        in_event(1)
        direct["c"] = b"3"  # written while the commit flushes: not covered by it
        return results.pop()

    consumer = SimpleNamespace(app=app, commit=commit)
    compat.settle_on_commit(consumer)
    compat.settle_on_commit(consumer)  # once per consumer
    assert await consumer.commit() is True
    assert direct.rocks.marker(1).exists() and direct.rocks.marker(2).exists()

    async def quiet(*args, **kwargs):
        return True

    consumer2 = SimpleNamespace(app=app, commit=quiet)
    compat.settle_on_commit(consumer2)
    assert await consumer2.commit() is True
    assert not direct.rocks.marker(1).exists()  # "c" is delivered now
    assert direct.rocks.marker(2).exists()  # its delivery failed: recovered whole at its next opening


def test_exactly_once_a_committed_partition_persists_past_its_commit_marker_and_drops_its_marker(tmp_path):
    compat.wipe_uncommitted_on_open()
    app, table = rocks_app(tmp_path, "exactly_once")
    direct = compat.DirectTable(table, [])
    topic = table.changelog_topic.get_topic_name()
    in_event(0)
    direct["a"] = b"1"
    marker = direct.rocks.marker(0)
    assert marker.exists()  # made before the write
    at_hold = {(topic, 0): direct.rocks.writes[0]}
    direct["b"] = b"2"  # after the transaction closed: belongs to the next one
    compat._persist_committed(app, [SimpleNamespace(topic=topic, partition=0, offset=7)], at_hold)
    assert table.data.persisted_offset(faust.types.TP(topic, 0)) == 8  # the commit marker's offset
    assert marker.exists()  # "b" is not committed yet
    compat._persist_committed(app, [SimpleNamespace(topic=topic, partition=0, offset=9)], {(topic, 0): 2})
    assert not marker.exists() and table.data.persisted_offset(faust.types.TP(topic, 0)) == 10


def test_a_database_opened_with_its_uncommitted_marker_is_wiped_first(tmp_path):
    compat.wipe_uncommitted_on_open()
    app, table = rocks_app(tmp_path, "exactly_once")
    direct = compat.DirectTable(table, [])
    in_event(1)
    direct["aborted"] = b"1"  # a SIGKILL now: the marker stays
    store = table.data
    assert store._dbs[1].get(b'"aborted"') == b"1"
    store._dbs.pop(1).close()  # the process gone
    _, again = rocks_app(tmp_path, "exactly_once")
    again_direct = compat.DirectTable(again, [])
    assert again.data._db_for_partition(1).get(b'"aborted"') is None  # wiped: recovered whole from the changelog
    assert not again_direct.rocks.marker(1).exists()
    assert again.data.persisted_offset(faust.types.TP(again.changelog_topic.get_topic_name(), 1)) is None
    in_event(1)
    again_direct["next"] = b"2"
    assert again_direct.rocks.marker(1).exists()


def test_wipe_uncommitted_patches_faust_once():
    from faust.stores.rocksdb import Store

    compat.wipe_uncommitted_on_open()
    patched = Store._open_for_partition
    compat.wipe_uncommitted_on_open()
    assert Store._open_for_partition is patched and patched.__gc_wipe_uncommitted__


def test_premise_under_transactions_recovery_gives_up_on_a_trailing_marker_only_after_two_timeouts():
    slurp = inspect.getsource(Recovery._slurp_changelogs.fun)  # a mode ServiceTask
    assert "changelog_queue.get(), timeout=5.0" in slurp
    assert "if timeout and self.app.in_transaction and timeout_count > 1:" in slurp
    assert "offsets[tp] = highwater" in slurp  # the reading reached the end: the marker counts as read
    assert "def on_recovery_completed" in inspect.getsource(Recovery)


async def test_a_completed_recovery_persists_what_it_read_to(tmp_path):
    compat.persist_recovered()
    app, table = rocks_app(tmp_path, "exactly_once")
    compat.DirectTable(table, [])
    topic = table.changelog_topic.get_topic_name()
    table.data._db_for_partition(0)
    tp, other = faust.types.TP(topic, 0), faust.types.TP("gc.requests", 0)
    calls = []

    async def completed(self, generation_id=0):
        calls.append(generation_id)

    recovery = SimpleNamespace(app=app, active_offsets={tp: 12, other: 3}, standby_offsets={})
    await compat._persist_recovered(completed)(recovery, 7)
    assert table.data.persisted_offset(tp) == 12 and calls == [7]
    assert Recovery.on_recovery_completed.__gc_persist_recovered__


# --- records handled once: the sources of what each transaction was handed ---------------------------


async def test_a_record_whose_outputs_are_in_an_open_or_committed_transaction_is_not_handled_again():
    """After an eager rebalance Faust leaves a transaction without offsets to commit open, records
    and all, and seeks the partition back to its committed offset: the record comes back."""
    tid = "gc-test-2-3"
    producer = TransactionProducers(tid)
    app = partition_app(producer)
    await compat.send_in_partition_transaction(app, event_on(3, 41), outs(b"41"))
    await compat.send_in_partition_transaction(app, event_on(3, 42), outs(b"42"))
    again = [compat.already_in_a_transaction(app, event_on(3, n)) for n in (41, 42, 43)]
    assert again == [True, True, False] and not compat.already_in_a_transaction(app, event_on(2, 41))
    # Its transaction aborted (a replaced producer: the partition went elsewhere): handled again.
    producer._transaction_producers[tid] = transaction_producer()
    assert not compat.already_in_a_transaction(app, event_on(3, 42))
    await compat.send_in_partition_transaction(app, event_on(3, 42), outs(b"42 again"))
    compat._committed_marks(producer, tid)  # that one committed: never again, whatever comes after
    producer._transaction_producers[tid] = transaction_producer()
    assert compat.already_in_a_transaction(app, event_on(3, 42))
    assert not compat.already_in_a_transaction(app, event_on(3, 43))


async def test_records_kept_during_a_commit_count_once_released_and_not_once_dropped():
    kept_for_open, kept_for_ended = "gc-test-2-1", "gc-test-2-3"
    producer = TransactionProducers(kept_for_open, kept_for_ended)
    app = partition_app(producer)
    compat.hold_transactions(producer)
    await compat.send_in_partition_transaction(app, event_on(1, 7), outs(b"kept 7"))
    await compat.send_in_partition_transaction(app, event_on(3, 9), outs(b"kept 9"))
    assert compat.already_in_a_transaction(app, event_on(1, 7))  # kept: it goes to the next one
    producer._transaction_producers[kept_for_ended]._txn_manager.is_in_transaction = lambda: False
    await compat.release_transactions(producer)
    assert producer.values == [b"kept 7"]
    assert compat.already_in_a_transaction(app, event_on(1, 7))
    assert not compat.already_in_a_transaction(app, event_on(3, 9))  # dropped: handled again
