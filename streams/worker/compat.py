"""Every touch of private faust-streaming and aiokafka internals, and nothing else.

faust-streaming and aiokafka are pinned in pyproject.toml to the minor versions these were
proven on; tests/unit/test_compat.py checks the premise of each touch against the installed code,
so an upgrade that changes one fails there first, by name. Each touch:

* `set_fetch_wait`: Faust 0.15 builds its worker consumer with a fixed 1,500 ms fetch wait;
  the embedded Tansu holds every fetch that long, so each consumer hop waited up to that.
* `seek_before_resume`: after table recovery Faust resumes the stream partitions before it
  seeks them to their committed offsets; records fetched in between were later taken for an
  offset gap and acked unprocessed (requests lost in a takeover). Seek first, then resume.
* `wrap_commit`: every offset commit Faust makes goes through `Consumer.commit`; exactly_once
  wraps it so a commit waits until no event is between its first write and its ack (streams.worker.eos).
* `send_in_partition_transaction`: exactly_once publishes an event's outputs and changelog
  records (`DirectTable`) in the transaction of the event's own source partition (streams.worker.eos
  says why), without awaiting their delivery; while a commit runs (`hold_transactions`,
  `release_transactions`) they are kept, in order, for the transaction that follows.
* `commit_transactions_concurrently`: Faust commits a worker's transactions one after another,
  several round trips to the coordinator each; commit them concurrently, each only once the records
  handed to it are delivered (aiokafka commits a transaction whose batch failed).
* `DirectTable`: a table write in Faust builds a changelog message future, checks the source
  topic's partitions and queues the write for a background sender: most of a decision's cost
  after the handlers. The worker writes the table's store itself and sends the changelog record
  (the bytes Faust would send: the table's own serializers) with the event's outputs, on the
  event's partition. Faust still reads that changelog back when it recovers the table.
* `ask_highwaters`: under exactly_once Faust 0.15 takes the end of each changelog it recovers
  from aiokafka's cached last stable offset, None until the consumer's first fetch of that
  partition, which Faust reads as -1: a worker taking over could recover none of its tables (a
  resent shipment's pass issued a second time). Ask the broker (`end_offsets`) instead.
* `fetch_what_was_asked`: Faust hands its live set of active partitions to the fetch that runs in
  its consumer thread, and aiokafka reads an empty set as "every partition". Recovery pauses the
  changelogs and (`seek_before_resume`) resumes the streams only after the seek: a fetch in flight
  then drained the stream partitions' records, Faust skipped them as not active, and a partition
  the seek had already passed stayed at the end, its records never handled (a takeover stall).
  Fetch only a snapshot of the set (nothing when empty), and seek back any partition whose records
  are no longer wanted when the fetch returns.
* `keep_standby_tables`: Faust 0.15's memory store (`memory://`) drops, when a recovery completes,
  every key of a partition it is not active for, standbys' too, and has no persisted offset: a
  standby's copy was thrown away at each rebalance and a worker taking a partition over read its
  changelog from the start. Keep the standbys' keys, and let a partition this worker has only ever
  followed as a standby since its last recovery answer the offset it applied up to, so the takeover
  reads only the tail. (The RocksDB store keeps both already.)
* `end_recovery_promptly`: under exactly_once the end of a changelog Faust recovers to is the last
  stable offset less one: a transaction marker, which a reader is never handed. Faust sees its
  recovery done only once its changelog queue has been idle for two of its 5 s waits, and then
  takes a partition whose consumer position is past that end as read (`detect_aborted_tx`):
  every recovery under exactly_once took at least 10 s, a takeover from a standby copy too. Wait
  `RECOVERY_IDLE_SECONDS` instead of 5 s (the same two idle waits, the same check).
* `raw_producer`: at_least_once sends go to the aiokafka producer behind Faust's main producer:
  Faust's `send` adds a signal and a header check per record (four records an approval). Faust's
  commit still flushes that producer before it commits the offsets.
* `refresh_metadata`: aiokafka's consumer answers `partitions_for_topic` from the client's
  metadata, which Apache Kafka's bootstrap answer leaves without topics.
* `learn_partitions`: the pass view's `table_route` reads the changelog's partitions from the
  main producer's metadata, which under exactly_once never writes there. `partitions_of` reads a
  topic's partitions the same way (the worker names the partition of each answer it sends).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import MutableMapping
from types import SimpleNamespace

from aiokafka.errors import IllegalStateError
from faust.stores.memory import Store as MemoryStore
from faust.tables.recovery import Recovery
from faust.transport.consumer import TransactionManager
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Producer as FaustAIOKafkaProducer

logger = logging.getLogger(__name__)

__all__ = [
    "hold_transactions",
    "release_transactions",
    "set_fetch_wait",
    "seek_before_resume",
    "ask_highwaters",
    "DirectTable",
    "wrap_commit",
    "transactional_id",
    "send_in_partition_transaction",
    "commit_transactions_concurrently",
    "fetch_what_was_asked",
    "keep_standby_tables",
    "end_recovery_promptly",
    "refresh_metadata",
    "learn_partitions",
    "partitions_of",
    "raw_producer",
]


# --- the worker consumer's fetch wait ---------------------------------------------------------


def set_fetch_wait(fetch_wait_ms: int) -> None:
    """Make Faust's worker consumer use `fetch_wait_ms` (this process; idempotent)."""
    create = AIOKafkaConsumerThread._create_worker_consumer
    create = getattr(create, "__wrapped__", create)

    @functools.wraps(create)
    def create_worker_consumer(self, transport):
        consumer = create(self, transport)
        # Read by AIOKafkaConsumer.start(), which builds its fetcher from it: set before that.
        consumer._fetch_max_wait_ms = fetch_wait_ms
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer


