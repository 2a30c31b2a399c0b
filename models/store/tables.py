"""SQLModel tables: the database projections of the streams.

Each family follows one pattern: `XBase` (the fields), `X` (the table). Rows are written only
by the projector, with idempotent upserts keyed by the stream's own keys, so a redelivered
message rewrites the same row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, TypeDecorator, UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = [
    "Shipment",
    "ShipmentBase",
    "Pass",
    "PassBase",
    "PassEvent",
    "PassEventBase",
    "Region",
    "RegionBase",
    "Enterprise",
    "EnterpriseBase",
    "EnterpriseChange",
    "Checkpoint",
    "CheckpointBase",
    "Firm",
    "FirmBase",
    "FirmKey",
    "GatewayRequest",
    "WebhookDelivery",
    "PassCount",
    "DecisionHour",
    "RejectionCount",
    "RecentDwell",
    "RECENT_DWELLS",
    "UTCDateTime",
    "CrossingSlot",
]


class UTCDateTime(TypeDecorator):
    """A moment, stored in UTC and always read back aware. PostgreSQL's timestamptz is both already;
    SQLite keeps the wall-clock fields of what it is given and reads them back naive, so a moment
    is turned to UTC before it is written and read back as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"a naive datetime ({value.isoformat()}) is not a moment: give its time zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value if value is None or value.tzinfo is not None else value.replace(tzinfo=UTC)


def _when(**kw) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), **kw))


class ShipmentBase(SQLModel):
    shipment_id: str = Field(primary_key=True, max_length=128)
    decision: str = Field(max_length=16)
    priority: str | None = Field(default=None, max_length=2)
    rules_version: str = Field(max_length=64)
    decided_at: datetime | None = _when(index=True)  # the day's report reads a day of decisions
    pass_id: str | None = Field(default=None, max_length=12, index=True)
    reasons: list[dict] = Field(default_factory=list, sa_column=Column(JSON))


class Shipment(ShipmentBase, table=True):
    pass


class PassBase(SQLModel):
    pass_id: str = Field(primary_key=True, max_length=12)
    shipment_id: str | None = Field(default=None, max_length=128, index=True)
    plate: str | None = Field(default=None, max_length=16)
    priority: str | None = Field(default=None, max_length=2)
    issuer: str | None = Field(default=None, max_length=6)
    valid_from: datetime | None = _when()
    valid_until: datetime | None = _when()
    trip: str | None = Field(default=None, max_length=8)
    toll_exempt: bool | None = None
    status: str | None = Field(default=None, max_length=16, index=True)
    checkpoint_id: str | None = Field(default=None, max_length=32)
    status_at: datetime | None = _when()
    route: dict | None = Field(default=None, sa_column=Column(JSON))


class Pass(PassBase, table=True):
    token: str | None = None


class PassEventBase(SQLModel):
    pass_id: str = Field(max_length=12, index=True)
    status: str = Field(max_length=16)
    at: datetime | None = _when(index=True)  # the day's report reads a day of events
    checkpoint_id: str | None = Field(default=None, max_length=32, index=True)
    reason: str | None = None
    dwell_seconds: float | None = None
    dwell_exceeded: bool = False


class PassEvent(PassEventBase, table=True):
    __tablename__ = "pass_event"
    id: int | None = Field(default=None, primary_key=True)
    # The CloudEvents id of the status event: the idempotency key of the history.
    event_id: str = Field(max_length=64, unique=True)


class RegionBase(SQLModel):
    adcode: str = Field(primary_key=True, max_length=6)
    level: str = Field(max_length=8)
    effective_at: datetime | None = _when()


class Region(RegionBase, table=True):
    pass


class EnterpriseBase(SQLModel):
    credit_code: str = Field(primary_key=True, max_length=18)
    name: str = ""
    listed: bool = True
    effective_at: datetime | None = _when()


class Enterprise(EnterpriseBase, table=True):
    pass


class EnterpriseChange(SQLModel, table=True):
    """The key-enterprise list's history (`enterprise` keeps each firm's current row only): one row
    per entry taking effect, keyed by what it says, so a redelivered entry rewrites its own row.
    The day's report lists a day's additions and removals from it (migration 0004)."""

    __tablename__ = "enterprise_change"
    credit_code: str = Field(primary_key=True, max_length=18)
    effective_at: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    action: str = Field(primary_key=True, max_length=8)  # add | remove
    name: str = ""


class CheckpointBase(SQLModel):
    checkpoint_id: str = Field(primary_key=True, max_length=32)
    name: str = ""
    adcode: str = Field(max_length=6)
    lat: float
    lon: float


class Checkpoint(CheckpointBase, table=True):
    pass


# --- the dashboard's aggregates ----------------------------------------------------------------------
# Kept by database triggers (migration 0002) in the transaction that writes the rows they count, so
# they cannot drift from them, whoever writes (the projector, a rebuild from the log) and however
# often a row is rewritten: a trigger counts a row's change from its old values to its new ones.
# Their sizes follow the reference data and the clock, not the number of passes. An empty part of a
# key is '' (a key column cannot be NULL); the readers in models.store.db turn it back into None.


