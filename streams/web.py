"""What the station's and the operators' pages share: an aiohttp site that no other web site can
drive, live updates over server-sent events.

**Access** (`Access`, `secure_app`), on every address, loopback too:
- A token is always required. Configured (an environment variable or a file, never the command
  line, which `ps` shows) or made per run and printed once with the page's URL, as Jupyter does.
  The first visit with `?token=…` sets an HttpOnly, SameSite=Strict cookie and redirects to the
  same URL without the token; later requests authenticate by that cookie, API clients by
  `Authorization: Bearer TOKEN`.
- The Host header must name this server (`Access.hosts`; bound to every interface, any IP address
  too): a page of another site cannot read these pages by DNS rebinding.
- A request that changes anything (not GET or HEAD) must come from the page itself: refused when
  `Sec-Fetch-Site` is not same-origin or `Origin` is another origin (or, authenticated by the
  cookie, when it says neither), and its body must be `application/json` or `multipart/form-data`
  (the forms a cross-site page can send without asking, url-encoded and text/plain, are refused).
- Every response carries a Content-Security-Policy without inline script, `frame-ancestors
  'none'` and X-Frame-Options DENY, nosniff, and Referrer-Policy no-referrer.

The pages ship their own assets (no CDN: a border post may be offline), so everything here serves
from the machine it runs on.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import orjson
from aiohttp import web

from models.records import MAX_MESSAGE_BYTES

__all__ = [
    "Access",
    "Hub",
    "is_loopback",
    "read_token",
    "secure_app",
    "json_body",
    "start_site",
    "stop_site",
    "site_url",
    "announced",
    "html_page",
    "sse",
    "CSP",
]

# No inline script anywhere; styles from the page's own files. (The dashboard adds 'unsafe-inline' to
# style-src: ECharts writes style attributes into its tooltips.)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BODY_TYPES = frozenset({"application/json", "multipart/form-data"})  # what a change may send
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(value: str | None, file: Path | None, what: str) -> str | None:
    """The token configured for a page: the first line of `file` if given, else `value`; None when
    neither is (the page then makes one). SystemExit, saying why, for an unreadable or empty file."""
    if file is not None:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"{what}: cannot read the token file {file}: {exc}") from None
        if not value:
            raise SystemExit(f"{what}: the token file {file} is empty")
    return value or None


@dataclass(frozen=True)
class Access:
    """Who may use a page: the token, and the names the Host header may give."""

    token: str
    generated: bool  # made for this run (printed once with the URL) rather than configured
    hosts: frozenset[str]
    any_ip: bool  # bound to every interface: any IP address as the Host too (rebinding needs a name)

    @classmethod
    def for_site(cls, bind: str, token: str | None = None, extra_hosts: str | Iterable[str] = ()) -> Access:
        """Bound to `bind`, with `token` (None: a fresh one); the Host may be the bind address,
        127.0.0.1, localhost, ::1 or one of `extra_hosts` (names or addresses; a string: comma-separated)."""
        if isinstance(extra_hosts, str):
            extra_hosts = extra_hosts.split(",")
        names = {"127.0.0.1", "localhost", "::1", *(_bare(h) for h in extra_hosts if h.strip())}
        if bind not in _WILDCARDS:
            names.add(_bare(bind))
        return cls(
            token=token or secrets.token_urlsafe(32),
            generated=not token,
            hosts=frozenset(names),
            any_ip=bind in _WILDCARDS,
        )

    @property
    def cookie(self) -> str:
        """The cookie's name: its own per token, so that two pages on one host (cookies ignore the
        port) do not overwrite each other's."""
        return "gc_" + hashlib.sha256(b"greenchannel page " + self.token.encode()).hexdigest()[:16]

    def allows_host(self, header: str | None) -> bool:
        name = _host_name(header or "")
        if name is None:
            return False
        if name in self.hosts:
            return True
        if not self.any_ip:
            return False
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def is_token(self, given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode(), self.token.encode())


def _bare(host: str) -> str:
    return host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


