"""What the gateway answers, as typed models: the OpenAPI document is made from these."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

__all__ = [
    "Problem",
    "FieldProblem",
    "Accepted",
    "DecisionView",
    "RequestView",
    "RequestList",
    "PassEventView",
    "PassView",
]


class FieldProblem(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """Every error: a code a program can branch on, a sentence a person can read."""

    error: str = Field(examples=["not_acting_for"])
    message: str
    fields: list[FieldProblem] = []


class Accepted(BaseModel):
    shipment_id: str = Field(description="your shipment id, as you sent it")
    status: str = Field(
        examples=["accepted"], description="accepted: the channel has the request; a repeat: 'accepted' again"
    )
    request_url: str


class DecisionView(BaseModel):
    decision: str = Field(examples=["approved", "rejected"])
    priority: str | None = None
    reasons: list[dict] = []
    rules_version: str
    decided_at: datetime | None = None
    pass_id: str | None = None


class RequestView(BaseModel):
    shipment_id: str
    status: str = Field(
        description="pending (not decided yet), approved, rejected, or dead_letter: the worker could not "
        "take the request (see error); no decision will come"
    )
    error: str | None = None
    accepted_at: datetime | None = None
    decision: DecisionView | None = None
    pass_url: str | None = None
    pass_status: str | None = Field(None, description="the pass's status now (issued, rerouted, suspended, …)")


class RequestList(BaseModel):
    requests: list[RequestView]
    next_before: str | None = Field(None, description="pass as ?before= for the next page; none: the last page")


class PassEventView(BaseModel):
    status: str
    at: datetime | None = None
    checkpoint_id: str | None = None
    reason: str | None = None
    dwell_seconds: float | None = None


class PassView(BaseModel):
    pass_id: str
    shipment_id: str
    status: str | None = None
    status_at: datetime | None = None
    plate: str | None = None
    priority: str | None = None
    issuer: str | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    trip: str | None = None
    toll_exempt: bool | None = None
    route: dict | None = None
    token: str | None = None
    history: list[PassEventView] = []
    print_png_url: str
    print_pdf_url: str


class DeliveryView(BaseModel):
    event_id: str
    kind: str
    shipment_id: str | None = None
    pass_id: str | None = None
    attempts: int
    delivered_at: datetime | None = None
    next_at: datetime | None = Field(None, description="the next try; none once delivered or given up")
    last_error: str | None = None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryView]
