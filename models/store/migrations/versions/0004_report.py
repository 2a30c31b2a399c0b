"""the day's report: the key-enterprise list's history, and the day's decisions and events by time

`enterprise_change` (models.store.tables.EnterpriseChange), written by the projector beside
`enterprise`, which keeps only each firm's current row; backfilled with those current rows (the
history before this revision is in the log only: `greenchannel report --verify` reads it there).
Indexes on `shipment.decided_at` and `pass_event.at`, so a day's report reads that day's rows only.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 00:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # noqa: F401  (autogenerate renders sqlmodel.sql.sqltypes.AutoString)
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "enterprise_change",
        sa.Column("credit_code", sqlmodel.sql.sqltypes.AutoString(length=18), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("credit_code", "effective_at", "action"),
    )
    op.execute(
        "INSERT INTO enterprise_change (credit_code, effective_at, action, name) "
        "SELECT credit_code, effective_at, CASE WHEN listed THEN 'add' ELSE 'remove' END, name "
        "FROM enterprise WHERE effective_at IS NOT NULL"
    )
    inspector = sa.inspect(op.get_bind())
    for table, column in (("shipment", "decided_at"), ("pass_event", "at")):
        name = f"ix_{table}_{column}"
        # A database made by create_all before there were migrations has the models' indexes already.
        if name not in {ix["name"] for ix in inspector.get_indexes(table)}:
            op.create_index(op.f(name), table, [column], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_pass_event_at"), table_name="pass_event")
    op.drop_index(op.f("ix_shipment_decided_at"), table_name="shipment")
    op.drop_table("enterprise_change")
