"""The firms' portal: a page served by the gateway (Chinese and English) over the gateway's own API.

- `/` the page, `/portal/…` its script and style, `/static/vendor/…` the vendored ECharts and China
  map the dashboard uses: everything from this machine, no CDN, under a Content-Security-Policy
  without inline script (streams.web.CSP; ECharts' tooltips need inline styles, as the dashboard's).
- `POST /v1/session` trades the firm's API key for a session cookie (streams.gateway.session); the
  page never stores the key. `GET /v1/session` says who is signed in, `DELETE /v1/session` signs out.
- `GET /v1/places?q=` and `GET /v1/cargo?q=`: completions for the form from the gazetteer and the HS
  catalog. Public reference data (the same tables every firm's request is decided by): no key needed.
"""

import functools
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders

from models.policy import load_catalog
from models.store.tables import Firm
from routing import Gazetteer

from ..web import CSP
from .app import Caller, Gateway, Refused, _authenticate, _caller, _client, _not_guessing, within_limit
from .session import COOKIE, SESSION_SECONDS, csrf_refusal

__all__ = ["add_portal", "places", "cargo"]

STATIC = Path(__file__).resolve().parents[1] / "static"
PAGE = STATIC / "portal"
# ECharts writes style attributes into its tooltips and its map's container: 'unsafe-inline' styles
# only (never script), as the operators' dashboard allows.
PORTAL_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
_PAGE_HEADERS = {
    "Content-Security-Policy": PORTAL_CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MAX_RESULTS = 12


class SignIn(BaseModel):
    key: str = Field(max_length=128, description="the firm's API key, gck_<key id>_<secret>")


class SignedIn(BaseModel):
    firm_id: str
    name: str
    acts_for: list[str]
    credit_code: str


class PlaceHit(BaseModel):
    adcode: str
    name: str = Field(description="the full name, e.g. 湖北省武汉市洪山区")
    lat: float
    lon: float
    county: bool = Field(description="a county or a city without counties: what a request's ends must be")


class CargoHit(BaseModel):
    hs_code: str
    label: str
    priority: str
    title: str


def add_portal(app: FastAPI, gateway: Gateway) -> None:
    """Register the page, its assets, the session and the look-ups on the gateway's app."""

    app.add_middleware(PageHeaders)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/portal", StaticFiles(directory=PAGE), name="portal")
    app.mount("/static/vendor", StaticFiles(directory=STATIC / "vendor"), name="vendor")
    _session_routes(app, gateway)
    _lookup_routes(app)


class PageHeaders:
    """The page's security headers on the page and its assets, not on the API (whose /docs loads
    Swagger UI as FastAPI serves it). Plain ASGI: the API's responses, the event stream among them,
    pass through untouched."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/" or path.startswith(("/portal/", "/static/"))):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(_PAGE_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _session_routes(app: FastAPI, gateway: Gateway) -> None:
    Who = Annotated[Caller, Depends(_caller(gateway))]

    @app.post("/v1/session", response_model=SignedIn, tags=["portal"], summary="Sign the portal in with a key")
    async def sign_in(body: SignIn, request: Request) -> JSONResponse:
        """The key is checked and forgotten: the browser gets an HttpOnly session cookie instead."""
        _same_origin(request)
        _not_guessing(gateway, request)
        found = await run_in_threadpool(_authenticate, gateway, body.key)
        if found is None:
            gateway.failed(_client(request))
            raise Refused(401, "unauthorized", "unknown or revoked API key")
        firm, key_id = found
        within_limit(gateway, firm)  # a sign-in is one of the firm's requests
        gateway.sessions.close(request.cookies.get(COOKIE))  # a session of before, if any, ends here
        response = JSONResponse(_signed_in(firm).model_dump())
        response.set_cookie(
            COOKIE,
            gateway.sessions.open(key_id),
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.get("/v1/session", response_model=SignedIn, tags=["portal"], summary="Who is signed in")
    def whoami(who: Who) -> SignedIn:
        with gateway.session() as s:
            firm = s.get(Firm, who.firm_id)
            if firm is None:
                raise Refused(401, "unauthorized", "this firm is no longer registered")
            return _signed_in(firm)

    @app.delete("/v1/session", status_code=204, tags=["portal"], summary="Sign out")
    def sign_out(request: Request) -> Response:
        _same_origin(request)
        gateway.sessions.close(request.cookies.get(COOKIE))
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response


def _same_origin(request: Request) -> None:
    """Sign-in and sign-out come from the portal only: no other page signs a browser in or out."""
    origin = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if (why := csrf_refusal(request.method, request.headers, origin)) is not None:
        raise Refused(403, "forbidden", why)


def _signed_in(firm: Firm) -> SignedIn:
    return SignedIn(firm_id=firm.firm_id, name=firm.name, acts_for=list(firm.acts_for), credit_code=firm.credit_code)


def _lookup_routes(app: FastAPI) -> None:
    @app.get("/v1/places", response_model=list[PlaceHit], tags=["portal"], summary="Places by name or adcode")
    def find_places(
        q: Annotated[str, Query(max_length=64, description="part of a name (洪山) or an adcode prefix")] = "",
        adcode: Annotated[list[str], Query(max_length=64, description="exact adcodes (repeat)")] = [],  # noqa: B006
    ) -> Response:
        hits = [*places_by_code(tuple(adcode[:64])), *places(q.strip())] if adcode else places(q.strip())
        return _cached([h.model_dump() for h in hits])

    @app.get("/v1/cargo", response_model=list[CargoHit], tags=["portal"], summary="Cargo from the HS catalog")
    def find_cargo(q: Annotated[str, Query(max_length=64, description="an HS code prefix or a word")] = "") -> Response:
        return _cached([h.model_dump() for h in cargo(q.strip())])


def _cached(body: list) -> JSONResponse:
    return JSONResponse(body, headers={"Cache-Control": "public, max-age=3600"})


@functools.cache
def _place_index() -> tuple[tuple[PlaceHit, str], ...]:
    g = Gazetteer.default()
    return tuple(
        (PlaceHit(adcode=p.adcode, name=(n := g.name(p.adcode)), lat=p.lat, lon=p.lon, county=g.is_finest(p)), n)
        for p in g.places()
    )


@functools.lru_cache(maxsize=4096)
def places(q: str) -> list[PlaceHit]:
    """Places whose full name contains `q` (or whose adcode starts with it): counties first, then
    the shorter names, MAX_RESULTS at most. Empty for an empty query."""
    if not q:
        return []
    found = [hit for hit, name in _place_index() if (hit.adcode.startswith(q) if q.isdigit() else q in name)]
    found.sort(key=lambda h: (not h.county, not h.name.endswith(q), len(h.name), h.adcode))
    return found[:MAX_RESULTS]


def places_by_code(codes: tuple[str, ...]) -> list[PlaceHit]:
    by_code = {hit.adcode: hit for hit, _ in _place_index()}
    return [by_code[c] for c in codes if c in by_code]


@functools.lru_cache(maxsize=4096)
def cargo(q: str) -> list[CargoHit]:
    """Catalog lines whose HS prefix starts with `q` (dots ignored) or whose label, class or title
    contains it, MAX_RESULTS at most; every line's first few for an empty query."""
    catalog = load_catalog()
    lines = [
        CargoHit(hs_code=prefix, label=label, priority=name, title=c.title)
        for name, c in catalog.classes.items()
        for prefix, label in c.hs_prefixes.items()
    ]
    digits, word = q.replace(".", ""), q.lower()
    if q:
        lines = [
            h
            for h in lines
            if (digits.isdigit() and h.hs_code.startswith(digits))
            or (not digits.isdigit() and (word in h.label.lower() or word in h.title.lower()))
        ]
    lines.sort(key=lambda h: (h.priority, len(h.hs_code), h.hs_code))
    return lines[:MAX_RESULTS]
