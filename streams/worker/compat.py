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
* `already_in_a_transaction`: Faust's commit as partitions are revoked commits only the
  transactions with offsets to commit, and leaves the others open across the rebalance, records
  and all; a partition the worker keeps is then sought back to its committed offset. A record
  whose outputs were handed to such an open transaction without its offset being committed came
  back and was handled again into the same transaction, which then committed both copies (the
  standby fault test's duplicate: the same bytes at adjacent offsets, the survivor's own
  partitions). Each source offset whose records were handed to a transaction is marked, and a
  record at or below the mark of a transaction still open, or committed, is not handled again.
* `raw_producer`: at_least_once sends go to the aiokafka producer behind Faust's main producer:
  Faust's `send` adds a signal and a header check per record (four records an approval). Faust's
  commit still flushes that producer before it commits the offsets.
* `DirectTable` on RocksDB (`GC_STORE=rocksdb://`): Faust's RocksDB store keeps one database per
  table partition and the changelog offset it holds (`persisted_offset`), set when Faust's own
  changelog send is acked, which DirectTable bypasses. So the worker writes the database of the
  event's partition itself (the changelog record's bytes, what Faust's recovery would put there),
  and advances the persisted offset once the records are delivered (`persist_delivered`) or, under
  exactly_once, once their transaction committed (then to the commit marker's offset, so a
  restart finds nothing to read). A write whose changelog record never made it (under exactly_once
  its transaction did not commit: a SIGKILL, a revocation; under at_least_once it was not
  delivered) may stay in the local database: a marker file beside it
  (`<table>-<partition>.db.uncommitted`) is made before its first such write and removed once its
  writes committed (at_least_once: once Faust's offset commit, which flushes the producer first,
  came after them: `settle_on_commit`); a database opened with its marker still there is wiped
  first and recovered whole from the (read_committed) changelog (`wipe_uncommitted_on_open`).
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
import shutil
from collections import deque
from collections.abc import MutableMapping
from pathlib import Path
from types import SimpleNamespace

from aiokafka.errors import IllegalStateError
from faust.stores.memory import Store as MemoryStore
from faust.streams import current_event
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
    "rocksdb_options",
    "persist_delivered",
    "settle_on_commit",
    "wipe_uncommitted_on_open",
    "recover_whole_beyond_the_end",
    "persist_recovered",
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
    tombstone (no value), which Faust's recovery reads as a deletion, and compaction drops.
    On RocksDB a write goes to the database of the event's partition, the changelog record's bytes
    (`_RocksWrites`). `len()` walks every key there: never on an event's path (`bool()` does not)."""

    def __init__(self, table, pending: list) -> None:
        self.table = table
        self._store = table.data
        self._changelog = table.changelog_topic
        self._name = table.changelog_topic.get_topic_name()
        self._serializers = (table.key_serializer, table.value_serializer)
        self._pending = pending
        self.rocks = _RocksWrites(table.app, self._store, self._name) if _is_rocksdb(self._store) else None

    def __getitem__(self, key):
        return self._store[key]

    def get(self, key, default=None):
        return self._store.get(key, default)

    def __setitem__(self, key, value) -> None:
        raw_key, _ = self._changelog.prepare_key(key, self._serializers[0])
        raw_value, _ = self._changelog.prepare_value(value, self._serializers[1])
        if self.rocks is None:
            self._store[key] = value
        else:
            self.rocks.put(raw_key, raw_value)
        self._pending.append((self._name, raw_key, raw_value))

    def __delitem__(self, key) -> None:
        raw_key, _ = self._changelog.prepare_key(key, self._serializers[0])
        if self.rocks is None:
            del self._store[key]
        else:
            if self._store.get(key) is None:
                raise KeyError(key)
            self.rocks.put(raw_key, None)
        self._pending.append((self._name, raw_key, None))

    def __iter__(self):
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __bool__(self) -> bool:  # a MutableMapping's truth is its len(): on RocksDB a walk of every key
        return True

    def items(self):
        return self._store.items()


# --- tables on RocksDB ------------------------------------------------------------------------------

UNCOMMITTED = ".uncommitted"  # the marker beside a partition's database: it may hold uncommitted writes


def rocksdb_options(*, block_cache_mb: int, write_buffer_mb: int, write_buffers: int, max_open_files: int) -> dict:
    """The `options=` of a table on Faust's RocksDB store (faust.stores.rocksdb.RocksDBOptions):
    each partition's database is opened with its own block cache and write buffers of these sizes."""
    mib = 1024 * 1024
    return {
        "block_cache_size": block_cache_mb * mib,
        "block_cache_compressed_size": 0,  # python-rocksdb only; rocksdict has none
        "write_buffer_size": write_buffer_mb * mib,
        "max_write_buffer_number": write_buffers,
        "max_open_files": max_open_files,
    }