# --- table recovery: seek, then resume --------------------------------------------------------

RECOVERY_METHODS = ("_resume_streams", "on_recovery_completed")


def _seek_before_resume(method):
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        consumer = self.app.consumer
        resume, seek = consumer.resume_partitions, consumer.perform_seek
        deferred: list = []

        def resume_after_seek(tps) -> None:
            deferred.append(tps)

        def release() -> None:
            # Back to the consumer's own methods, then resume what the method asked for.
            for name in ("resume_partitions", "perform_seek"):
                consumer.__dict__.pop(name, None)
            while deferred:
                resume(deferred.pop(0))

        async def seek_then_resume() -> None:
            try:
                await seek()
            finally:
                release()

        consumer.resume_partitions = resume_after_seek
        consumer.perform_seek = seek_then_resume
        try:
            return await method(self, *args, **kwargs)
        finally:
            release()  # also when there was nothing to seek, or the method gave up

    wrapper.__gc_seek_before_resume__ = True
    return wrapper


def seek_before_resume() -> None:
    """Make `faust.tables.recovery.Recovery` seek stream partitions before resuming them (idempotent)."""
    for name in RECOVERY_METHODS:
        method = getattr(Recovery, name)
        if not getattr(method, "__gc_seek_before_resume__", False):
            setattr(Recovery, name, _seek_before_resume(method))


# --- table recovery: where each changelog ends ----------------------------------------------------


async def _highwaters_from_the_broker(self, partitions):
    """The end of each partition as the broker answers it now: under read_committed (exactly_once)
    its last stable offset, as Faust's cached value would be once known."""
    return dict(await self._ensure_consumer().end_offsets(list(partitions)))


_highwaters_from_the_broker.__gc_ask_highwaters__ = True


def ask_highwaters() -> None:
    """Make Faust's recovery ask the broker where each changelog ends (idempotent)."""
    if not getattr(AIOKafkaConsumerThread._highwaters, "__gc_ask_highwaters__", False):
        _highwaters_from_the_broker.__wrapped__ = AIOKafkaConsumerThread._highwaters
        AIOKafkaConsumerThread._highwaters = _highwaters_from_the_broker


# --- fetching: only the partitions asked for -------------------------------------------------------


def _fetch_asked(fetch_records):
    @functools.wraps(fetch_records)
    async def wrapper(self, consumer, active_partitions, timeout=None, max_records=None):
        if active_partitions is None:  # a client-only app: every partition, as Faust means it
            return await fetch_records(self, consumer, None, timeout=timeout, max_records=max_records)
        asked = frozenset(active_partitions)  # a snapshot: the live set changes while we wait
        if not asked:
            return {}
        records = await fetch_records(self, consumer, asked, timeout=timeout, max_records=max_records)
        # Paused while the fetch waited: Faust would skip these records, and aiokafka's position is
        # already past them. Put it back (no await since the fetch returned: nothing moved it).
        wanted = self.consumer._active_partitions or set()
        buffered = self.consumer._buffered_partitions
        for tp in [tp for tp in records if tp not in wanted and tp not in buffered]:
            first = records.pop(tp)[0].offset
            try:
                consumer.seek(tp, first)
            except IllegalStateError:  # revoked meanwhile: its next owner starts from the commit
                continue
            logger.warning("Fetched %s from offset %s after it was paused: seeking back there", tp, first)
        return records

    wrapper.__gc_fetch_what_was_asked__ = True
    return wrapper


