"""The driver's pass on a phone, served by the gateway: a page per pass behind a capability link.

- `GET /v1/passes/{id}/driver-link` (the firm's key or portal session, its own passes only): the
  link to hand the driver, `/d/{id}/{secret}` (models.driver), with its QR as PNG or SVG.
- `GET /d/{id}/{secret}`: the page (streams/static/driver/), the same file for every pass; its
  `state` (JSON: the pass, its verdict colour, what to do, the route with the median wait at each
  checkpoint) and its `events` (server-sent events: the state again whenever the pass changes).
  A wrong or missing secret is the same 404 as an unknown pass, and the database is not read for it.
- `GET /d/sw.js`: the service worker (scope /d/) that keeps the page, its assets and its last state
  on the phone, so that it opens without a network and says how old what it shows is.

The secret is in the path: the page is sent with `Referrer-Policy: no-referrer` and `noindex`, and
uvicorn's access log (off at the gateway's log level) has the secret cut out of every /d/ path.
"""

import asyncio
import functools
import hashlib
import io
import logging
from datetime import datetime
from pathlib import Path

import orjson
import segno
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from models.driver import driver_path, instruction, link_secret_ok, new_link_key, verdict
from models.policy import CLASS_NAMES
from models.records import format_time, parse_time
from models.store import db
from routing import Gazetteer

from ..keys import write_secret_once
from ..pass_print import pass_qr
from .app import Gateway, Refused, _own_pass
from .portal import PORTAL_CSP, STATIC
from .views import Problem

__all__ = ["add_driver_pages", "load_link_key", "driver_url", "driver_state", "DriverLink"]

PAGE = STATIC / "driver"
# Workers from this origin only (the service worker); everything else as the portal's page.
DRIVER_CSP = PORTAL_CSP + "; worker-src 'self'; manifest-src 'self'"
_HEADERS = {
    "Content-Security-Policy": DRIVER_CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the secret is in the address: never sent on
    "X-Robots-Tag": "noindex, nofollow",
}
KEEP_ALIVE_S = 15.0
# How often an open stream reads the pass again with no event for it (a pass not of a gateway firm,
# an event before the live feed was positioned, the waits at the checkpoints moving).
REFRESH_S = 30.0
_NOT_FOUND = "no such page"


class DriverLink(BaseModel):
    pass_id: str
    url: str = Field(description="the driver's page: whoever holds it sees this pass (and no other)")
    qr_png_url: str
    qr_svg_url: str


def load_link_key(path: Path) -> bytes:
    """The driver-link key in `path`, made (32 random bytes, mode 0600) when there is none: written
    to a file of its own, then linked, so two gateways starting together share one key."""
    if not path.exists():
        write_secret_once(path, new_link_key())
    key = path.read_bytes()
    if len(key) < 16:
        raise SystemExit(f"{path}: a driver-link key is at least 16 bytes (delete it to make a new one)")
    return key


def driver_url(settings, base_url: str, pass_id: str) -> str:
    """The driver's page of a pass on the gateway at `base_url` (e.g. http://127.0.0.1:8090/), with
    the key of these settings: what the demo prints, or an operator hands a driver."""
    return base_url.rstrip("/") + driver_path(load_link_key(settings.driver_link_key_path), pass_id)