def _is_rocksdb(store) -> bool:
    from faust.stores.rocksdb import Store

    return isinstance(store, Store)


def _direct_tables(app) -> dict:
    """The worker's DirectTables on RocksDB, by changelog topic name (none without an app)."""
    return {} if app is None else app.__dict__.setdefault("_gc_rocks_tables", {})


class _RocksWrites:
    """A table's writes to its RocksDB partition databases, their persisted offsets, and which
    partitions hold writes not yet in their changelog (`UNCOMMITTED` markers)."""

    def __init__(self, app, store, changelog: str) -> None:
        self.store = store
        self.changelog = changelog
        self.writes: dict[int, int] = {}  # partition -> writes since its marker was made
        self.persisted: dict[int, int] = {}  # partition -> the offset last persisted
        self.failed: set[int] = set()  # partitions a changelog record of which was not delivered
        _direct_tables(app)[changelog] = self

    def put(self, raw_key: bytes, raw_value: bytes | None) -> None:
        """Write the database of the current event's partition, as Faust's `Store._set` does, but
        with the changelog record's bytes (what recovery would write), a deletion as a delete."""
        event = current_event()
        if event is None:
            raise RuntimeError(f"a write to {self.changelog} outside an event: no partition to write it to")
        partition = event.message.partition
        db = self.store._db_for_partition(partition)  # opened first: an open wipes what a marker marks
        if partition not in self.writes:
            self.marker(partition).touch()  # before the write: a SIGKILL after it finds the marker
        self.writes[partition] = self.writes.get(partition, 0) + 1
        if raw_value is None:
            db.delete(raw_key)
        else:
            self.store._key_index[raw_key] = partition
            db.put(raw_key, raw_value)

    def marker(self, partition: int) -> Path:
        path = self.store.partition_path(partition)
        return path.with_name(path.name + UNCOMMITTED)

    def persist(self, partition: int, offset: int) -> None:
        """Record in the partition's database that the changelog holds its writes up to `offset`
        (not when the database is no longer open here: the partition was revoked)."""
        db = self.store._dbs.get(partition)
        if db is None or offset <= self.persisted.get(partition, -1):
            return
        self.persisted[partition] = offset
        db.put(self.store.offset_key, str(offset).encode())

    def committed(self, partition: int, offset: int, writes_before: int) -> None:
        """exactly_once: a transaction holding this partition's changelog records up to `offset`
        committed. Its commit marker follows them (only this partition's transaction writes there):
        a restart reads from there, and finds nothing. The partition's marker goes when no write
        came after the transaction was closed (`writes_before`)."""
        self.persist(partition, offset + 1)
        self.settled(partition, writes_before)

    def settled(self, partition: int, writes_before: int | None) -> None:
        """The partition's writes up to `writes_before` are in its changelog (committed, or under
        at_least_once delivered): its marker goes if no write came after, and no delivery failed."""
        if self.writes.get(partition) == writes_before and partition not in self.failed:
            del self.writes[partition]
            self.marker(partition).unlink(missing_ok=True)


def persist_delivered(app, topic: str, partition: int, future) -> None:
    """at_least_once: once the changelog record `future` (on `partition`) is delivered, persist its
    offset in the RocksDB database it was written to (nothing for other topics, or other stores)."""
    table = _direct_tables(app).get(topic)
    if table is None:
        return

    def delivered(fut) -> None:
        if not fut.cancelled() and fut.exception() is None:
            table.persist(partition, fut.result().offset)
        else:  # its write stays marked: the partition is recovered whole at its next opening
            table.failed.add(partition)

    future.add_done_callback(delivered)


def settle_on_commit(consumer) -> None:
    """at_least_once: make each of Faust's offset commits (it flushes the producer first, so every
    changelog record sent before it is delivered) remove the markers of the RocksDB table partitions
    written no more since it began (idempotent per consumer)."""
    if consumer.__dict__.get("_gc_settles"):
        return
    commit, app = consumer.commit, consumer.app

    async def commit_and_settle(*args, **kwargs):
        tables = _direct_tables(app)
        before = {(topic, p): n for topic, table in tables.items() for p, n in table.writes.items()}
        committed = await commit(*args, **kwargs)
        if committed:
            for (topic, partition), n in before.items():
                tables[topic].settled(partition, n)
        return committed

    consumer.commit = commit_and_settle
    consumer.__dict__["_gc_settles"] = True