def fetch_what_was_asked() -> None:
    """Make Faust's consumer thread fetch only the partitions active when it asks (idempotent)."""
    if not getattr(AIOKafkaConsumerThread._fetch_records, "__gc_fetch_what_was_asked__", False):
        AIOKafkaConsumerThread._fetch_records = _fetch_asked(AIOKafkaConsumerThread._fetch_records)


# --- standby replicas: memory tables -------------------------------------------------------------


def _followed(store) -> dict:
    """The memory store's standby partitions, each with the last changelog offset applied to it:
    TP -> offset. Only partitions whose every key came from their changelog since the store's last
    recovery (never written here as active: `DirectTable` writes carry no offset)."""
    return store.__dict__.setdefault("_gc_followed", {})


def _apply_following(apply):
    @functools.wraps(apply)
    def wrapper(self, batch, to_key, to_value):
        batch = list(batch)
        apply(self, batch, to_key, to_value)
        followed = _followed(self)
        for event in batch:  # offsets only grow within a partition's batch: the last one stands
            tp = event.message.tp
            if tp in followed:
                followed[tp] = event.message.offset
        return None

    return wrapper


def _persisted_if_followed(self, tp):
    """The offset applied to standby partition `tp` (None: read its changelog from the start)."""
    return _followed(self).get(tp)


def _complete_keeping_standbys(on_recovery_completed):
    @functools.wraps(on_recovery_completed)
    async def wrapper(self, active_tps, standby_tps):
        followed = _followed(self)
        standby_partitions = {tp.partition for tp in standby_tps}
        kept = {k: p for k, p in self._key_partition.items() if p in standby_partitions and k in self.data}
        values = {k: self.data[k] for k in kept}
        await on_recovery_completed(self, active_tps, standby_tps)  # drops all but the actives' keys
        # Put the standbys' back (a partition is active or standby here, never both).
        self.data.update(values)
        self._key_partition.update(kept)
        # An active partition is written here from now on (no offset); a standby keeps following
        # from where it is, or from its changelog's start if it was not one before.
        for tp in list(followed):
            if tp not in standby_tps:
                offset = followed.pop(tp)
                if tp in active_tps and offset is not None:
                    logger.warning("%s taken over from its standby copy: changelog read on from offset %s", tp, offset)
        for tp in standby_tps:
            followed.setdefault(tp, None)
        return None

    return wrapper


def keep_standby_tables() -> None:
    """Make Faust's memory store keep its standby partitions' tables and answer their offsets (idempotent)."""
    if getattr(MemoryStore.on_recovery_completed, "__gc_keep_standbys__", False):
        return
    MemoryStore.apply_changelog_batch = _apply_following(MemoryStore.apply_changelog_batch)
    MemoryStore.persisted_offset = _persisted_if_followed
    completed = _complete_keeping_standbys(MemoryStore.on_recovery_completed)
    completed.__gc_keep_standbys__ = True
    MemoryStore.on_recovery_completed = completed


# --- table recovery: its end seen promptly ---------------------------------------------------------

RECOVERY_IDLE_SECONDS = 1.0  # Faust's: 5.0


class _RecoveryAsyncio:
    """`asyncio` as `faust.tables.recovery` reads it, its one `wait_for` (the changelog queue's
    idle wait) at most `RECOVERY_IDLE_SECONDS`."""

    __gc_end_recovery_promptly__ = True

    def __getattr__(self, name: str):
        return getattr(asyncio, name)

    @staticmethod
    def wait_for(awaitable, timeout=None):
        return asyncio.wait_for(awaitable, None if timeout is None else min(timeout, RECOVERY_IDLE_SECONDS))


