"""A worker on RocksDB tables (GC_STORE=rocksdb://) restarted on its own disk: it keeps its passes
and reads only the tail of its changelogs (Apache Kafka, exactly_once: the kafka lane). Not on Tansu:
after a batch of several records it answers an end offset inside the batch, so a table persisted at
its true end looks ahead of its changelog there and is recovered whole (streams.worker.compat)."""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from rocksdict import Options, Rdict

from streams.dev.simulator import Scenario
from tests.support.factories import load_key_enterprises
from tests.support.system import BROKER_KIND, start_system

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(
        not (shutil.which("java") and shutil.which("mvn")), reason="needs java and mvn on PATH to run real Kafka"
    ),
    pytest.mark.skipif(BROKER_KIND == "tansu", reason="Tansu misreports a changelog's end (see above)"),
]

OFFSET_KEY = b"__faust\0offset__"  # where Faust's RocksDB store keeps a partition's changelog offset


def rocks_dbs(data_dir: Path, table: str) -> dict[int, Path]:
    """The worker's RocksDB databases of `table`, by partition."""
    return {int(p.name.removesuffix(".db").rsplit("-", 1)[1]): p for p in data_dir.rglob(f"{table}-*.db")}


def read_db(path: Path):
    return Rdict(str(path), Options(raw_mode=True))


async def changelog_ends(system, table: str, partitions: list[int]) -> dict[int, int]:
    topic = f"{system.env['GC_APP_ID']}-{table}-changelog"
    consumer = AIOKafkaConsumer(**system.connection.kwargs())
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def decide(system, bodies: list[dict], seen: int = 0) -> dict[str, list]:
    for body in bodies:
        await system.send(system.topics.requests, body, key=body["shipment_id"])
    ids = {b["shipment_id"].encode() for b in bodies}
    found = await system.tap.wait_for(system.topics.decisions, lambda m: m.key in ids, seen + len(ids), timeout=180)
    by_id: dict[str, list] = {}
    for m in found:
        by_id.setdefault(m.key.decode(), []).append(m)
    return by_id


async def test_a_worker_restarted_on_its_own_disk_keeps_its_passes_and_reads_only_the_tail(broker, tmp_path):
    prefix = f"rk{uuid.uuid4().hex[:4]}."
    system = await start_system(broker, tmp_path, prefix=prefix, env={"GC_STORE": "rocksdb://"})
    try:
        scenario = Scenario(seed=41)
        await load_key_enterprises(system, scenario, lambda n: scenario.request(800_000 + n, kind="P2"))
        bodies = [scenario.request(n) for n in range(60)]
        first = await decide(system, bodies)
        approved = {sid: ms[0].json for sid, ms in first.items() if ms[0].json["decision"] == "approved"}
        assert len(approved) >= 2, "too few approvals to restart with"

        # A graceful stop: every table partition's offset is persisted at its changelog's end
        # (under exactly_once at the commit marker, the last offset there), no write uncommitted.
        worker = system.workers[0]
        worker.terminate()
        assert worker.wait(120) == 0
        dbs = rocks_dbs(tmp_path, "passes")
        assert dbs, "no RocksDB database of the passes table"
        assert not list(tmp_path.rglob("*.uncommitted")), "a graceful stop left writes marked uncommitted"
        ends = await changelog_ends(system, "passes", sorted(dbs))
        persisted = {}
        for partition, path in dbs.items():
            db = read_db(path)
            try:
                offset = db.get(OFFSET_KEY)
                persisted[partition] = None if offset is None else int(offset)
                # A pass taken out of this disk only (never out of its changelog): a restart that read
                # the changelog from its start would bring it back; one reading only the tail does not.
                if partition == min(dbs):
                    gone = next((k for k in db.keys() if k != OFFSET_KEY), None)
                    if gone is not None:
                        del db[gone]
            finally:
                db.close()
        assert persisted == {p: end - 1 for p, end in ends.items() if end > 0}, (persisted, ends)

        await system.start_ready_worker()
        # The same shipment again (other content, same id): its stored decision, byte for byte, and no second pass.
        resent_sid, resent = next(iter(approved.items()))
        body = next(b for b in bodies if b["shipment_id"] == resent_sid)
        again = await decide(system, [{**body, "note": "resent"}], seen=1)
        assert [m.value for m in again[resent_sid]] == [first[resent_sid][0].value] * 2
        issued = Counter(
            m.key.decode() for m in system.tap.where(system.topics.status, lambda m: m.json.get("status") == "issued")
        )
        assert issued[resent["pass"]["pass_id"]] == 1

        # The pass deleted from the disk above stayed deleted: nothing before the tail was read again.
        worker = system.workers[-1]
        worker.terminate()
        assert worker.wait(120) == 0
        if gone is not None:
            db = read_db(dbs[min(dbs)])
            try:
                assert db.get(gone) is None, "the restart read the changelog from its start"
            finally:
                db.close()
    finally:
        await system.close()
