"""public crossing times: counts of departures by checkpoint, 10-minute slot and whole minute of dwell

The table of models.store.tables.CrossingSlot, the triggers that keep it in the transaction of each
write to pass_event (insert, delete, and an update of a counted column: its old values counted out,
its new ones in), and its backfill from the rows already there. The public feed (models.crossings,
streams.gateway.crossings) reads a window's slots from it: its cost follows the checkpoints and the
window, never the number of passes. The keys are computed as models.crossings.slot_key and
dwell_minute compute them (tests/unit/test_crossings.py holds the two equal).

A later migration that rebuilds `pass_event` on SQLite (batch mode copies the table) drops its
triggers: it must create them again (`create_triggers`).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 00:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # noqa: F401  (autogenerate renders sqlmodel.sql.sqltypes.AutoString)
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_DWELL_MINUTE = 1440  # models.crossings.MAX_DWELL_MINUTE when this revision was written

# The key of a row of pass_event `r` (NEW, OLD or a table alias) in crossing_slot, per dialect.
SQLITE_SLOT = "coalesce(strftime('%Y-%m-%dT%H:', {r}.at) || substr(strftime('%M', {r}.at), 1, 1) || '0Z', '')"
PG_SLOT = (
    "coalesce(to_char(timezone('UTC', {r}.at), 'YYYY-MM-DD\"T\"HH24:') "
    "|| substr(to_char(timezone('UTC', {r}.at), 'MI'), 1, 1) || '0Z', '')"
)
SQLITE_MINUTE = f"CAST(min(max({{r}}.dwell_seconds, 0.0), {MAX_DWELL_MINUTE * 60}.0) / 60 AS INTEGER)"
PG_MINUTE = f"floor(least(greatest({{r}}.dwell_seconds, 0.0), {MAX_DWELL_MINUTE * 60}.0) / 60)::integer"
COUNTED = "{r}.dwell_seconds IS NOT NULL AND {r}.checkpoint_id IS NOT NULL AND {r}.at IS NOT NULL"
OVER = "CASE WHEN {r}.dwell_exceeded THEN 1 ELSE 0 END"
COLUMNS = ("at", "checkpoint_id", "dwell_seconds", "dwell_exceeded")


def _keys(dialect: str) -> tuple[str, str, str]:
    if dialect == "sqlite":
        return SQLITE_SLOT, SQLITE_MINUTE, "max"
    return PG_SLOT, PG_MINUTE, "greatest"


def _count_in(r: str, dialect: str) -> str:
    slot, minute, latest = _keys(dialect)
    return (
        "INSERT INTO crossing_slot (slot, checkpoint_id, minute, n, over_target, last_at) "
        f"SELECT {slot.format(r=r)}, {r}.checkpoint_id, {minute.format(r=r)}, 1, {OVER.format(r=r)}, {r}.at "
        f"WHERE {COUNTED.format(r=r)} "
        "ON CONFLICT (slot, checkpoint_id, minute) DO UPDATE SET n = crossing_slot.n + 1, "
        "over_target = crossing_slot.over_target + excluded.over_target, "
        f"last_at = {latest}(crossing_slot.last_at, excluded.last_at);"
    )


def _count_out(r: str, dialect: str) -> str:
    slot, minute, _ = _keys(dialect)
    where = (
        f"(slot, checkpoint_id, minute) = ({slot.format(r=r)}, {r}.checkpoint_id, {minute.format(r=r)}) "
        f"AND {COUNTED.format(r=r)}"
    )
    return (
        f"UPDATE crossing_slot SET n = n - 1, over_target = over_target - {OVER.format(r=r)} WHERE {where}; "
        f"DELETE FROM crossing_slot WHERE {where} AND n <= 0;"
    )


def _changed(distinct: str) -> str:
    return " OR ".join(f"OLD.{c} {distinct} NEW.{c}" for c in COLUMNS)


def sqlite_triggers() -> list[str]:
    return [
        f"CREATE TRIGGER gc_crossing_slot_insert AFTER INSERT ON pass_event BEGIN {_count_in('NEW', 'sqlite')} END",
        f"CREATE TRIGGER gc_crossing_slot_update AFTER UPDATE OF {', '.join(COLUMNS)} ON pass_event "
        f"WHEN {_changed('IS NOT')} BEGIN {_count_out('OLD', 'sqlite')} {_count_in('NEW', 'sqlite')} END",
        f"CREATE TRIGGER gc_crossing_slot_delete AFTER DELETE ON pass_event BEGIN {_count_out('OLD', 'sqlite')} END",
    ]


def postgresql_triggers() -> list[str]:
    return [
        "CREATE FUNCTION gc_crossing_slot() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF TG_OP IN ('UPDATE', 'DELETE') THEN {_count_out('OLD', 'postgresql')} END IF; "
        f"IF TG_OP IN ('UPDATE', 'INSERT') THEN {_count_in('NEW', 'postgresql')} END IF; "
        "RETURN NULL; END $$",
        "CREATE TRIGGER gc_crossing_slot_insert AFTER INSERT OR DELETE ON pass_event "
        "FOR EACH ROW EXECUTE FUNCTION gc_crossing_slot()",
        f"CREATE TRIGGER gc_crossing_slot_update AFTER UPDATE OF {', '.join(COLUMNS)} ON pass_event "
        f"FOR EACH ROW WHEN ({_changed('IS DISTINCT FROM')}) EXECUTE FUNCTION gc_crossing_slot()",
    ]


def create_triggers() -> None:
    bind = op.get_bind()
    for statement in sqlite_triggers() if bind.dialect.name == "sqlite" else postgresql_triggers():
        op.execute(statement)


def backfill() -> None:
    """The counts of the rows already there (the same keys as the triggers')."""
    slot, minute, _ = _keys(op.get_bind().dialect.name)
    slot, minute = slot.format(r="p"), minute.format(r="p")
    op.execute(
        "INSERT INTO crossing_slot (slot, checkpoint_id, minute, n, over_target, last_at) "
        f"SELECT {slot}, p.checkpoint_id, {minute}, count(*), sum({OVER.format(r='p')}), max(p.at) "
        f"FROM pass_event AS p WHERE {COUNTED.format(r='p')} GROUP BY {slot}, p.checkpoint_id, {minute}"
    )


def upgrade() -> None:
    op.create_table(
        "crossing_slot",
        sa.Column("slot", sqlmodel.sql.sqltypes.AutoString(length=17), nullable=False),
        sa.Column("checkpoint_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("minute", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("over_target", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("slot", "checkpoint_id", "minute"),
        # SQLite: the rows in their key's B-tree (no rowid), so that a window's slots are one sequential
        # read, not an index walk with a table look-up per row. PostgreSQL ignores it.
        sqlite_with_rowid=False,
    )
    create_triggers()
    backfill()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS gc_crossing_slot_insert ON pass_event")
        op.execute("DROP TRIGGER IF EXISTS gc_crossing_slot_update ON pass_event")
        op.execute("DROP FUNCTION IF EXISTS gc_crossing_slot()")
    else:
        for statement in sqlite_triggers():
            op.execute(f"DROP TRIGGER IF EXISTS {statement.split()[2]}")
    op.drop_table("crossing_slot")