def end_recovery_promptly() -> None:
    """Make Faust's recovery see that its changelogs are read after two idle waits of
    `RECOVERY_IDLE_SECONDS`, not 5 s (idempotent)."""
    import faust.tables.recovery as recovery

    if not getattr(recovery.asyncio, "__gc_end_recovery_promptly__", False):
        recovery.asyncio = _RecoveryAsyncio()


# --- table writes ---------------------------------------------------------------------------------


class DirectTable(MutableMapping):
    """A Faust table, written straight to its store, its changelog records kept in `pending`
    (topic, key bytes, value bytes) for the caller to send on the event's partition.

    Reads and iteration are the store's (what Faust's own table reads). A deletion sends a
    tombstone (no value), which Faust's recovery reads as a deletion, and compaction drops."""

    def __init__(self, table, pending: list) -> None:
        self.table = table
        self._store = table.data
        self._changelog = table.changelog_topic
        self._name = table.changelog_topic.get_topic_name()
        self._serializers = (table.key_serializer, table.value_serializer)
        self._pending = pending

    def __getitem__(self, key):
        return self._store[key]

    def get(self, key, default=None):
        return self._store.get(key, default)

    def __setitem__(self, key, value) -> None:
        self._store[key] = value
        raw_key, _ = self._changelog.prepare_key(key, self._serializers[0])
        raw_value, _ = self._changelog.prepare_value(value, self._serializers[1])
        self._pending.append((self._name, raw_key, raw_value))

    def __delitem__(self, key) -> None:
        del self._store[key]
        raw_key, _ = self._changelog.prepare_key(key, self._serializers[0])
        self._pending.append((self._name, raw_key, None))

    def __iter__(self):
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def items(self):
        return self._store.items()


# --- exactly_once: commits, table writes and outputs --------------------------------------------


def wrap_commit(consumer, around) -> None:
    """Route every offset commit of Faust's `consumer` through `around(commit, *args, **kwargs)`."""
    commit = consumer.commit

    async def wrapped(*args, **kwargs):
        return await around(commit, *args, **kwargs)

    consumer.commit = wrapped


def transactional_id(app, topic: str, partition: int) -> str:
    """The id of the transaction Faust keeps for a source partition (its consumer's own format)."""
    tpg = SimpleNamespace(group=app.assignor.group_for_topic(topic), partition=partition)
    return TransactionManager.transactional_id_format.format(group_id=app.conf.id, tpg=tpg)


async def send_in_partition_transaction(app, event, outs: list) -> None:
    """Hand `outs` (streams.handlers.Out: outputs and changelog records) to the transaction of
    `event`'s partition, or, while a commit holds the transactions (`hold_transactions`), keep them
    for the next one. Their delivery is not awaited here: the transaction's commit waits for it
    (`commit_transactions_concurrently`), before it commits the event's offset with them."""
    tid = transactional_id(app, event.message.topic, event.message.partition)
    held = _held(app.producer).get(tid)
    if held is not None:  # a commit is taking the offsets: these wait for the next transaction, in order
        held[1].extend(outs)
        return
    await _hand(app.producer, tid, outs)


async def _hand(producer, tid: str, outs: list) -> None:
    """Hand `outs` to Faust's `producer` in transaction `tid`, keeping their delivery futures."""
    sent = _sent(producer).setdefault(tid, [])
    for out in outs:
        # The transaction's aiokafka producer, as Faust's send takes it (no await in between): a
        # rebalance may replace it while the send waits for the transaction's lock.
        txn = producer._transaction_producers.get(tid)
        future = await producer.send(
            out.topic, out.key, out.value, out.partition, None, list(out.headers), transactional_id=tid
        )
        sent.append((txn, future))


def _held(producer) -> dict:
    """The records kept while a commit runs: transactional id -> (its aiokafka producer then, a deque of Out)."""
    return producer.__dict__.setdefault("_gc_held", {})


def hold_transactions(producer) -> None:
    """From now on, records for each of the worker's transactions are kept, in order, instead of
    entering it (a commit is about to take the offsets acked so far). Raises while a hold is still
    there: an earlier commit failed, and nothing of this worker may commit after it."""
    held = _held(producer)
    if held:
        raise RuntimeError(f"an earlier commit of {', '.join(sorted(held))} failed: not committing again")
    for tid, txn in producer._transaction_producers.items():
        held[tid] = (txn, deque())