def _host_name(header: str) -> str | None:
    """The name in a Host header (`name`, `name:port`, `[v6]`, `[v6]:port`), None if malformed."""
    h = header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        name, rest = h[1:end], h[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        return name
    name, colon, port = h.partition(":")
    if not name or (colon and not port.isdigit()):
        return None
    return name.rstrip(".")


def secure_app(access: Access, *, csp: str = CSP, client_max_size: int = MAX_MESSAGE_BYTES) -> web.Application:
    """An aiohttp application behind `access` (see the module's text), its headers on every response."""
    app = web.Application(middlewares=[_guard(access)], client_max_size=client_max_size)

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Content-Security-Policy"] = csp
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")

    app.on_response_prepare.append(headers)
    return app


def _guard(access: Access):
    @web.middleware
    async def guard(request: web.Request, handler):
        if not access.allows_host(request.headers.get("Host")):
            raise web.HTTPBadRequest(text="this server does not answer to that Host")
        in_url = request.query.get("token")
        if in_url is not None:
            if not access.is_token(in_url) or request.method not in ("GET", "HEAD"):
                raise _unauthorized()
            query = request.rel_url.query.copy()
            query.popall("token")
            found = web.HTTPSeeOther(request.rel_url.with_query(query))
            found.set_cookie(access.cookie, access.token, httponly=True, samesite="Strict", path="/")
            raise found
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            by_bearer = True
            scheme, _, given = authorization.partition(" ")
            if scheme != "Bearer" or not access.is_token(given):
                raise _unauthorized()
        else:
            by_bearer = False
            if not access.is_token(request.cookies.get(access.cookie)):
                raise _unauthorized()
        if request.method not in SAFE_METHODS:
            _same_origin(request, by_bearer)
            if request.content_type not in BODY_TYPES:
                raise web.HTTPUnsupportedMediaType(
                    text=f"{request.content_type} is refused: send application/json (a photo: multipart/form-data)"
                )
        return await handler(request)

    return guard


def _unauthorized() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text="a token is required: open the address the server printed (…/?token=…) once, "
        "or send Authorization: Bearer TOKEN",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _same_origin(request: web.Request, by_bearer: bool) -> None:
    """A change must come from this page: refused from another site, or from a page that says
    nothing of where it comes from yet rides on the cookie (an API client sends the token itself)."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if site is not None and site != "same-origin":
        raise web.HTTPForbidden(text=f"refused: a {site} request (Sec-Fetch-Site) may not change anything here")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != request.headers["Host"].strip().lower():
            raise web.HTTPForbidden(text=f"refused: a request from {origin} may not change anything here")
    if site is None and origin is None and not by_bearer:
        raise web.HTTPForbidden(text="refused: a change needs an Origin of this page, or Authorization: Bearer")


async def json_body(request: web.Request, limit: int = MAX_MESSAGE_BYTES) -> dict:
    """The request's JSON object, at most `limit` bytes: 415 for another content type, 413 when
    larger, 400 when not a JSON object."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send application/json")
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text="the body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def _too_large(limit: int) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=limit + 1, text=f"the body is over {limit} bytes")


async def start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `app` on host:port until the returned runner is cleaned up. Port 0 picks one:
    the bound port is `runner.addresses[0][1]`."""
    # handler_cancellation: a page that goes away ends its event stream at once.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def stop_site(runner: web.AppRunner, *hubs: Hub) -> None:
    """Shut the site down: the hubs' open event streams first, which open pages would otherwise
    hold up until the shutdown timeout."""
    for hub in hubs:
        hub.close()
    await runner.cleanup()


def site_url(host: str, port: int, token: str | None = None) -> str:
    """The address to open a page served on host:port, with `?token=…` when a token is given."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={quote(token)}" if token else "")


def announced(access: Access, host: str, port: int) -> str:
    """What a page prints once serving: its URL with the token made for this run (printed this once,
    as Jupyter does), or, the token being configured, the URL alone (and how to open it)."""
    if access.generated:
        return site_url(host, port, access.token)
    return site_url(host, port) + " (open it once with ?token=<the configured token>)"


def html_page(path: Path):
    """A handler serving the HTML file `path` (read once)."""
    text = path.read_text(encoding="utf-8")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/html")

    return page


class Hub:
    """Fans live events out to every open page. A page that falls `limit` events behind is
    dropped (its EventSource reconnects and reloads its state) rather than slowing the others."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self._queues: set[asyncio.Queue] = set()

    def publish(self, kind: str, data: dict | list) -> None:
        frame = _frame(kind, data)
        for queue in list(self._queues):
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:  # too slow: empty it and tell its stream to end
                self._drop(queue)

    def close(self) -> None:
        """End every open stream: before the site shuts down, which an open page would hold up."""
        for queue in list(self._queues):
            self._drop(queue)

    def _drop(self, queue: asyncio.Queue) -> None:
        self._queues.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(self.limit)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._queues.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._queues)


def _frame(kind: str, data: dict | list) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def sse(request: web.Request, hub: Hub, first: Iterable[tuple[str, dict | list]] = ()) -> web.StreamResponse:
    """A text/event-stream response: the `first` events, then whatever `hub` publishes, until
    the page goes away. A comment line every 15 s keeps proxies from closing it."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    queue = hub.subscribe()
    try:
        for kind, data in first:
            await response.write(_frame(kind, data))
        while True:
            try:
                frame = await asyncio.wait_for(queue.get(), 15)
            except TimeoutError:
                frame = b": keep-alive\n\n"
            if frame is None:  # dropped for falling behind
                break
            await response.write(frame)
    except ConnectionResetError:  # the page went away
        pass
    finally:
        hub.unsubscribe(queue)
    return response