def _persist_committed(app, delivered: list, writes_before: dict) -> None:
    """exactly_once: the records `delivered` (aiokafka RecordMetadata) are committed."""
    tables = _direct_tables(app)
    if not tables:
        return
    last: dict = {}
    for metadata in delivered:
        key = (metadata.topic, metadata.partition)
        if metadata.topic in tables and metadata.offset > last.get(key, -1):
            last[key] = metadata.offset
    for (topic, partition), offset in last.items():
        tables[topic].committed(partition, offset, writes_before.get((topic, partition)))


def _wipe_uncommitted(open_for_partition):
    @functools.wraps(open_for_partition)
    def wrapper(self, partition: int):
        path = self.partition_path(partition)
        marker = path.with_name(path.name + UNCOMMITTED)
        if marker.exists():
            logger.warning("%s may hold writes of a transaction that did not commit: recovering it whole", path)
            shutil.rmtree(path, ignore_errors=True)
            marker.unlink()
            for table in _direct_tables(self.app).values():
                if table.store is self:  # its writes there are gone: the next one makes the marker anew
                    table.writes.pop(partition, None)
                    table.persisted.pop(partition, None)
                    table.failed.discard(partition)
        return open_for_partition(self, partition)

    wrapper.__gc_wipe_uncommitted__ = True
    return wrapper


def _recover_whole_beyond_the_end(build_offsets):
    @functools.wraps(build_offsets)
    async def wrapper(self, consumer, tps, destination, title):
        await build_offsets(self, consumer, tps, destination, title)
        if title != "active":
            return
        for tp in tps:
            end, offset = self.active_highwaters.get(tp), destination.get(tp)
            store = getattr(self.tp_to_table.get(tp), "data", None)
            if end is None or offset is None or offset <= end or not _is_rocksdb(store):
                continue
            # Not this changelog's database (the topic was made anew), or its end misreported: start over.
            logger.warning(
                "%s: the local table is at %s, beyond the changelog's end %s: recovering it whole", tp, offset, end
            )
            db = store._dbs.pop(tp.partition, None)
            if db is not None:
                db.close()
            shutil.rmtree(store.partition_path(tp.partition), ignore_errors=True)
            for table in _direct_tables(self.app).values():
                if table.store is store:
                    table.writes.pop(tp.partition, None)
                    table.persisted.pop(tp.partition, None)
                    table.failed.discard(tp.partition)
            store._db_for_partition(tp.partition)
            destination[tp] = -1  # from the start (Faust seeks -1 to 0: the earliest kept)

    wrapper.__gc_recover_whole__ = True
    return wrapper


def recover_whole_beyond_the_end() -> None:
    """Make Faust's recovery wipe and recover whole a RocksDB table partition whose persisted offset
    is beyond its changelog's end, instead of raising ConsistencyError and stopping the worker
    (faust-streaming#158: a changelog made anew, or a broker reporting a wrong end: Tansu after a
    batch of several records answers an end offset inside it). The
    offsets are built (and this runs) before Faust's consistency check (idempotent)."""
    if not getattr(Recovery._build_offsets, "__gc_recover_whole__", False):
        Recovery._build_offsets = _recover_whole_beyond_the_end(Recovery._build_offsets)


def _persist_recovered(on_recovery_completed):
    @functools.wraps(on_recovery_completed)
    async def wrapper(self, *args, **kwargs):
        tables = _direct_tables(self.app)
        for offsets in (self.active_offsets, self.standby_offsets):
            for tp, offset in list(offsets.items()):
                table = tables.get(tp.topic)
                if table is not None and offset is not None and offset >= 0:
                    table.persist(tp.partition, offset)
        return await on_recovery_completed(self, *args, **kwargs)

    wrapper.__gc_persist_recovered__ = True
    return wrapper


def persist_recovered() -> None:
    """Make Faust's recovery, once complete, persist in each RocksDB table partition the offset it
    read to (idempotent). Faust persists the last record it applied; under exactly_once a changelog
    ends with a commit marker after it, so the next recovery would wait for a record that never
    comes until Faust's fallback gives up on it (two 5 s timeouts: faust-streaming#47)."""
    if not getattr(Recovery.on_recovery_completed, "__gc_persist_recovered__", False):
        Recovery.on_recovery_completed = _persist_recovered(Recovery.on_recovery_completed)


def wipe_uncommitted_on_open() -> None:
    """Make Faust's RocksDB store wipe a partition's database before opening it while its
    `UNCOMMITTED` marker is there: it is then recovered whole from the changelog (idempotent)."""
    from faust.stores.rocksdb import Store

    if not getattr(Store._open_for_partition, "__gc_wipe_uncommitted__", False):
        Store._open_for_partition = _wipe_uncommitted(Store._open_for_partition)


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
    message = event.message
    tid, source = transactional_id(app, message.topic, message.partition), (message.topic, message.partition)
    producer, marks = app.producer, _marks(app.producer)
    held = _held(producer).get(tid)
    if held is not None:  # a commit is taking the offsets: these wait for the next transaction, in order
        held[1].extend(outs)
        _raise(marks["kept"].setdefault(tid, {}), source, message.offset)
        return
    txn = producer._transaction_producers.get(tid)
    entry = marks["open"].get(tid)
    if entry is None or entry[0] is not txn:
        entry = marks["open"][tid] = (txn, {})
    _raise(entry[1], source, message.offset)
    await _hand(producer, tid, outs)