async def release_transactions(producer) -> None:
    """After a commit (each transaction committed and the next begun, or left open when it had no
    offset to commit): hand the kept records to their transactions, in order, then let records
    through again. A transaction whose producer Faust has replaced meanwhile (its partition revoked:
    Faust dropped the acks, the transaction is aborted), or that the commit ended without beginning
    the next (Faust's, as partitions are revoked or the worker stops), drops what was kept for it:
    those events' offsets were not in that commit and no transaction of this worker commits them,
    so the partition's next owner handles them again (this worker too: Faust seeks to the committed
    offset). Kept, the hold would make every later commit fail (`hold_transactions`)."""
    held = _held(producer)

    async def release(tid: str) -> None:
        txn, outs = held[tid]
        while outs and producer._transaction_producers.get(tid) is txn and _in_transaction(txn):
            out = outs.popleft()  # records kept while this one is handed join the same queue, behind it
            await _hand(producer, tid, [out])
        del held[tid]

    await asyncio.gather(*(release(tid) for tid in list(held)))  # each its own producer: concurrently


def _in_transaction(txn) -> bool:
    """Whether aiokafka producer `txn` has a transaction open: one that Faust's commit ended and did
    not begin again (as partitions are revoked, or the worker stops) takes nothing more."""
    return txn._txn_manager.is_in_transaction()


def _sent(producer) -> dict:
    """What each transaction of Faust's `producer` was handed since it last committed:
    transactional id -> [(its aiokafka producer then, the record's delivery future)]."""
    return producer.__dict__.setdefault("_gc_sent", {})


async def _delivered(producer, tid: str) -> None:
    """Wait until every record handed to transaction `tid` is delivered; raise if one failed.

    aiokafka's commit sends EndTxn(COMMIT) once the batches are done, failed or not: without this a
    transaction could commit an event's offset without one of its records. A failure stays recorded,
    so every later commit of `tid` raises too (the worker stops; the open transaction is aborted
    when its next owner fences it). Records handed to a producer Faust has since stopped (the
    partition was revoked: Faust dropped its acks; its transaction is aborted) are not waited for."""
    sent = _sent(producer).get(tid)
    if not sent:
        return
    current = producer._transaction_producers.get(tid)
    n = len(sent)
    futures = [future for txn, future in sent[:n] if txn is current]
    await asyncio.gather(*futures)  # a failed delivery raises: the records stay, the commit is not made
    del sent[:n]


def _commit_each_when_delivered(commit_transactions):
    @functools.wraps(commit_transactions)
    async def wrapper(self, tid_to_offset_map, group_id, start_new_transaction=True):
        async def commit_one(tid: str, offsets) -> None:
            await _delivered(self, tid)
            await commit_transactions(self, {tid: offsets}, group_id, start_new_transaction=start_new_transaction)

        # Each transaction is its own producer, its own lock and its own offsets: concurrently.
        await asyncio.gather(*(commit_one(tid, offsets) for tid, offsets in tid_to_offset_map.items()))

    wrapper.__gc_commit_concurrently__ = True
    return wrapper


def commit_transactions_concurrently() -> None:
    """Make Faust commit a worker's transactions concurrently, each once what it was handed is
    delivered (idempotent). Faust 0.15 commits them one after another, several round trips each."""
    commit = FaustAIOKafkaProducer.commit_transactions
    if not getattr(commit, "__gc_commit_concurrently__", False):
        FaustAIOKafkaProducer.commit_transactions = _commit_each_when_delivered(commit)


# --- metadata ------------------------------------------------------------------------------------


async def refresh_metadata(consumer) -> None:
    """Fetch every topic's metadata into the client `consumer.partitions_for_topic` reads.

    Not `await consumer.topics()`: that reads into a ClusterMetadata of its own."""
    await consumer._client.force_metadata_update()


async def learn_partitions(app, topic: str) -> None:
    """Make the app's main producer learn `topic`'s partitions (raises while it has none)."""
    await partitions_of(app, topic)


def raw_producer(app):
    """The aiokafka producer behind Faust's main one (started with the app; raises before)."""
    return app.producer._ensure_producer()


async def partitions_of(app, topic: str) -> set[int]:
    """`topic`'s partitions, from the app's main producer's metadata (asked of the broker when unknown)."""
    return await app.producer._ensure_producer().partitions_for(topic)
