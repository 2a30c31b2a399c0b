"""dashboard aggregates: counts the dashboard reads instead of GROUP BY over every row

The tables of models.store.tables (PassCount, DecisionHour, RejectionCount, RecentDwell), the
triggers that keep them in the transaction of each write to pass, shipment and pass_event, and
their backfill from the rows already there. A trigger counts a row's change from its OLD values
to its NEW ones, so a rewrite of the same values (a redelivered batch) changes no count, and the
counts equal a GROUP BY over the rows after every commit, on SQLite and PostgreSQL alike.

A later migration that rebuilds `pass`, `shipment` or `pass_event` on SQLite (batch mode copies
the table) drops their triggers: it must create them again (`create_triggers`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 20:53:35.183426

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # noqa: F401  (autogenerate renders sqlmodel.sql.sqltypes.AutoString)
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RECENT_DWELLS = 50  # models.store.tables.RECENT_DWELLS when this revision was written
AGGREGATES = ("pass_count", "decision_hour", "rejection_count", "recent_dwell")


def create_tables() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())  # create_all made them in a pre-0001 database
    if "decision_hour" not in existing:
        op.create_table(
            "decision_hour",
            sa.Column("hour", sqlmodel.sql.sqltypes.AutoString(length=17), nullable=False),
            sa.Column("decision", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
            sa.Column("priority", sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
            sa.Column("n", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("hour", "decision", "priority"),
        )
    if "pass_count" not in existing:
        op.create_table(
            "pass_count",
            sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
            sa.Column("checkpoint_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
            sa.Column("issuer", sqlmodel.sql.sqltypes.AutoString(length=6), nullable=False),
            sa.Column("n", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("status", "checkpoint_id", "issuer"),
        )
    if "recent_dwell" not in existing:
        op.create_table(
            "recent_dwell",
            sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
            sa.Column("checkpoint_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
            sa.Column("at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("dwell_seconds", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_recent_dwell_checkpoint_at", "recent_dwell", ["checkpoint_id", "at", "id"], unique=False)
    if "rejection_count" not in existing:
        op.create_table(
            "rejection_count",
            sa.Column("code", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
            sa.Column("n", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("code"),
        )


# --- the triggers ------------------------------------------------------------------------------------
# The key of a row in each aggregate, as SQL over a row variable (NEW or OLD) of its source table.

SQLITE_HOUR = "coalesce(strftime('%Y-%m-%dT%H:00Z', {r}.decided_at), '')"  # models.store.db._hour
PG_HOUR = """coalesce(to_char(date_trunc('hour', timezone('UTC', {r}.decided_at)), 'YYYY-MM-DD"T"HH24:00"Z"'), '')"""


def _pass_count(r: str, d: str) -> str:
    """Add `d` (+1 or -1) to the count of the key of pass row `r`."""
    key = f"coalesce({r}.status, ''), coalesce({r}.checkpoint_id, ''), coalesce({r}.issuer, '')"
    if d == "+1":
        return (
            f"INSERT INTO pass_count (status, checkpoint_id, issuer, n) VALUES ({key}, 1) "
            "ON CONFLICT (status, checkpoint_id, issuer) DO UPDATE SET n = pass_count.n + 1;"
        )
    where = f"(status, checkpoint_id, issuer) = ({key})"
    return f"UPDATE pass_count SET n = n - 1 WHERE {where}; DELETE FROM pass_count WHERE {where} AND n = 0;"


def _decision_hour(r: str, d: str, hour: str) -> str:
    key = f"{hour.format(r=r)}, {r}.decision, coalesce({r}.priority, '')"
    if d == "+1":
        return (
            f"INSERT INTO decision_hour (hour, decision, priority, n) VALUES ({key}, 1) "
            "ON CONFLICT (hour, decision, priority) DO UPDATE SET n = decision_hour.n + 1;"
        )
    where = f"(hour, decision, priority) = ({key})"
    return f"UPDATE decision_hour SET n = n - 1 WHERE {where}; DELETE FROM decision_hour WHERE {where} AND n = 0;"


def _codes(r: str, dialect: str) -> str:
    """The distinct reason codes of a rejected shipment row `r` (none for an approval)."""
    if dialect == "sqlite":
        return (
            f"SELECT DISTINCT coalesce(json_extract(j.value, '$.code'), '') AS code FROM json_each({r}.reasons) AS j "
            f"WHERE {r}.decision = 'rejected' AND json_type({r}.reasons) = 'array'"
        )
    return (
        f"SELECT DISTINCT coalesce(j.value ->> 'code', '') AS code "
        f"FROM json_array_elements(CASE WHEN json_typeof({r}.reasons) = 'array' THEN {r}.reasons END) AS j "
        f"WHERE {r}.decision = 'rejected'"
    )


def _rejections(r: str, d: str, dialect: str) -> str:
    if d == "+1":
        return (
            f"INSERT INTO rejection_count (code, n) SELECT code, 1 FROM ({_codes(r, dialect)}) AS c WHERE true "
            "ON CONFLICT (code) DO UPDATE SET n = rejection_count.n + 1;"
        )
    codes = f"code IN (SELECT code FROM ({_codes(r, dialect)}) AS c)"
    return f"UPDATE rejection_count SET n = n - 1 WHERE {codes}; DELETE FROM rejection_count WHERE {codes} AND n = 0;"


RECENT = (
    "INSERT INTO recent_dwell (id, checkpoint_id, at, dwell_seconds) "
    "VALUES (NEW.id, NEW.checkpoint_id, NEW.at, NEW.dwell_seconds); "
    "DELETE FROM recent_dwell WHERE checkpoint_id = NEW.checkpoint_id AND id NOT IN ("
    "SELECT id FROM recent_dwell WHERE checkpoint_id = NEW.checkpoint_id "
    f"ORDER BY at DESC, id DESC LIMIT {RECENT_DWELLS});"
)
RECENT_WHEN = "NEW.dwell_seconds IS NOT NULL AND NEW.checkpoint_id IS NOT NULL"
PASS_KEY = ("status", "checkpoint_id", "issuer")
SHIPMENT_KEY = ("decided_at", "decision", "priority")


def _changed(columns, distinct: str, cast: str = "") -> str:
    return " OR ".join(f"OLD.{c}{cast} {distinct} NEW.{c}{cast}" for c in columns)


def sqlite_triggers() -> list[str]:
    def trigger(name: str, event: str, table: str, body: str, when: str = "") -> str:
        return f"CREATE TRIGGER {name} AFTER {event} ON {table} {'WHEN ' + when if when else ''} BEGIN {body} END"

    shipment_change = _changed(SHIPMENT_KEY, "IS NOT") + " OR OLD.reasons IS NOT NEW.reasons"
    return [
        trigger("gc_pass_count_insert", "INSERT", "pass", _pass_count("NEW", "+1")),
        trigger(
            "gc_pass_count_update",
            f"UPDATE OF {', '.join(PASS_KEY)}",
            "pass",
            _pass_count("OLD", "-1") + _pass_count("NEW", "+1"),
            _changed(PASS_KEY, "IS NOT"),
        ),
        trigger("gc_pass_count_delete", "DELETE", "pass", _pass_count("OLD", "-1")),
        trigger(
            "gc_shipment_counts_insert",
            "INSERT",
            "shipment",
            _decision_hour("NEW", "+1", SQLITE_HOUR) + _rejections("NEW", "+1", "sqlite"),
        ),
        trigger(
            "gc_shipment_counts_update",
            f"UPDATE OF {', '.join(SHIPMENT_KEY)}, reasons",
            "shipment",
            _decision_hour("OLD", "-1", SQLITE_HOUR)
            + _rejections("OLD", "-1", "sqlite")
            + _decision_hour("NEW", "+1", SQLITE_HOUR)
            + _rejections("NEW", "+1", "sqlite"),
            shipment_change,
        ),
        trigger(
            "gc_shipment_counts_delete",
            "DELETE",
            "shipment",
            _decision_hour("OLD", "-1", SQLITE_HOUR) + _rejections("OLD", "-1", "sqlite"),
        ),
        trigger("gc_recent_dwell_insert", "INSERT", "pass_event", RECENT, RECENT_WHEN),
        trigger("gc_recent_dwell_delete", "DELETE", "pass_event", "DELETE FROM recent_dwell WHERE id = OLD.id;"),
    ]


def _pg_function(name: str, insert: str, delete: str) -> str:
    return (
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF TG_OP IN ('UPDATE', 'DELETE') THEN {delete} END IF; "
        f"IF TG_OP IN ('UPDATE', 'INSERT') THEN {insert} END IF; "
        "RETURN NULL; END $$"
    )


def _pg_triggers(table: str, function: str, columns, when: str) -> list[str]:
    run = f"FOR EACH ROW EXECUTE FUNCTION {function}()"
    return [
        f"CREATE TRIGGER {function}_insert AFTER INSERT OR DELETE ON {table} {run}",
        f"CREATE TRIGGER {function}_update AFTER UPDATE OF {', '.join(columns)} ON {table} "
        f"FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION {function}()",
    ]


def postgresql_triggers() -> list[str]:
    shipment_change = (
        _changed(SHIPMENT_KEY, "IS DISTINCT FROM") + " OR OLD.reasons::text IS DISTINCT FROM NEW.reasons::text"
    )
    return [
        _pg_function("gc_pass_count", _pass_count("NEW", "+1"), _pass_count("OLD", "-1")),
        *_pg_triggers("pass", "gc_pass_count", PASS_KEY, _changed(PASS_KEY, "IS DISTINCT FROM")),
        _pg_function(
            "gc_shipment_counts",
            _decision_hour("NEW", "+1", PG_HOUR) + _rejections("NEW", "+1", "postgresql"),
            _decision_hour("OLD", "-1", PG_HOUR) + _rejections("OLD", "-1", "postgresql"),
        ),
        *_pg_triggers("shipment", "gc_shipment_counts", (*SHIPMENT_KEY, "reasons"), shipment_change),
        (
            "CREATE FUNCTION gc_recent_dwell() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF TG_OP = 'DELETE' THEN DELETE FROM recent_dwell WHERE id = OLD.id; "
            f"ELSIF {RECENT_WHEN} THEN {RECENT} END IF; RETURN NULL; END $$"
        ),
        "CREATE TRIGGER gc_recent_dwell AFTER INSERT OR DELETE ON pass_event "
        "FOR EACH ROW EXECUTE FUNCTION gc_recent_dwell()",
    ]


def create_triggers() -> None:
    bind = op.get_bind()
    for statement in sqlite_triggers() if bind.dialect.name == "sqlite" else postgresql_triggers():
        op.execute(statement)


# --- the backfill ------------------------------------------------------------------------------------


def _shipment_codes(dialect: str) -> str:
    """(shipment, reason code) once per code of each rejected shipment (`_codes` of every row)."""
    if dialect == "sqlite":
        return (
            "SELECT DISTINCT s.shipment_id, coalesce(json_extract(j.value, '$.code'), '') AS code "
            "FROM shipment AS s, json_each(s.reasons) AS j "
            "WHERE s.decision = 'rejected' AND json_type(s.reasons) = 'array'"
        )
    return (
        "SELECT DISTINCT s.shipment_id, coalesce(j.value ->> 'code', '') AS code FROM shipment AS s, "
        "json_array_elements(CASE WHEN json_typeof(s.reasons) = 'array' THEN s.reasons END) AS j "
        "WHERE s.decision = 'rejected'"
    )


def backfill() -> None:
    """The aggregates of the rows already there (the same keys as the triggers')."""
    dialect = op.get_bind().dialect.name
    hour = (SQLITE_HOUR if dialect == "sqlite" else PG_HOUR).format(r="s")
    for table in AGGREGATES:
        op.execute(f"DELETE FROM {table}")
    op.execute(
        "INSERT INTO pass_count (status, checkpoint_id, issuer, n) "
        "SELECT coalesce(status, ''), coalesce(checkpoint_id, ''), coalesce(issuer, ''), count(*) FROM pass "
        "GROUP BY coalesce(status, ''), coalesce(checkpoint_id, ''), coalesce(issuer, '')"
    )
    op.execute(
        "INSERT INTO decision_hour (hour, decision, priority, n) "
        f"SELECT {hour}, s.decision, coalesce(s.priority, ''), count(*) FROM shipment AS s "
        f"GROUP BY {hour}, s.decision, coalesce(s.priority, '')"
    )
    op.execute(
        "INSERT INTO rejection_count (code, n) "
        f"SELECT code, count(*) FROM ({_shipment_codes(dialect)}) AS t GROUP BY code"
    )
    op.execute(
        "INSERT INTO recent_dwell (id, checkpoint_id, at, dwell_seconds) SELECT id, checkpoint_id, at, dwell_seconds "
        "FROM (SELECT id, checkpoint_id, at, dwell_seconds, row_number() OVER "
        "(PARTITION BY checkpoint_id ORDER BY at DESC, id DESC) AS n FROM pass_event "
        "WHERE dwell_seconds IS NOT NULL AND checkpoint_id IS NOT NULL) AS r "
        f"WHERE n <= {RECENT_DWELLS}"
    )


def upgrade() -> None:
    create_tables()
    create_triggers()
    backfill()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, function in (("pass", "gc_pass_count"), ("shipment", "gc_shipment_counts")):
            op.execute(f"DROP TRIGGER IF EXISTS {function}_insert ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {function}_update ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
        op.execute("DROP TRIGGER IF EXISTS gc_recent_dwell ON pass_event")
        op.execute("DROP FUNCTION IF EXISTS gc_recent_dwell()")
    else:
        for statement in sqlite_triggers():
            op.execute(f"DROP TRIGGER IF EXISTS {statement.split()[2]}")
    op.drop_table("rejection_count")
    op.drop_index("ix_recent_dwell_checkpoint_at", table_name="recent_dwell")
    op.drop_table("recent_dwell")
    op.drop_table("pass_count")
    op.drop_table("decision_hour")
