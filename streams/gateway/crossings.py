"""Crossing times as open data, served by the gateway without a key (issue 27).

- `GET /public/v1/crossings`: the feed (JSON, `CrossingsFeed`): per checkpoint, the median and
  90th-percentile dwell over the last hour and day, vehicles crossing per hour, the share over the
  dwell target and the trend against yesterday and a week ago (models.crossings has the rules).
  Checkpoints and figures only: no pass, plate, shipment or firm.
- `GET /public/crossings`: the page (Chinese and English): a map of the checkpoints coloured by wait
  and a table, refreshed by itself.

The figures are computed at most once per `interval` seconds, whatever the number of requests,
from the counts migration 0005 keeps (their cost follows the checkpoints, not the passes); the
answer carries Cache-Control (public, until the next computation), an ETag and Last-Modified, and a
request naming the current ETag (If-None-Match) or a time not before Last-Modified gets 304.

"Now": the wall clock (production), or with `GC_PUBLIC_CLOCK=channel` the channel's clock, the time
of the latest crossing in the database (the demo's day in February 2020). The feed and the page say
which and show "as of".
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from models.crossings import MIN_CROSSINGS, SLOT_MINUTES
from models.records import format_time
from models.store.crossings import crossing_figures, latest_crossing

__all__ = ["PublicCrossings", "add_crossings", "CrossingsFeed"]

PAGE = Path(__file__).resolve().parents[1] / "static" / "crossings"
INTERVAL_S = 60.0
RETRY_S = 5.0  # the database failed: the last figures this long, then another try
log = logging.getLogger("greenchannel.gateway")
CLOCKS = ("wall", "channel")
RESOLUTION = "whole minutes, rounded down: a figure m means between m and m + 1 minutes"


class Figures(BaseModel):
    """One window of one checkpoint. Withheld (every figure null) when 1 to min_crossings - 1 vehicles
    crossed: so few could single a vehicle out."""

    crossings: int | None = Field(description="departures with a dwell time in the window; null when withheld")
    vehicles_per_hour: float | None = Field(description="crossings per hour of the window")
    median_dwell_minutes: int | None = Field(description="median dwell, arrival to departure (the upper median)")
    p90_dwell_minutes: int | None = Field(description="90th percentile of the dwell (nearest rank)")
    share_over_target: float | None = Field(description="the share of crossings over the dwell target, 0 to 1")
    withheld: Literal["too_few_crossings", "no_crossings"] | None = Field(
        description="why the dwell figures are null: fewer than min_crossings crossed, or none"
    )


class CheckpointCrossings(BaseModel):
    checkpoint_id: str
    name: str
    adcode: str = Field(description="the county (GB/T 2260) the checkpoint is in")
    place: str = Field(description="the county's full name, e.g. 湖北省武汉市洪山区")
    lat: float
    lon: float
    last_hour: Figures
    last_day: Figures
    yesterday: Figures = Field(description="the 24 hours before the last day")
    week_ago: Figures = Field(description="the same 24 hours seven days earlier")
    trend: Literal["up", "down", "steady"] | None = Field(
        description="the last day's median dwell against yesterday's: up or down by 2 minutes or more, else steady; "
        "null when either is withheld"
    )


class Span(BaseModel):
    start: str = Field(description="RFC 3339, UTC, inclusive")
    end: str = Field(description="RFC 3339, UTC, exclusive")


class CrossingsFeed(BaseModel):
    as_of: str = Field(description="the end of the windows (RFC 3339, UTC)")
    clock: Literal["wall", "channel"] = Field(
        description="wall: the server's clock; channel: the time of the latest crossing recorded"
    )
    target_minutes: float = Field(description="the dwell target (the catalog's dwell_target_seconds / 60)")
    min_crossings: int = Field(description="fewer crossings than this in a window: its figures are withheld")
    slot_minutes: int = Field(description="windows are whole slots of this many minutes, ending with as_of's")
    resolution: str = Field(description="of the dwell figures")
    refresh_seconds: int = Field(description="how often the figures are computed")
    windows: dict[str, Span] = Field(description="last_hour, last_day, yesterday, week_ago")
    checkpoints: list[CheckpointCrossings]


@dataclass(frozen=True, slots=True)
class Snapshot:
    body: bytes
    etag: str
    last_modified: datetime


@dataclass
class PublicCrossings:
    """The feed's figures, computed at most once per `interval` seconds (a lock: one computation at a
    time; the requests that come meanwhile get the figures before it)."""

    engine: Engine
    clock: str = "wall"
    target_seconds: float = 900.0
    interval: float = INTERVAL_S
    min_crossings: int = MIN_CROSSINGS
    monotonic: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    place: Callable[[str], str] = lambda adcode: adcode
    computations: int = 0
    _snapshot: Snapshot | None = None
    _expires: float = -math.inf
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"the public clock is one of {', '.join(CLOCKS)}, not {self.clock!r}")

    def snapshot(self) -> tuple[Snapshot, float]:
        """The current figures and the seconds they stay current. One request computes them when they
        are due; the requests meanwhile get the last ones (for at most a second more), or, before the
        first, wait for them."""
        old = self._snapshot
        if old is not None and self.monotonic() < self._expires:
            return old, self._expires - self.monotonic()
        if not self._lock.acquire(blocking=old is None):
            return old, 1.0  # type: ignore[return-value]  # old is not None: the lock was not waited for
        try:
            if self._snapshot is None or self.monotonic() >= self._expires:
                try:
                    self._compute()
                except SQLAlchemyError:
                    if self._snapshot is None:
                        raise
                    log.exception("the public crossing times could not be computed; the last ones are served")
                    self._expires = self.monotonic() + min(self.interval, RETRY_S)
            return self._snapshot, max(0.0, self._expires - self.monotonic())  # type: ignore[return-value]
        finally:
            self._lock.release()

    def expire(self) -> None:
        """The next request computes the figures again."""
        self._expires = -math.inf

    def _compute(self) -> None:
        body = orjson.dumps(self.feed().model_dump(mode="json"))
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        old = self._snapshot
        modified = old.last_modified if old is not None and old.etag == etag else self.now().replace(microsecond=0)
        self._snapshot = Snapshot(body, etag, modified)
        self._expires = self.monotonic() + self.interval
        self.computations += 1

    def feed(self) -> CrossingsFeed:
        with Session(self.engine) as s:
            as_of = ((latest_crossing(s) if self.clock == "channel" else None) or self.now()).replace(microsecond=0)
            found = crossing_figures(s, as_of, min_crossings=self.min_crossings)
        return CrossingsFeed(
            as_of=format_time(as_of.astimezone(UTC)),
            clock=self.clock,  # type: ignore[arg-type]
            target_minutes=round(self.target_seconds / 60, 2),
            min_crossings=self.min_crossings,
            slot_minutes=SLOT_MINUTES,
            resolution=RESOLUTION,
            refresh_seconds=round(self.interval),
            windows={
                name: Span(start=format_time(w.start), end=format_time(w.end)) for name, w in found["windows"].items()
            },
            checkpoints=[self._row(r) for r in found["checkpoints"]],
        )

    def _row(self, r: dict) -> CheckpointCrossings:
        cp = r["checkpoint"]
        windows = {k: Figures(**r[k]) for k in ("last_hour", "last_day", "yesterday", "week_ago")}
        return CheckpointCrossings(
            checkpoint_id=cp.checkpoint_id,
            name=cp.name,
            adcode=cp.adcode,
            place=self.place(cp.adcode),
            lat=cp.lat,
            lon=cp.lon,
            trend=r["trend"],
            **windows,
        )


def from_settings(engine: Engine, settings) -> PublicCrossings:
    """The feed as the gateway's settings say: its clock (GC_PUBLIC_CLOCK), the catalog's dwell target,
    place names from the gazetteer."""
    from models.policy import load_catalog
    from routing import Gazetteer

    gazetteer = Gazetteer.default()
    target = float(load_catalog(settings.catalog).rules.get("dwell_target_seconds", 900))
    return PublicCrossings(engine, clock=settings.public_clock, target_seconds=target, place=gazetteer.name)


def not_modified(request: Request, snap: Snapshot) -> bool:
    """Whether the client's copy is current: its If-None-Match names the ETag (weak or strong, or *),
    or, without If-None-Match, its If-Modified-Since is not before Last-Modified (RFC 9110 13.2.2)."""
    if (tags := request.headers.get("if-none-match")) is not None:
        names = {t.strip().removeprefix("W/") for t in tags.split(",")}
        return "*" in names or snap.etag in names
    if (since := request.headers.get("if-modified-since")) is not None:
        try:
            when = parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
        return when.tzinfo is not None and when >= snap.last_modified
    return False


def add_crossings(app: FastAPI, gateway, crossings: PublicCrossings | None = None) -> PublicCrossings:
    """Register the feed and the page on the gateway's app (its database; default settings unless
    `crossings` is given: the composition root gives the process's). The feed's object is
    `app.state.crossings` (a test may replace it)."""
    if crossings is None:
        from ..settings import Settings

        crossings = from_settings(gateway.engine, Settings(public_clock="wall"))
    app.state.crossings = crossings

    @app.get(
        "/public/v1/crossings",
        response_model=CrossingsFeed,
        tags=["public"],
        summary="Crossing times at each checkpoint (open data, no key)",
        responses={
            304: {"description": "Not Modified: the copy named by If-None-Match is current"},
            503: {"description": "the database cannot be read now (Retry-After)"},
        },
    )
    def feed(request: Request) -> Response:
        """Per checkpoint, the median and 90th-percentile dwell (arrival to departure) over the last hour and
        day, vehicles crossing per hour, the share over the dwell target and the trend; yesterday and a
        week ago beside. Checkpoints and counts only. Cacheable: computed once a minute."""
        try:
            snap, fresh_for = request.app.state.crossings.snapshot()
        except SQLAlchemyError:
            from .app import Refused

            log.exception("the public crossing times could not be computed")
            raise Refused(
                503, "unavailable", "the figures cannot be read now; try again shortly", headers={"Retry-After": "10"}
            ) from None
        headers = {
            "Cache-Control": f"public, max-age={max(1, math.ceil(fresh_for))}",
            "ETag": snap.etag,
            "Last-Modified": format_datetime(snap.last_modified, usegmt=True),
            "Access-Control-Allow-Origin": "*",  # open data: any page may read it
            "X-Content-Type-Options": "nosniff",
        }
        if not_modified(request, snap):
            return Response(status_code=304, headers=headers)
        return Response(snap.body, media_type="application/json", headers=headers)

    _page_routes(app)
    return crossings


def _page_routes(app: FastAPI) -> None:
    from .portal import _PAGE_HEADERS  # the portal's Content-Security-Policy and framing rules

    files = {"crossings": ("index.html", "text/html; charset=utf-8")}
    files |= {"crossings.js": ("crossings.js", "text/javascript"), "crossings.css": ("crossings.css", "text/css")}
    for path, (name, media) in files.items():
        app.add_api_route(
            f"/public/{path}", _file(PAGE / name, media, _PAGE_HEADERS), methods=["GET"], include_in_schema=False
        )


def _file(path: Path, media: str, headers: dict) -> Callable[[], FileResponse]:
    """An endpoint serving one fixed file (no parameter: nothing a request can point elsewhere)."""

    def serve() -> FileResponse:
        return FileResponse(path, media_type=media, headers={**headers, "Cache-Control": "public, max-age=300"})

    return serve