# --- records handled once: the sources of what each transaction was handed ---------------------------


def _marks(producer) -> dict:
    """The highest source offset, per source partition, whose records went to a transaction:
    "open": tid -> (its aiokafka producer, {(topic, partition): offset}) since it last committed;
    "kept": tid -> {...} for records kept while a commit runs; "committed": {...} in a committed one."""
    return producer.__dict__.setdefault("_gc_marks", {"open": {}, "kept": {}, "committed": {}})


def _raise(marks: dict, source: tuple[str, int], offset: int) -> None:
    if offset > marks.get(source, -1):
        marks[source] = offset


def _committed_marks(producer, tid: str) -> None:
    """Transaction `tid` committed: what it was handed is committed."""
    marks = _marks(producer)
    txn, handed = marks["open"].pop(tid, (None, {}))
    for source, offset in handed.items():
        _raise(marks["committed"], source, offset)


def already_in_a_transaction(app, event) -> bool:
    """Whether `event`'s records were handed before to a transaction of this worker that is still
    open (its producer the same, in a transaction) or has committed: a record handed back after a
    rebalance though its outputs are there. Not handled again, its ack commits its offset with them."""
    message, producer = event.message, app.producer
    source, offset = (message.topic, message.partition), message.offset
    marks = _marks(producer)
    if offset <= marks["committed"].get(source, -1):
        return True
    tid = transactional_id(app, message.topic, message.partition)
    if tid in _held(producer) and offset <= marks["kept"].get(tid, {}).get(source, -1):
        return True
    txn, handed = marks["open"].get(tid, (None, {}))
    current = txn is not None and producer._transaction_producers.get(tid) is txn and _in_transaction(txn)
    return current and offset <= handed.get(source, -1)


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
    # What each RocksDB table partition was written so far: all of it is in the transactions now
    # committing (no event is in flight), so a partition written no more is committed with them.
    producer.__dict__["_gc_writes_at_hold"] = {
        (topic, partition): n
        for topic, table in _direct_tables(getattr(producer, "app", None)).items()
        for partition, n in table.writes.items()
    }


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

    marks = _marks(producer)

    async def release(tid: str) -> None:
        txn, outs = held[tid]
        kept = marks["kept"].pop(tid, {})
        taken = producer._transaction_producers.get(tid) is txn and _in_transaction(txn)
        if taken and kept:  # their sources are this transaction's now
            entry = marks["open"].get(tid)
            if entry is None or entry[0] is not txn:
                entry = marks["open"][tid] = (txn, {})
            for source, offset in kept.items():
                _raise(entry[1], source, offset)
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


async def _delivered(producer, tid: str) -> list:
    """Wait until every record handed to transaction `tid` is delivered; raise if one failed.

    aiokafka's commit sends EndTxn(COMMIT) once the batches are done, failed or not: without this a
    transaction could commit an event's offset without one of its records. A failure stays recorded,
    so every later commit of `tid` raises too (the worker stops; the open transaction is aborted
    when its next owner fences it). Records handed to a producer Faust has since stopped (the
    partition was revoked: Faust dropped its acks; its transaction is aborted) are not waited for."""
    sent = _sent(producer).get(tid)
    if not sent:
        return []
    current = producer._transaction_producers.get(tid)
    n = len(sent)
    futures = [future for txn, future in sent[:n] if txn is current]
    delivered = await asyncio.gather(*futures)  # a failed delivery raises: the records stay, no commit
    del sent[:n]
    return delivered


def _commit_each_when_delivered(commit_transactions):
    @functools.wraps(commit_transactions)
    async def wrapper(self, tid_to_offset_map, group_id, start_new_transaction=True):
        writes_at_hold = self.__dict__.get("_gc_writes_at_hold", {})

        async def commit_one(tid: str, offsets) -> None:
            delivered = await _delivered(self, tid)
            await commit_transactions(self, {tid: offsets}, group_id, start_new_transaction=start_new_transaction)
            _committed_marks(self, tid)  # their records' sources: never handled again (`already_in_a_transaction`)
            # RocksDB tables: their persisted offsets, their markers
            _persist_committed(getattr(self, "app", None), delivered, writes_at_hold)

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
