"""SQLModel tables: the database projections of the streams.

Each family follows one pattern: `XBase` (the fields), `X` (the table). Rows are written only
by the projector, with idempotent upserts keyed by the stream's own keys, so a redelivered
message rewrites the same row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime
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
    "Checkpoint",
    "CheckpointBase",
]


def _when(**kw) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), **kw))


class ShipmentBase(SQLModel):
    shipment_id: str = Field(primary_key=True, max_length=128)
    decision: str = Field(max_length=16)
    priority: str | None = Field(default=None, max_length=2)
    rules_version: str = Field(max_length=64)
    decided_at: datetime | None = _when()
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
    at: datetime | None = _when()
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


class CheckpointBase(SQLModel):
    checkpoint_id: str = Field(primary_key=True, max_length=32)
    name: str = ""
    adcode: str = Field(max_length=6)
    lat: float
    lon: float


class Checkpoint(CheckpointBase, table=True):
    pass
