"""What the station's and the operators' pages share: an aiohttp site, live updates over
server-sent events, and the rule that a page bound beyond loopback asks for a token.

The pages ship their own assets (no CDN: a border post may be offline), so everything here
serves from the machine it runs on.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import secrets
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, urlencode

import orjson
from aiohttp import web

__all__ = ["Hub", "is_loopback", "token_guard", "start_site", "stop_site", "site_url", "html_page", "sse"]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_guard(host: str, token: str | None):
    """A middleware that, when `host` is not loopback, wants `token` on every request: as
    `Authorization: Bearer TOKEN`, or `?token=TOKEN` (for the browser's first visit and for
    EventSource, which sends no headers). Bound to loopback it lets everything through.

    Raises ValueError when bound beyond loopback without a token: an open page there would let
    anyone on the network in."""
    if is_loopback(host):
        token = None
    elif not token:
        raise ValueError(f"bound to {host}, beyond loopback: set a token (e.g. --token or its GC_ setting)")

    @web.middleware
    async def guard(request: web.Request, handler):
        if token is not None:
            given = request.query.get("token") or request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not secrets.compare_digest(given.encode(), token.encode()):
                raise web.HTTPUnauthorized(text="a token is required: ?token=… or Authorization: Bearer …")
        return await handler(request)

    return guard


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


def site_url(host: str, port: int, token: str | None) -> str:
    """The address to open a page served on host:port; beyond loopback it carries the token."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={quote(token)}" if token and not is_loopback(host) else "")


def html_page(path: Path):
    """A handler serving the HTML file `path` (read once). Each `{{query}}` in it, after an asset's
    URL, becomes the `?token=…` the page was opened with: beyond loopback the assets need it too."""
    text = path.read_text(encoding="utf-8")

    async def page(request: web.Request) -> web.Response:
        given = request.query.get("token")
        query = "?" + urlencode({"token": given}) if given else ""
        return web.Response(text=text.replace("{{query}}", html.escape(query)), content_type="text/html")

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
