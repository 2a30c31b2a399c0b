"""The station's page and its API: served by the station from its own files (no CDN).

GET  /                 the page (streams/static/station/)
GET  /api/state        checkpoints, clock, connection, queue, vehicles here, expected arrivals
GET  /api/events       the same state, live (server-sent events)
POST /api/check        {token?, plate?, checkpoint_id?} or a form with a QR `photo`: GREEN or GREY
POST /api/scan         {kind: arrival|departure, pass_id, plate?, token?, checkpoint_id?}: into the outbox
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

from aiohttp import web

from ..web import html_page, site_url, sse, start_site, stop_site, token_guard
from .link import Station

__all__ = ["make_app", "decode_qr", "announced_url", "run_station", "STATIC"]

STATIC = Path(__file__).parents[1] / "static" / "station"


def decode_qr(image_bytes: bytes) -> str | None:
    """The text of the first QR code in a photo, decoded here (zxing-cpp), None if there is none."""
    import zxingcpp
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes))).convert("L")
    except (UnidentifiedImageError, OSError):
        return None  # not an image: no code in it
    for found in zxingcpp.read_barcodes(image):
        if found.text:
            return found.text
    return None


def make_app(station: Station, *, host: str = "127.0.0.1", token: str | None = None) -> web.Application:
    app = web.Application(middlewares=[token_guard(host, token)], client_max_size=20 * 1024**2)

    async def state(request: web.Request) -> web.Response:
        return web.json_response(station.state())

    async def events(request: web.Request) -> web.StreamResponse:
        return await sse(request, station.hub, first=[("state", station.state())])

    async def check(request: web.Request) -> web.Response:
        form = await _form(request)
        token = form.get("token")
        photo = form.get("photo")
        if photo is not None and not token:
            token = await asyncio.to_thread(decode_qr, photo)
            if token is None:
                return _bad("no QR code found in the photo · 照片中未识别到二维码")
        try:
            return web.json_response(station.check(form.get("checkpoint_id"), token, form.get("plate")))
        except ValueError as exc:
            return _bad(str(exc))

    async def scan(request: web.Request) -> web.Response:
        form = await _form(request)
        try:
            return web.json_response(
                station.scan(
                    form.get("kind"),
                    form.get("checkpoint_id"),
                    form.get("pass_id"),
                    form.get("plate"),
                    form.get("token"),
                )
            )
        except ValueError as exc:
            return _bad(str(exc))

    app.router.add_get("/", html_page(STATIC / "index.html"))
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/events", events)
    app.router.add_post("/api/check", check)
    app.router.add_post("/api/scan", scan)
    app.router.add_static("/static/", STATIC)
    return app


async def _form(request: web.Request) -> dict:
    """A JSON body or a form (a file field as its bytes)."""
    if request.content_type == "application/json":
        body = await request.json()
        return body if isinstance(body, dict) else {}
    out = {}
    for name, value in (await request.post()).items():
        out[name] = value.file.read() if hasattr(value, "file") else (value or None)
    return out


def _bad(text: str) -> web.Response:
    return web.json_response({"error": text}, status=400)


READY = "ready at "  # what a station prints once serving, before its address


def announced_url(log_path: Path, alive, timeout: float = 60) -> str:
    """The address a station process printed to `log_path` once serving (`station … ready at
    URL`). RuntimeError, with the log's end, when it stops (`alive()` false) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while READY not in (text := log_path.read_text(errors="replace") if log_path.exists() else ""):
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the station did not come up; {log_path} ends:\n{text[-3000:]}")
        time.sleep(0.05)  # polling a condition with a deadline
    return text.split(READY, 1)[1].split()[0]


def run_station(
    settings,
    checkpoint_ids: list[str],
    *,
    host: str,
    port: int,
    token: str | None,
    key_paths: list[Path],
    clock_start=None,
) -> int:
    """`greenchannel checkpoint`: the station until SIGINT/SIGTERM; prints its URL once serving."""
    import signal

    from models.policy import load_catalog
    from routing import Gazetteer

    from ..keys import load_keyring
    from .store import Store, station_path

    store = Store(station_path(settings.data_dir, checkpoint_ids), checkpoint_ids, names=Gazetteer.default().name)
    store.cache_keys(load_keyring([p for p in key_paths if p.exists()]))
    keys = store.keyring()  # the keys given now, every key cached before (offline restarts), and the topic's
    if not keys:
        print(
            f"no public key in {', '.join(map(str, key_paths))} nor cached yet: every token is refused until "
            "the workers' key arrives on the keys topic",
            flush=True,
        )
    dwell_target = int(load_catalog(settings.catalog).rules.get("dwell_target_seconds", 900))

    async def serve() -> None:
        station = Station(settings, checkpoint_ids, store, keys, clock_start=clock_start, dwell_target=dwell_target)
        station.start()
        runner = await start_site(make_app(station, host=host, token=token), host, port)
        print(f"station {'+'.join(checkpoint_ids)} {READY}{site_url(host, runner.addresses[0][1], token)}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await stop_site(runner, station.hub)
        await station.stop()

    asyncio.run(serve())
    return 0