def add_driver_pages(app: FastAPI, gateway: Gateway, Who) -> None:  # noqa: N803 — a type
    _link_routes(app, gateway, Who)
    app.mount("/driver", StaticFiles(directory=PAGE), name="driver")
    app.add_middleware(_DriverHeaders)

    @app.get("/d/sw.js", include_in_schema=False)
    def service_worker() -> FileResponse:
        return FileResponse(PAGE / "sw.js", media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    @app.get("/d/{pass_id}", include_in_schema=False)
    def no_secret(pass_id: str) -> Response:
        raise Refused(404, "not_found", _NOT_FOUND)

    @app.get("/d/{pass_id}/{secret}", include_in_schema=False)
    def page(pass_id: str, secret: str) -> FileResponse:
        _check(gateway, pass_id, secret)
        if not _exists(gateway, pass_id):
            raise Refused(404, "not_found", _NOT_FOUND)
        headers = {"Cache-Control": "no-cache, private"}
        return FileResponse(PAGE / "index.html", media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/d/{pass_id}/{secret}/state", include_in_schema=False)
    def state(pass_id: str, secret: str) -> Response:
        _check(gateway, pass_id, secret)
        with gateway.session() as s:
            found = _state(gateway, s, pass_id, None)
        if found is None:
            raise Refused(404, "not_found", _NOT_FOUND)
        return Response(orjson.dumps(found), media_type="application/json", headers={"Cache-Control": "no-store"})

    @app.get("/d/{pass_id}/{secret}/events", include_in_schema=False)
    async def events(pass_id: str, secret: str) -> StreamingResponse:
        _check(gateway, pass_id, secret)
        first = await run_in_threadpool(_read, gateway, pass_id, None)
        if first is None:
            raise Refused(404, "not_found", _NOT_FOUND)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(_stream(gateway, pass_id, first), media_type="text/event-stream", headers=headers)

    _quiet_access_log()


def _check(gateway: Gateway, pass_id: str, secret: str) -> None:
    """404 unless `secret` is the pass's: the same answer as an unknown pass, before any lookup."""
    if len(pass_id) > 12 or not link_secret_ok(gateway.driver_link_key, pass_id, secret):
        raise Refused(404, "not_found", _NOT_FOUND)


# --- the firm's side: the link and its QR ------------------------------------------------------------


def _link_routes(app: FastAPI, gateway: Gateway, Who) -> None:  # noqa: N803 — a type
    @app.get(
        "/v1/passes/{pass_id}/driver-link",
        response_model=DriverLink,
        responses={404: {"model": Problem}},
        summary="The link to the driver's pass page",
    )
    def driver_link(pass_id: str, who: Who, request: Request) -> DriverLink:
        """Hand it to the driver (or print its QR): a page on the driver's phone with the pass's QR,
        its status as it changes, the route and the wait at each checkpoint, readable offline. The
        link holds a secret: whoever has it sees this pass."""
        _owned(gateway, pass_id, who)
        base = f"/v1/passes/{pass_id}/driver-link"
        return DriverLink(
            pass_id=pass_id, url=_url(gateway, request, pass_id), qr_png_url=f"{base}.png", qr_svg_url=f"{base}.svg"
        )

    for kind, media in (("png", "image/png"), ("svg", "image/svg+xml")):
        _qr_route(app, gateway, Who, kind, media)


def _qr_route(app: FastAPI, gateway: Gateway, Who, kind: str, media: str) -> None:  # noqa: N803 — a type
    @app.get(
        f"/v1/passes/{{pass_id}}/driver-link.{kind}",
        response_class=Response,
        responses={200: {"content": {media: {}}}, 404: {"model": Problem}},
        summary=f"The driver's link as a QR code ({kind.upper()})",
        name=f"driver_link_{kind}",
    )
    def driver_link_qr(pass_id: str, who: Who, request: Request) -> Response:
        _owned(gateway, pass_id, who)
        out = io.BytesIO()
        segno.make(_url(gateway, request, pass_id), error="m").save(out, kind=kind, scale=8, border=4)
        return Response(out.getvalue(), media_type=media, headers={"Cache-Control": "private, no-store"})


def _owned(gateway: Gateway, pass_id: str, who) -> None:
    with gateway.session() as s:
        _own_pass(s, pass_id, who)


def _url(gateway: Gateway, request: Request, pass_id: str) -> str:
    return str(request.base_url).rstrip("/") + driver_path(gateway.driver_link_key, pass_id)


# --- the driver's side: the state of one pass --------------------------------------------------------


def _read(gateway: Gateway, pass_id: str, event: dict | None, before: dict | None = None) -> dict | None:
    with gateway.session() as s:
        return _state(gateway, s, pass_id, event, before)


def _state(gateway: Gateway, s, pass_id: str, event: dict | None, before: dict | None = None) -> dict | None:
    row = db.get_pass(s, pass_id=pass_id)
    if row is None or not row.token:
        return None
    events = db.get_pass_events(s, pass_id=pass_id)
    route = row.route or {}
    waits = db.recent_waits(s, (c["checkpoint_id"] for c in route.get("checkpoints", ())))
    log_time = db.latest_event_time(s) if gateway.clock_of_the_log else None
    return driver_state(row, events, waits, event=event, now=gateway.now(), log_time=log_time, before=before)


def driver_state(
    row, events, waits: dict[str, dict], *, event: dict | None, now: datetime, log_time, before: dict | None = None
) -> dict:
    """What the page shows of a pass: the projected row, or a newer status event over it (the live
    feed is ahead of the projector by a moment), its verdict at the channel's time `as_of` (`now`,
    or the time of the last event projected when the channel has no wall clock), and `served_at`
    (this server's `now`). The QR (tens of milliseconds to draw) is `before`'s when its token is."""
    current = {
        "status": row.status,
        "status_at": row.status_at,
        "checkpoint_id": row.checkpoint_id,
        "reason": events[-1].reason if events else None,
        "route": row.route or {},
        "token": row.token,
    }
    if event is not None and (current["status_at"] is None or parse_time(event["at"]) >= current["status_at"]):
        current |= {k: event[k] for k in ("status", "checkpoint_id", "reason") if k in event}
        current["status_at"] = parse_time(event["at"])
        current |= {k: event[k] for k in ("route", "token") if event.get(k)}
    as_of = now if log_time is None else max(t for t in (log_time, current["status_at"]) if t is not None)
    valid_from, valid_until = row.valid_from, row.valid_until
    zh, en = CLASS_NAMES.get(row.priority or "", ("", ""))
    return {
        "pass_id": row.pass_id,
        "plate": row.plate,
        "priority": row.priority,
        "class_zh": zh,
        "class_en": en,
        "trip": row.trip,
        "toll_exempt": row.toll_exempt,
        "valid_from": format_time(valid_from) if valid_from else None,
        "valid_until": format_time(valid_until) if valid_until else None,
        "status": current["status"],
        "status_at": format_time(current["status_at"]) if current["status_at"] else None,
        "checkpoint_id": current["checkpoint_id"],
        "reason": current["reason"],
        "verdict": verdict(current["status"], valid_from, valid_until, as_of),
        "instruction": instruction(current["status"], valid_from, valid_until, as_of),
        "token": current["token"],
        "qr": before["qr"] if before and before.get("token") == current["token"] else _qr(current["token"]),
        "route": _route(current["route"], waits),
        "as_of": format_time(as_of),
        "served_at": format_time(now),
    }


@functools.lru_cache(maxsize=256)  # the pages opened again and again, each drawn once
def _qr(token: str) -> str:
    """The pass's QR as printed (`pass_qr`), an SVG data URI."""
    return pass_qr(token).svg_data_uri(scale=1, border=4)


def _route(route: dict, waits: dict[str, dict]) -> dict:
    """The route with each checkpoint's median wait, and its path as [lon, lat] points to draw."""
    g = Gazetteer.default()
    path = [[p.lon, p.lat] for code in route.get("adcodes", ()) if (p := g.locate(code)) is not None]
    checkpoints = [
        {
            **{k: c.get(k) for k in ("checkpoint_id", "name", "lat", "lon", "eta")},
            "median_wait_seconds": waits.get(c["checkpoint_id"], {}).get("median_dwell_seconds"),
            "recent_departures": waits.get(c["checkpoint_id"], {}).get("recent_departures", 0),
        }
        for c in route.get("checkpoints", ())
    ]
    return {"distance_km": route.get("distance_km"), "eta": route.get("eta"), "checkpoints": checkpoints, "path": path}


# --- live: the state again whenever the pass changes ------------------------------------------------


async def _stream(gateway: Gateway, pass_id: str, first: dict):
    """`event: state` with the whole state, at once and after each change of it: an event of the pass
    on the gateway's live feed (the feed carries the gateway firms' passes), or a read every REFRESH_S
    (any pass; the waits at the checkpoints move too)."""
    queue = gateway.hub.open_pass(pass_id)
    try:
        shown, event = None, None
        state: dict | None = first
        loop = asyncio.get_running_loop()
        last_read = loop.time()
        while True:
            if state is not None and (digest := _digest(state)) != shown:
                shown = digest
                yield b"event: state\ndata: " + orjson.dumps(state) + b"\n\n"
            else:
                yield b": keep-alive\n\n"
            got = await _next_event(queue, pass_id, timeout=KEEP_ALIVE_S)
            if got is False:  # fell behind: the page connects again and reads the state anew
                return
            if got is not None:
                event = got
            if got is not None or loop.time() - last_read >= REFRESH_S:
                state = await run_in_threadpool(_read, gateway, pass_id, event, state)
                last_read = loop.time()
    finally:
        gateway.hub.close_pass(pass_id, queue)


async def _next_event(queue: asyncio.Queue, pass_id: str, *, timeout: float) -> dict | None | bool:
    """The next status event of this pass within `timeout` (None: none came), False: the stream ended."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            envelope = await asyncio.wait_for(queue.get(), left)
        except TimeoutError:
            return None
        if envelope is None:
            return False
        if envelope.kind == "status" and envelope.pass_id == pass_id:
            return envelope.data
    return None


def _exists(gateway: Gateway, pass_id: str) -> bool:
    """Whether the pass is there, with its token (what the page shows)."""
    with gateway.session() as s:
        row = db.get_pass(s, pass_id=pass_id)
        return row is not None and bool(row.token)


def _digest(state: dict) -> str:
    return hashlib.sha256(orjson.dumps({k: v for k, v in state.items() if k not in ("as_of", "served_at")})).hexdigest()


# --- headers and logs --------------------------------------------------------------------------------


class _DriverHeaders:
    """The page's headers on /d/ and /driver/ (plain ASGI: the event stream passes through as it is)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(("/d/", "/driver/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                from starlette.datastructures import MutableHeaders

                MutableHeaders(scope=message).update(_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _NoSecrets(logging.Filter):
    """uvicorn's access log with /d/<pass>/<secret> written /d/<pass>/…: a log is no place for links."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and args[2].startswith("/d/"):
            parts = args[2].split("/")
            if len(parts) > 3:
                parts[3] = "…"
            record.args = (*args[:2], "/".join(parts), *args[3:])
        return True


def _quiet_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _NoSecrets) for f in access.filters):
        access.addFilter(_NoSecrets())
