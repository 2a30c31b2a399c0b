"""The projector without a broker: batches shaped from records as project_batch takes them, and written to
a database that refuses some of them (through the broker: tests/integration/test_projector.py)."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import exc as sa_exc

from models.store.db import make_engine, upgrade
from models.store.tables import Shipment
from streams.audit import Record
from streams.handlers import Topics
from streams.projector import bad_record, shape, write
from tests.support.projections import FIRM_A, approved, ce, pass_id, status, table

T = Topics.with_prefix("gc.")


def record(topic: str, value, offset: int = 0, *, partition: int = 1, headers=()) -> Record:
    raw = orjson.dumps(value) if isinstance(value, (dict, list)) else value
    return Record(topic, partition, offset, 0, None, raw, tuple(headers))


def test_shape_takes_each_record_as_project_batch_does_and_counts_the_unusable():
    d = approved(1)
    s = status(pass_id(1), "issued", "2020-02-20T08:00:00+08:00")
    shaped = shape(
        T,
        [
            record(T.decisions, d, 0),
            record(T.status, s, 1, headers=ce("status/x/1")),
            record(T.status, s, 2),  # no ce_id: its place in the log
            record(T.risk, {"adcode": "4403", "level": "high", "effective_at": "2020-02-20T08:00:00+08:00"}, 3),
            record(
                T.enterprises,
                {"credit_code": FIRM_A.lower(), "name": "A", "action": "add", "effective_at": "2020-02-20T00:00:00Z"},
                4,
            ),
            record(T.risk, {"adcode": "4403", "level": "extreme", "effective_at": "2020-02-20T00:00:00Z"}, 5),
            record(T.decisions, b"not json", 6),
            record(T.status, None, 7),
            record(T.requests, {"shipment_id": "X"}, 8),
        ],
    )
    assert [(i.kind, i.where) for i in shaped.items] == [
        ("decisions", "gc.pass.decisions/1@0"),
        ("statuses", "gc.pass.status/1@1"),
        ("statuses", "gc.pass.status/1@2"),
        ("risks", "gc.region.risk/1@3"),
        ("enterprises", "gc.enterprises/1@4"),
    ]
    assert shaped.items[0].row == d
    assert [i.row[0] for i in shaped.items[1:3]] == ["status/x/1", "gc.pass.status/1/2"]
    # Reference records as the worker reads them: the credit code normalised, times in UTC.
    assert shaped.items[3].row == {"adcode": "4403", "level": "high", "effective_at": "2020-02-20T00:00:00Z"}
    assert shaped.items[4].row["credit_code"] == FIRM_A
    assert [why.split(":")[0] for why in shaped.skipped] == [
        "gc.region.risk/1@5",
        "gc.pass.decisions/1@6",
        "gc.pass.status/1@7",
        "gc.shipment.requests/1@8",
    ]


def test_write_skips_only_the_records_the_database_cannot_take(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    records = [record(T.decisions, approved(n), n) for n in range(40)]
    records[7] = record(T.decisions, {"shipment_id": "BAD-7", "decision": "approved"}, 7)
    records[30] = record(T.decisions, {**approved(30), "decided_at": 12}, 30)
    engine = make_engine(url)
    try:
        written = write(engine, shape(T, records).items)
    finally:
        engine.dispose()
    assert written.rows == 38
    assert [why.split(":")[0] for why in written.skipped] == ["gc.pass.decisions/1@7", "gc.pass.decisions/1@30"]
    assert set(table(url, Shipment)) == {f"S-{n:05d}" for n in range(40) if n not in (7, 30)}


def test_write_raises_when_the_database_is_unreachable():
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(sa_exc.OperationalError):
            write(engine, shape(T, [record(T.decisions, approved(1))]).items)
    finally:
        engine.dispose()


class _ServerError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    "error, ours",
    [
        (KeyError("rules_version"), True),
        (sa_exc.DataError("INSERT", {}, _ServerError("22001")), True),  # value too long
        (sa_exc.IntegrityError("INSERT", {}, _ServerError("23502")), True),
        (sa_exc.ProgrammingError("INSERT", {}, _ServerError(None)), True),  # a value the driver cannot bind
        (sa_exc.ProgrammingError("INSERT", {}, _ServerError("42P01")), False),  # no such table: the schema's fault
        (sa_exc.OperationalError("INSERT", {}, _ServerError("08006")), False),  # connection lost
    ],
    ids=["missing-field", "data", "integrity", "unbindable", "undefined-table", "connection"],
)
def test_bad_record_tells_a_record_from_the_database(error, ours):
    assert bad_record(error) is ours