class PassCount(SQLModel, table=True):
    """Passes by (status, last checkpoint, issuing county): the map, the board's queues, the
    status counts. A key whose count falls to 0 is deleted."""

    __tablename__ = "pass_count"
    status: str = Field(primary_key=True, max_length=16)
    checkpoint_id: str = Field(primary_key=True, max_length=32)
    issuer: str = Field(primary_key=True, max_length=6)
    n: int


class DecisionHour(SQLModel, table=True):
    """Decisions by hour of the decision time (UTC, 'YYYY-MM-DDTHH:00Z'), decision and class: at most
    a dozen rows an hour, about 100,000 a year."""

    __tablename__ = "decision_hour"
    hour: str = Field(primary_key=True, max_length=17)
    decision: str = Field(primary_key=True, max_length=16)
    priority: str = Field(primary_key=True, max_length=2)
    n: int


class RejectionCount(SQLModel, table=True):
    """Rejected requests naming each reason code (a request counts once per code)."""

    __tablename__ = "rejection_count"
    code: str = Field(primary_key=True)
    n: int


# The board's median dwell is over each checkpoint's last RECENT_DWELLS departures with a dwell.
RECENT_DWELLS = 50


class RecentDwell(SQLModel, table=True):
    """The last RECENT_DWELLS departures with a dwell time of each checkpoint (by time, then row id):
    a copy of their pass_event rows, the older ones deleted as newer ones come in."""

    __tablename__ = "recent_dwell"
    __table_args__ = (Index("ix_recent_dwell_checkpoint_at", "checkpoint_id", "at", "id"),)
    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})  # pass_event.id
    checkpoint_id: str = Field(max_length=32)
    at: datetime | None = _when()
    dwell_seconds: float


class CrossingSlot(SQLModel, table=True):
    """The public crossing times' counts (models.crossings; migration 0005's triggers): departures with
    a dwell time by 10-minute slot of their time (UTC, 'YYYY-MM-DDTHH:M0Z'), checkpoint and whole
    minute of dwell, and how many of them were over the dwell target. No pass, plate or firm: a
    count. A key whose count falls to 0 is deleted."""

    __tablename__ = "crossing_slot"
    __table_args__ = {"sqlite_with_rowid": False}  # migration 0005: a window is one sequential read
    slot: str = Field(primary_key=True, max_length=17)
    checkpoint_id: str = Field(primary_key=True, max_length=32)
    minute: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    n: int
    over_target: int
    last_at: datetime | None = _when()  # the latest crossing counted here: the channel's clock


# --- the firms' gateway: its firms, their keys, their requests, their webhook deliveries --------------
# Written by the gateway and `greenchannel firms`, never by the projector.


class FirmBase(SQLModel):
    firm_id: str = Field(primary_key=True, max_length=32)  # models.firms.FIRM_ID
    name: str = Field(max_length=256)
    credit_code: str = Field(max_length=18)  # the firm's own
    # Credit codes the firm may name as shipper: its own and the shippers it carries for.
    acts_for: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    webhook_url: str | None = Field(default=None, max_length=512)
    requests_per_minute: int = 600
    created_at: datetime | None = _when()


class Firm(FirmBase, table=True):
    # The HMAC key of its webhook deliveries (models.firms.webhook_signature): shown once to the firm.
    webhook_secret: str | None = Field(default=None, max_length=64)


class FirmKey(SQLModel, table=True):
    """A firm's API key: only the SHA-256 of its secret is kept (models.firms)."""

    __tablename__ = "firm_key"
    key_id: str = Field(primary_key=True, max_length=12)
    firm_id: str = Field(max_length=32, index=True)
    secret_sha256: str = Field(max_length=64)
    created_at: datetime | None = _when()
    revoked_at: datetime | None = _when()


class GatewayRequest(SQLModel, table=True):
    """A request a firm made through the gateway: its idempotency record."""

    __tablename__ = "gateway_request"
    shipment_id: str = Field(primary_key=True, max_length=128)  # the channel's: gw:<firm>:<client id>
    firm_id: str = Field(max_length=32, index=True)
    client_id: str = Field(max_length=128)  # the firm's own shipment id
    body_sha256: str = Field(max_length=64)  # of the body as the firm sent it: a different body is a conflict
    key_id: str = Field(max_length=12)
    accepted_at: datetime | None = _when()
    # Why the worker could not take it, when it dead-lettered the record (no decision will come).
    dead_letter: str | None = Field(default=None, max_length=512)


class WebhookDelivery(SQLModel, table=True):
    """A notification for a firm's webhook, and how its delivery went."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (UniqueConstraint("firm_id", "event_id"),)
    id: int | None = Field(default=None, primary_key=True)
    firm_id: str = Field(max_length=32, index=True)
    event_id: str = Field(max_length=80)
    kind: str = Field(max_length=16)  # decision | status
    shipment_id: str | None = Field(default=None, max_length=128)
    pass_id: str | None = Field(default=None, max_length=12)
    body: str
    attempts: int = 0
    next_at: datetime | None = _when(index=True)
    delivered_at: datetime | None = _when()
    last_error: str | None = Field(default=None, max_length=512)
