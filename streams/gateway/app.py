"""`greenchannel gateway`: the firms' HTTP API. FastAPI; OpenAPI 3.1 at /openapi.json, docs at /docs.

A firm authenticates with its API key (`Authorization: Bearer gck_…`) and sees only its own: its
shipment ids are scoped to it (`models.firms.channel_shipment_id`), so another firm's request or pass
is a 404 whatever its id. The gateway checks what it can say at once (the published schema, the
body limit, the shipper the firm may act for) and publishes the rest to the worker, which decides as
it decides every request; the record carries `requested_by`, the firm the gateway authenticated.

Thin adapter: rules in models.firms, rows in models.store.firms, the decision in the worker.
"""

import asyncio
import copy
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from models.driver import new_link_key
from models.firms import TokenBucket, channel_shipment_id, client_shipment_id, shipper_refusal
from models.records import MAX_MESSAGE_BYTES, parse_request
from models.store import db
from models.store import firms as rows
from models.store.tables import Firm, GatewayRequest

from ..firms import bind_driver, schema_fields
from ..pass_print import pass_document, pass_from_row
from .crossings import add_crossings
from .events import notification_routes
from .notify import Hub
from .publisher import Publisher
from .requests import ClientRequest, RequestRefused, read_client_request
from .session import COOKIE, Sessions, csrf_refusal
from .views import Accepted, DecisionView, PassEventView, PassView, Problem, RequestList, RequestView

__all__ = ["Gateway", "Caller", "create_gateway"]

log = logging.getLogger("greenchannel.gateway")
SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "ShipmentRequest.schema.json"
# The worker's input limits (models.records, README "Input limits"), refused here at once.
LIMIT_CODES = frozenset({"too_long", "too_many_lines"})
# How long a request waits for the broker to take it before the firm is told 503 (send it again).
PUBLISH_TIMEOUT_S = 30.0


class Refused(Exception):
    """An answer other than success: its status, code and message (and field problems)."""

    def __init__(self, status: int, error: str, message: str, *, fields=(), headers=None) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.fields, self.headers = list(fields), headers


@dataclass(frozen=True, slots=True)
class Caller:
    """The firm a request came from, as its key proved."""

    firm_id: str
    acts_for: frozenset[str]
    key_id: str


FAILURES_PER_MINUTE, FAILURES_BURST = 10, 20  # refused keys a client address may try
MAX_CLIENTS = 10_000  # addresses remembered for that


@dataclass
class Gateway:
    """What the endpoints need: the database, the publisher, the clocks, each firm's rate limit."""

    engine: Engine
    publisher: Publisher
    monotonic: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    hub: Hub = field(default_factory=Hub)
    sessions: Sessions = field(default_factory=Sessions)  # the portal's (streams.gateway.session)
    # The public crossing times as the settings say (streams.gateway.crossings.from_settings): made by
    # the composition root; None: the defaults (the wall clock, the catalog's target).
    crossings: Any = None
    # The drivers' pass links (streams.gateway.driver): their HMAC key (serve.py reads it from its
    # file; by default one made for this process), and whether "now" on a driver's page is the time
    # of the last event projected (a channel without a wall clock: the demo's day) or `now`.
    driver_link_key: bytes = field(default_factory=new_link_key, repr=False)
    clock_of_the_log: bool = False

    def session(self) -> Session:
        return Session(self.engine)

    # Failed authentications by client address: a key guessed at costs a database look-up each time.
    failures: OrderedDict[str, TokenBucket] = field(default_factory=OrderedDict)
    failures_per_minute: float = FAILURES_PER_MINUTE
    failures_burst: float = FAILURES_BURST

    def failure_wait(self, client: str) -> float:
        """0 when `client` may try a key now, else the seconds until it may (counts nothing)."""
        bucket = self.failures.get(client)
        return 0.0 if bucket is None else bucket.wait(self.monotonic())

    def failed(self, client: str) -> None:
        """Count a refused key from `client` (the oldest addresses forgotten past MAX_CLIENTS)."""
        bucket = self.failures.pop(client, None)
        if bucket is None:
            bucket = TokenBucket(rate=self.failures_per_minute / 60, burst=self.failures_burst)
        bucket.take(self.monotonic())
        self.failures[client] = bucket
        while len(self.failures) > MAX_CLIENTS:
            self.failures.popitem(last=False)

    def take(self, firm: Firm) -> float:
        """0 when the firm may make a request now, else the seconds until it may (`Retry-After`)."""
        rate = firm.requests_per_minute / 60
        bucket = self.buckets.get(firm.firm_id)
        if bucket is None or bucket.rate != rate:
            bucket = self.buckets[firm.firm_id] = TokenBucket(rate=rate, burst=max(1.0, firm.requests_per_minute / 6))
        return bucket.take(self.monotonic())


