"""Projection inputs written out by hand (decisions and statuses in the shapes of schemas/PassDecision and
PassStatus, checked against them), the rows a database holds, and fresh PostgreSQL databases, for the
database and projector tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jsonschema
import psycopg
from psycopg import sql
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlmodel import Session

from models.store.db import make_engine
from models.store.tables import Enterprise, Pass, PassEvent, Region, Shipment

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
DECISION_SCHEMA = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "PassDecision.schema.json").read_text()))
STATUS_SCHEMA = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "PassStatus.schema.json").read_text()))

SHENZHEN, GUANGZHOU, DONGGUAN = "440305", "440106", "441900"
CP_SZ, CP_DG, CP_GZ = "BX-4403-0001", "BX-4419-0002", "DST-440106"


def checkpoint(checkpoint_id: str, adcode: str, lat: float, lon: float, eta: str) -> dict:
    return {
        "checkpoint_id": checkpoint_id,
        "name": f"{checkpoint_id} gate",
        "adcode": adcode,
        "lat": lat,
        "lon": lon,
        "eta": eta,
    }


ROUTE_A = {
    "adcodes": [SHENZHEN, GUANGZHOU],
    "distance_km": 140.5,
    "eta": "2020-02-20T12:00:00+08:00",
    "checkpoints": [
        checkpoint(CP_SZ, SHENZHEN, 22.54, 113.93, "2020-02-20T09:00:00+08:00"),
        checkpoint(CP_GZ, GUANGZHOU, 23.13, 113.32, "2020-02-20T12:00:00+08:00"),
    ],
}
ROUTE_B = {
    "adcodes": [SHENZHEN, DONGGUAN, GUANGZHOU],
    "distance_km": 162.0,
    "eta": "2020-02-20T13:00:00+08:00",
    "checkpoints": [
        checkpoint(CP_SZ, SHENZHEN, 22.54, 113.93, "2020-02-20T09:00:00+08:00"),
        checkpoint(CP_DG, DONGGUAN, 23.02, 113.75, "2020-02-20T11:00:00+08:00"),
        checkpoint(CP_GZ, GUANGZHOU, 23.13, 113.32, "2020-02-20T13:00:00+08:00"),
    ],
}


def decision(
    shipment_id: str,
    pass_id: str | None,
    *,
    plate: str = "粤B12345",
    priority: str = "P1",
    route: dict = ROUTE_A,
    token: str = "Y2xhaW1zQQ.c2lnQQ",
    rules_version: str = "2020.02-v1",
) -> dict:
    """An approved decision with its pass, or (pass_id None) a rejection."""
    if pass_id is None:
        d = {
            "shipment_id": shipment_id,
            "decision": "rejected",
            "priority": None,
            "reasons": [{"code": "not_essential", "text": "cargo is not on the essential list", "field": "cargo"}],
            "rules_version": rules_version,
            "decided_at": "2020-02-20T07:59:00+08:00",
            "pass": None,
        }
    else:
        d = {
            "shipment_id": shipment_id,
            "decision": "approved",
            "priority": priority,
            "reasons": [{"code": "medical", "text": "medical supplies"}],
            "rules_version": rules_version,
            "decided_at": "2020-02-20T08:00:00+08:00",
            "pass": {
                "pass_id": pass_id,
                "issuer": pass_id[:6],
                "plate": plate,
                "priority": priority,
                "valid_from": "2020-02-20T08:00:00+08:00",
                "valid_until": "2020-02-27T08:00:00+08:00",
                "trip": "single",
                "toll_exempt": True,
                "route": route,
                "token": token,
            },
        }
    DECISION_SCHEMA.validate(d)
    return d


def status(
    pass_id: str,
    state: str,
    at: str,
    *,
    checkpoint_id: str | None = None,
    dwell: float | None = None,
    exceeded: bool = False,
    route: dict | None = None,
    token: str | None = None,
    reason: str | None = None,
) -> dict:
    s = {
        "pass_id": pass_id,
        "shipment_id": None,
        "status": state,
        "at": at,
        "checkpoint_id": checkpoint_id,
        "reason": reason,
        "dwell_seconds": dwell,
        "dwell_exceeded": exceeded,
        "cause": f"test:{state}",
    }
    if route is not None:
        s["route"], s["token"] = route, token
    STATUS_SCHEMA.validate(s)
    return s


@contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """The URL of a new database on the PostgreSQL server at `server_url`, dropped afterwards."""
    base = make_url(server_url)
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"gc_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- numbered passes, and the rows they become -------------------------------------------------------
FIRM_A, FIRM_B = "91330100799655058B", "9144030071526726XG"  # valid unified social credit codes


def pass_id(n: int) -> str:
    return f"440305{n:06d}"


def ce(ce_id: str) -> list[tuple[str, bytes]]:
    return [("ce_specversion", b"1.0"), ("ce_id", ce_id.encode()), ("content-type", b"application/json")]


def rows(url: str, query, tables) -> dict:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return {t: query(session, t) for t in tables}
    finally:
        engine.dispose()


def table(url: str, model) -> dict:
    """Every row of `model`, by its natural key."""
    key = {
        Shipment: "shipment_id",
        Pass: "pass_id",
        PassEvent: "event_id",
        Region: "adcode",
        Enterprise: "credit_code",
    }[model]
    return rows(url, lambda s, t: {getattr(r, key): r for r in s.scalars(select(t))}, (model,))[model]


def approved(n: int, **kw) -> dict:
    return decision(f"S-{n:05d}", pass_id(n), **kw)


def issued(n: int) -> tuple[str, dict]:
    return f"status/{pass_id(n)}/issued", status(pass_id(n), "issued", "2020-02-20T08:00:00+08:00")
