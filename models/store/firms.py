"""The gateway's rows: firms, their API keys and their requests. Keyword-only CRUD on a Session.

The rules (what a key looks like, what a firm may ask) are models.firms'; this only stores and finds.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ..firms import ApiKey, NotAnApiKey, new_api_key, parse_api_key, secret_hash
from .tables import Firm, FirmKey, GatewayRequest, Shipment

__all__ = [
    "FirmExists",
    "create_firm",
    "add_acts_for",
    "set_webhook",
    "list_firms",
    "create_key",
    "revoke_key",
    "list_keys",
    "authenticate",
    "active_key",
    "add_request",
    "forget_request",
    "get_request",
    "list_requests",
    "get_shipment",
]


class FirmExists(ValueError):
    """A firm id already registered."""


def create_firm(
    session: Session,
    *,
    firm_id: str,
    name: str,
    credit_code: str,
    acts_for: list[str],
    requests_per_minute: int,
    now: datetime,
) -> Firm:
    firm = Firm(
        firm_id=firm_id,
        name=name,
        credit_code=credit_code,
        acts_for=sorted({credit_code, *acts_for}),
        requests_per_minute=requests_per_minute,
        created_at=now,
    )
    session.add(firm)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise FirmExists(f"firm {firm_id} is registered already") from exc
    session.refresh(firm)
    return firm


def add_acts_for(session: Session, *, firm_id: str, codes: list[str]) -> Firm | None:
    firm = session.get(Firm, firm_id)
    if firm is None:
        return None
    firm.acts_for = sorted({*firm.acts_for, *codes})
    session.add(firm)
    session.commit()
    session.refresh(firm)
    return firm


def set_webhook(session: Session, *, firm_id: str, url: str | None) -> tuple[Firm, str | None] | None:
    """Set (or, with None, remove) the firm's webhook; a new secret each time, returned once."""
    firm = session.get(Firm, firm_id)
    if firm is None:
        return None
    secret = None if url is None else secrets.token_urlsafe(32)
    firm.webhook_url, firm.webhook_secret = url, secret
    session.add(firm)
    session.commit()
    session.refresh(firm)
    return firm, secret


def list_firms(session: Session) -> list[Firm]:
    return list(session.exec(select(Firm).order_by(col(Firm.firm_id))))


def create_key(session: Session, *, firm_id: str, now: datetime) -> ApiKey | None:
    """A new API key of the firm; its text is returned here only."""
    if session.get(Firm, firm_id) is None:
        return None
    key = new_api_key()
    session.add(FirmKey(key_id=key.key_id, firm_id=firm_id, secret_sha256=secret_hash(key.secret), created_at=now))
    session.commit()
    return key


def revoke_key(session: Session, *, key_id: str, now: datetime) -> FirmKey | None:
    row = session.get(FirmKey, key_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = now
        session.add(row)
        session.commit()
        session.refresh(row)
    return row


def list_keys(session: Session, *, firm_id: str | None = None) -> list[FirmKey]:
    q = select(FirmKey).order_by(col(FirmKey.firm_id), col(FirmKey.created_at))
    if firm_id is not None:
        q = q.where(FirmKey.firm_id == firm_id)
    return list(session.exec(q))


def authenticate(session: Session, *, key_text: str) -> tuple[Firm, FirmKey] | None:
    """The firm and key of an API key's text, or None: unknown, wrong secret, or revoked."""
    try:
        key = parse_api_key(key_text)
    except NotAnApiKey:
        return None
    found = active_key(session, key_id=key.key_id)
    if found is None or not hmac.compare_digest(found[1].secret_sha256, secret_hash(key.secret)):
        return None
    return found


def active_key(session: Session, *, key_id: str) -> tuple[Firm, FirmKey] | None:
    """The firm and key of a key id not revoked (a portal session's key, proved when it opened)."""
    row = session.get(FirmKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    firm = session.get(Firm, row.firm_id)
    return None if firm is None else (firm, row)


def add_request(
    session: Session, *, shipment_id: str, firm_id: str, client_id: str, body_sha256: str, key_id: str, now: datetime
) -> tuple[GatewayRequest, bool]:
    """Record a firm's request once: (the row, True) when new, (the row first recorded, False) when
    the shipment id was recorded already (by an earlier call or a concurrent one)."""
    row = GatewayRequest(
        shipment_id=shipment_id,
        firm_id=firm_id,
        client_id=client_id,
        body_sha256=body_sha256,
        key_id=key_id,
        accepted_at=now,
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        first = session.get(GatewayRequest, shipment_id)
        if first is None:  # cannot be: the key conflicted; raise rather than guess
            raise
        return first, False
    session.refresh(row)
    return row, True


def forget_request(session: Session, *, shipment_id: str) -> None:
    """Drop a request the gateway could not publish, so that the firm may send it again."""
    row = session.get(GatewayRequest, shipment_id)
    if row is not None:
        session.delete(row)
        session.commit()


def get_request(session: Session, *, shipment_id: str) -> GatewayRequest | None:
    return session.get(GatewayRequest, shipment_id)


def list_requests(session: Session, *, firm_id: str, limit: int, before: str | None = None) -> list[GatewayRequest]:
    """The firm's requests, newest first, `limit` at most, those accepted before `before` (a
    shipment id of an earlier page) when given."""
    q = select(GatewayRequest).where(GatewayRequest.firm_id == firm_id)
    if before is not None and (anchor := session.get(GatewayRequest, before)) is not None:
        q = q.where(col(GatewayRequest.accepted_at) < anchor.accepted_at)
    q = q.order_by(col(GatewayRequest.accepted_at).desc(), col(GatewayRequest.shipment_id)).limit(limit)
    return list(session.exec(q))


def get_shipment(session: Session, *, shipment_id: str) -> Shipment | None:
    return session.get(Shipment, shipment_id)