def create_gateway(gateway: Gateway, *, lifespan=None) -> FastAPI:
    app = FastAPI(
        title="greenchannel: the firms' gateway",
        version="1",
        description="Apply for green-channel passes, follow them and print them. Each firm sees only its own.",
        lifespan=lifespan,
        responses={401: {"model": Problem}, 429: {"model": Problem}},
    )
    _errors(app)
    _requests_routes(app, gateway)
    _passes_routes(app, gateway)
    notification_routes(app, gateway, Annotated[Caller, Depends(_caller(gateway))])
    from .driver import add_driver_pages  # the drivers' pass pages (imports this module)
    from .portal import add_portal  # the firms' web page, its sessions and look-ups (imports this module)

    add_portal(app, gateway)
    add_driver_pages(app, gateway, Annotated[Caller, Depends(_caller(gateway))])
    add_crossings(app, gateway, gateway.crossings)  # the public crossing times (streams.gateway.crossings)
    return app


# --- errors: one shape -------------------------------------------------------------------------------


def _errors(app: FastAPI) -> None:
    def problem(status: int, error: str, message: str, fields=(), headers=None) -> JSONResponse:
        body = Problem(error=error, message=message, fields=list(fields)).model_dump()
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(Refused)
    async def refused(request, exc: Refused):
        return problem(exc.status, exc.error, exc.message, exc.fields, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        fields = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return problem(422, "invalid", "the request's parameters are not valid", fields)

    @app.exception_handler(StarletteHTTPException)
    async def http(request, exc: StarletteHTTPException):
        return problem(exc.status_code, _CODES.get(exc.status_code, "http_error"), str(exc.detail))


_CODES = {404: "not_found", 405: "method_not_allowed"}


# --- who asks ----------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="the firm's API key, gck_<key id>_<secret>")


def _caller(gateway: Gateway):
    async def caller(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
    ) -> Caller:
        if credentials is not None:
            _not_guessing(gateway, request)
            found = await run_in_threadpool(_authenticate, gateway, credentials.credentials)
            if found is None:
                gateway.failed(_client(request))
        elif (key_id := gateway.sessions.key_of(request.cookies.get(COOKIE))) is not None:
            origin = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if (why := csrf_refusal(request.method, request.headers, origin)) is not None:
                raise Refused(403, "forbidden", why)
            found = await run_in_threadpool(_authenticate_key_id, gateway, key_id)
        else:
            raise Refused(401, "unauthorized", "an API key is needed: Authorization: Bearer gck_…", headers=_CHALLENGE)
        if found is None:
            raise Refused(401, "unauthorized", "unknown or revoked API key", headers=_CHALLENGE)
        firm, key_id = found
        within_limit(gateway, firm)
        return Caller(firm.firm_id, frozenset(firm.acts_for), key_id)

    return caller


def within_limit(gateway: Gateway, firm: Firm) -> None:
    """Count a request of the firm's; 429 past its rate limit."""
    if (wait := gateway.take(firm)) > 0:
        raise _too_many(wait, f"more than {firm.requests_per_minute} requests a minute")


def _too_many(wait: float, why: str) -> Refused:
    seconds = math.ceil(wait)
    return Refused(429, "rate_limited", f"{why}; try again in {seconds} s", headers={"Retry-After": str(seconds)})


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def _not_guessing(gateway: Gateway, request: Request) -> None:
    """429 when the client's address has had too many keys refused of late."""
    if (wait := gateway.failure_wait(_client(request))) > 0:
        raise _too_many(wait, "too many refused keys from your address")


_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _authenticate(gateway: Gateway, key_text: str) -> tuple[Firm, str] | None:
    return _firm_of(gateway, lambda s: rows.authenticate(s, key_text=key_text))


def _authenticate_key_id(gateway: Gateway, key_id: str) -> tuple[Firm, str] | None:
    """The firm of a portal session's key, looked up again: None once the key is revoked."""
    return _firm_of(gateway, lambda s: rows.active_key(s, key_id=key_id))


def _firm_of(gateway: Gateway, find) -> tuple[Firm, str] | None:
    """The firm and key id `find(session)` finds, the firm detached from the session."""
    with gateway.session() as s:
        found = find(s)
        if found is None:
            return None
        firm, key = found
        s.expunge(firm)
        return firm, key.key_id


# --- requests ----------------------------------------------------------------------------------------


def _requests_routes(app: FastAPI, gateway: Gateway) -> None:
    Who = Annotated[Caller, Depends(_caller(gateway))]

    @app.post(
        "/v1/requests",
        status_code=202,
        response_model=Accepted,
        responses={
            400: {"model": Problem},
            403: {"model": Problem},
            409: {"model": Problem},
            413: {"model": Problem},
            422: {"model": Problem},
            503: {"model": Problem},
        },  # fmt: skip
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _schema()}}}},
        summary="Apply for a pass",
    )
    async def submit(request: Request, who: Who) -> JSONResponse:
        """Send a shipment request (the published ShipmentRequest schema). Idempotent per shipment id:
        the same request again is accepted again, a different one under the same id is a conflict."""
        try:
            wanted = read_client_request(await _body(request), who.firm_id)
        except RequestRefused as exc:
            raise Refused(exc.status, exc.error, exc.message, fields=exc.fields) from None
        _check(wanted, who)
        first, new = await run_in_threadpool(_record, gateway, wanted, who)
        if not new and first.body_sha256 != wanted.digest:
            raise Refused(409, "conflict", f"shipment id {wanted.client_id} was sent already with a different request")
        if new:
            await _publish(gateway, wanted, who)
        url = f"/v1/requests/{wanted.client_id}"
        body = Accepted(shipment_id=wanted.client_id, status="accepted", request_url=url)
        return JSONResponse(body.model_dump(), status_code=202, headers={"Location": url})

    @app.get("/v1/requests/{shipment_id}", response_model=RequestView, responses={404: {"model": Problem}})
    def get_request(shipment_id: str, who: Who) -> RequestView:
        """A request of yours: pending until the worker decided it, then its decision (and pass)."""
        with gateway.session() as s:
            row = rows.get_request(s, shipment_id=channel_shipment_id(who.firm_id, shipment_id))
            if row is None:
                raise Refused(404, "not_found", f"no request {shipment_id} of yours")
            return _request_view(s, row)

    @app.get("/v1/requests", response_model=RequestList)
    def list_requests(
        who: Who,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        before: Annotated[str | None, Query(max_length=128, description="next_before of the previous page")] = None,
    ) -> RequestList:
        """Your requests, newest first."""
        with gateway.session() as s:
            anchor = None if before is None else channel_shipment_id(who.firm_id, before)
            found = rows.list_requests(s, firm_id=who.firm_id, limit=limit + 1, before=anchor)
            views = [_request_view(s, r) for r in found[:limit]]
        return RequestList(requests=views, next_before=views[-1].shipment_id if len(found) > limit else None)


def _schema() -> dict:
    schema = json.loads(SCHEMA.read_text())
    return {k: v for k, v in schema.items() if k not in ("$schema", "$id")}


async def _body(request: Request) -> bytes:
    """The body, refused past the worker's own input limit without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_MESSAGE_BYTES:
        raise Refused(413, "too_large", f"a request is at most {MAX_MESSAGE_BYTES} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_MESSAGE_BYTES:
                raise Refused(413, "too_large", f"a request is at most {MAX_MESSAGE_BYTES} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # the client went away mid-body: nothing was taken, no one to answer
        raise Refused(400, "incomplete", "the body ended before it was whole") from None
    return b"".join(chunks)


def _check(wanted: ClientRequest, who: Caller) -> None:
    fields = schema_fields(wanted.body)
    if fields:
        raise Refused(422, "invalid", "the request does not follow the ShipmentRequest schema", fields=fields)
    limits = [{"field": e.field, "message": e.text} for e in parse_request(wanted.body)[1] if e.code in LIMIT_CODES]
    if limits:
        raise Refused(422, "too_long", "the request passes the worker's input limits", fields=limits)
    refusal = shipper_refusal(who.acts_for, wanted.body["shipper"]["credit_code"])
    if refusal is not None:
        raise Refused(403, "not_acting_for", refusal, fields=[{"field": "shipper.credit_code", "message": refusal}])
    if (problem := bind_driver(copy.deepcopy(wanted.body))) is not None:
        raise Refused(422, "invalid", "the driver cannot be bound", fields=[{"field": "driver", "message": problem}])


def _record(gateway: Gateway, wanted: ClientRequest, who: Caller) -> tuple[GatewayRequest, bool]:
    with gateway.session() as s:
        row, new = rows.add_request(
            s,
            shipment_id=wanted.channel_id,
            firm_id=who.firm_id,
            client_id=wanted.client_id,
            body_sha256=wanted.digest,
            key_id=who.key_id,
            now=gateway.now(),
        )
        s.expunge(row)
        return row, new


async def _publish(gateway: Gateway, wanted: ClientRequest, who: Caller) -> None:
    """The request as the worker reads it: the channel's id, the firm that asked, and the driver's
    ID number replaced by its salted binding (`bind_driver`): the number never enters Kafka."""
    body = copy.deepcopy(wanted.body) | {"shipment_id": wanted.channel_id, "requested_by": who.firm_id}
    bind_driver(body)
    value = orjson.dumps(body)
    try:
        await asyncio.wait_for(gateway.publisher.publish(wanted.channel_id, value), timeout=PUBLISH_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 — the broker did not take it: the firm may send it again
        log.warning("could not publish %s: %s", wanted.channel_id, exc)
        await run_in_threadpool(_forget, gateway, wanted.channel_id)
        raise Refused(503, "unavailable", "the channel could not take the request now; send it again") from None


def _forget(gateway: Gateway, shipment_id: str) -> None:
    with gateway.session() as s:
        rows.forget_request(s, shipment_id=shipment_id)


def _request_view(s: Session, row: GatewayRequest) -> RequestView:
    decided = rows.get_shipment(s, shipment_id=row.shipment_id)
    decision = None
    if decided is not None:
        decision = DecisionView(
            decision=decided.decision,
            priority=decided.priority,
            reasons=decided.reasons,
            rules_version=decided.rules_version,
            decided_at=decided.decided_at,
            pass_id=decided.pass_id,
        )
    status = decided.decision if decided is not None else "dead_letter" if row.dead_letter else "pending"
    return RequestView(
        shipment_id=row.client_id,
        status=status,
        error=row.dead_letter if decided is None else None,
        accepted_at=row.accepted_at,
        decision=decision,
        pass_url=f"/v1/passes/{decided.pass_id}" if decided is not None and decided.pass_id else None,
        pass_status=_pass_status(s, decided.pass_id if decided is not None else None),
    )


def _pass_status(s: Session, pass_id: str | None) -> str | None:
    row = db.get_pass(s, pass_id=pass_id) if pass_id else None
    return None if row is None else row.status


# --- passes ------------------------------------------------------------------------------------------


def _passes_routes(app: FastAPI, gateway: Gateway) -> None:
    Who = Annotated[Caller, Depends(_caller(gateway))]

    @app.get("/v1/passes/{pass_id}", response_model=PassView, responses={404: {"model": Problem}})
    def get_pass(pass_id: str, who: Who) -> PassView:
        """A pass of yours: its terms now (a reroute changes them), its status and its history."""
        with gateway.session() as s:
            row, client_id = _own_pass(s, pass_id, who)
            events = db.get_pass_events(s, pass_id=pass_id)
            history = [PassEventView.model_validate(e, from_attributes=True) for e in events]
            fields = (k for k in PassView.model_fields if hasattr(row, k) and k != "shipment_id")
            view = {k: v for k in fields if (v := getattr(row, k)) is not None}
        base = f"/v1/passes/{pass_id}"
        return PassView(
            **view,
            shipment_id=client_id,
            history=history,
            print_png_url=f"{base}/print.png",
            print_pdf_url=f"{base}/print.pdf",
        )

    for kind, media in (("png", "image/png"), ("pdf", "application/pdf")):
        _print_route(app, gateway, Who, kind, media)


def _print_route(app: FastAPI, gateway: Gateway, Who, kind: str, media: str) -> None:  # noqa: N803 — a type
    @app.get(
        f"/v1/passes/{{pass_id}}/print.{kind}",
        response_class=Response,
        responses={200: {"content": {media: {}}}, 404: {"model": Problem}},
        summary=f"The driver's pass, printable ({kind.upper()})",
        name=f"print_{kind}",
    )
    def print_pass(pass_id: str, who: Who) -> Response:
        with gateway.session() as s:
            row, _ = _own_pass(s, pass_id, who)
            if not row.token:
                raise Refused(404, "not_found", f"pass {pass_id} has no token yet")
            the_pass = pass_from_row(row)
        headers = {"Content-Disposition": f'inline; filename="pass-{pass_id}.{kind}"', "Cache-Control": "no-store"}
        return Response(pass_document(the_pass, kind), media_type=media, headers=headers)


def _own_pass(s: Session, pass_id: str, who: Caller):
    """The pass row and the firm's own shipment id of it; 404 for a pass that is not the firm's."""
    row = db.get_pass(s, pass_id=pass_id) if len(pass_id) <= 12 else None
    client_id = None if row is None or row.shipment_id is None else client_shipment_id(who.firm_id, row.shipment_id)
    if row is None or client_id is None:
        raise Refused(404, "not_found", f"no pass {pass_id} of yours")
    return row, client_id
