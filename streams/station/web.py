"""The station's page and its API: served by the station from its own files (no CDN).

GET  /                 the page (streams/static/station/)
GET  /api/state        checkpoints, clock, connection, queue, vehicles here, expected arrivals
GET  /api/events       the same state, live (server-sent events)
POST /api/check        {token?, plate?, checkpoint_id?, driver_id?} or a form with a QR `photo`: green, check or grey
POST /api/scan         {kind: arrival|departure, pass_id, plate?, token?, checkpoint_id?}: into the outbox
GET  /vendor/zxing/    the in-browser QR reader (zxing-wasm, vendored by scripts/vendor-zxing.sh)
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

from aiohttp import web

from models.records import MAX_ID, MAX_TOKEN

from ..web import CSP, Access, announced, html_page, json_body, secure_app, sse, start_site, stop_site
from .link import Station

__all__ = [
    "make_app",
    "decode_qr",
    "announced_url",
    "run_station",
    "STATIC",
    "PhotoRefused",
    "PHOTO_FORMATS",
    "MAX_PHOTO_BYTES",
    "MAX_PHOTO_PIXELS",
    "MAX_DECODES",
    "STATION_CSP",
    "ZXING",
]

STATIC = Path(__file__).parents[1] / "static" / "station"
ZXING = STATIC.parent / "vendor" / "zxing-wasm-3.1.8"  # the camera's QR reader (make env vendors it)
# The common policy, and 'wasm-unsafe-eval': the camera's QR reader compiles its WebAssembly (from
# this station's own file), which a script-src without it forbids. It allows compiling WebAssembly
# only, not eval of JavaScript. The camera's stream plays through srcObject, which media-src does not
# govern, and the decoding runs on the page's thread: no worker-src, no blob:.
STATION_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'")
PHOTO_FORMATS = ("PNG", "JPEG", "WEBP")  # what a phone or tablet camera saves; Pillow opens no other
MAX_PHOTO_BYTES = 16 * 1024**2  # a 12-Mpx phone JPEG is 3-8 MB
MAX_PHOTO_PIXELS = 40_000_000  # read from the header, before decoding: a 48-Mpx camera's binned 12 Mpx pass
MAX_DECODES = 2  # photos decoded at once (each in a thread); a third upload meanwhile is told to retry
FIELDS = {
    "token": MAX_TOKEN,
    "plate": MAX_ID,
    "checkpoint_id": MAX_ID,
    "pass_id": MAX_ID,
    "kind": MAX_ID,
    "driver_id": MAX_ID,  # the driver's ID number the officer typed: checked here against the pass, kept nowhere
}


class PhotoRefused(ValueError):
    """A photo not opened: its HTTP status (415: not PNG, JPEG or WebP; 413: too many pixels)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def decode_qr(image_bytes: bytes) -> str | None:
    """The text of the first QR code in a photo, decoded here (zxing-cpp), None if there is none.
    PhotoRefused for a photo that is not PNG, JPEG or WebP (told by Pillow from its header, before
    any decoding: no other decoder of Pillow's ever runs) or has more than MAX_PHOTO_PIXELS."""
    import zxingcpp
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(image_bytes), formats=PHOTO_FORMATS)
    except UnidentifiedImageError:
        raise PhotoRefused(415, "a photo must be PNG, JPEG or WebP · 照片须为 PNG、JPEG 或 WebP 格式") from None
    except Image.DecompressionBombError:
        raise PhotoRefused(413, f"the photo has more than {MAX_PHOTO_PIXELS:,} pixels · 照片像素过多") from None
    width, height = image.size
    if width * height > MAX_PHOTO_PIXELS:
        raise PhotoRefused(413, f"the photo has {width}×{height} pixels, more than {MAX_PHOTO_PIXELS:,} · 照片像素过多")
    try:
        image = ImageOps.exif_transpose(image).convert("L")
    except (OSError, ValueError):
        return None  # a broken image: no code in it
    for found in zxingcpp.read_barcodes(image):
        if found.text:
            return found.text
    return None


def make_app(station: Station, access: Access) -> web.Application:
    """The station's page and API behind `access` (streams.web.secure_app): JSON bodies of at most
    64 KiB, but a photo of at most MAX_PHOTO_BYTES, as multipart."""
    app = secure_app(access, csp=STATION_CSP, client_max_size=MAX_PHOTO_BYTES + 64 * 1024)
    decoding = asyncio.Semaphore(MAX_DECODES)

    async def state(request: web.Request) -> web.Response:
        return web.json_response(station.state())

    async def events(request: web.Request) -> web.StreamResponse:
        return await sse(request, station.hub, first=[("state", station.state())])

    async def check(request: web.Request) -> web.Response:
        if request.content_type == "multipart/form-data":
            return await check_photo(request)
        form, token = _check_fields(await json_body(request))
        return _answer(
            lambda: station.check(form.get("checkpoint_id"), token, form.get("plate"), form.get("driver_id"))
        )

    async def check_photo(request: web.Request) -> web.Response:
        if decoding.locked():  # no await between this and taking it: no other upload gets in between
            return _bad(f"{MAX_DECODES} photos are being read: try again · 正在识别其他照片，请重试", 503)
        async with decoding:
            if request.content_length is not None and request.content_length > MAX_PHOTO_BYTES + 64 * 1024:
                return _bad(f"the photo is over {MAX_PHOTO_BYTES // 1024**2} MiB · 照片过大", 413)
            form = await request.post()  # at most client_max_size, else 413
            photo = form.get("photo")
            if not isinstance(photo, web.FileField):
                return _bad("a multipart body is for a QR photo: send its `photo` field, else JSON")
            try:
                token = await asyncio.to_thread(decode_qr, photo.file.read())
            except PhotoRefused as exc:
                return _bad(str(exc), exc.status)
        if token is None:
            return _bad("no QR code found in the photo · 照片中未识别到二维码")
        fields = _fields({k: form.get(k) for k in ("plate", "checkpoint_id", "driver_id")})
        return _answer(
            lambda: station.check(fields.get("checkpoint_id"), token, fields.get("plate"), fields.get("driver_id"))
        )

    async def scan(request: web.Request) -> web.Response:
        form = _fields(await json_body(request))
        return _answer(
            lambda: station.scan(
                form.get("kind"), form.get("checkpoint_id"), form.get("pass_id"), form.get("plate"), form.get("token")
            )
        )

    app.router.add_get("/", html_page(STATIC / "index.html"))
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/events", events)
    app.router.add_post("/api/check", check)
    app.router.add_post("/api/scan", scan)
    app.router.add_static("/static/", STATIC)
    if ZXING.is_dir():  # else the camera says its reader is not installed; the photo upload still works
        app.router.add_static("/vendor/zxing/", ZXING)
    return app


def _check_fields(body: dict) -> tuple[dict, object]:
    """A check's fields, and the token shown: one that is not text is the check's to refuse
    (bad_token), as the worker's, not a 400."""
    shown = body.get("token")
    form = _fields({k: v for k, v in body.items() if k != "token" or isinstance(v, str)})
    return form, form.get("token") if isinstance(shown, str) else shown


def _fields(form) -> dict:
    """The fields the API knows, each a string within the input limits (README "Input limits"):
    HTTPBadRequest naming the first that is not."""
    out = {}
    for name, limit in FIELDS.items():
        value = form.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise web.HTTPBadRequest(text=f"{name} must be a string")
        if len(value) > limit:
            raise web.HTTPBadRequest(text=f"too_long: {name} is longer than {limit} characters · {name} 过长")
        out[name] = value
    return out


def _answer(work) -> web.Response:
    try:
        return web.json_response(work())
    except ValueError as exc:
        return _bad(str(exc))


def _bad(text: str, status: int = 400) -> web.Response:
    return web.json_response({"error": text}, status=status, headers={"Retry-After": "1"} if status == 503 else None)


READY = "ready at "  # what a station prints once serving, before its address


def announced_url(log_path: Path, alive, timeout: float = 60, *, prefix: str = READY) -> str:
    """The address a process printed to `log_path` once serving (a station: `station … ready at
    URL`; another: after its own `prefix`). RuntimeError, with the log's end, when it stops
    (`alive()` false) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while prefix not in (text := log_path.read_text(errors="replace") if log_path.exists() else ""):
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{log_path.stem} did not come up; {log_path} ends:\n{text[-3000:]}")
        time.sleep(0.05)  # polling a condition with a deadline
    return text.split(prefix, 1)[1].split()[0]


def run_station(
    settings,
    checkpoint_ids: list[str],
    *,
    host: str,
    port: int,
    access: Access,
    key_paths: list[Path],
    clock_start=None,
) -> int:
    """`greenchannel checkpoint`: the station until SIGINT/SIGTERM; prints its URL once serving."""
    import signal

    from models.policy import load_catalog
    from routing import Gazetteer

    from ..keys import load_keyring, pinned_root
    from .store import Store, station_path

    store = Store(station_path(settings.data_dir, checkpoint_ids), checkpoint_ids, names=Gazetteer.default().name)
    store.cache_keys(load_keyring([p for p in key_paths if p.exists()]))
    root, _ = pinned_root(settings)  # GC_ROOT_PUBLIC_KEY (--root-public-key): the topic's records must be its
    if root is None:
        print(f"no root public key at {settings.root_public_path}: the keys topic's records are ignored", flush=True)
    keys = store.keyring(root)  # the keys given as files now, and the topic's root-signed records kept
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
        runner = await start_site(make_app(station, access), host, port)
        print(
            f"station {'+'.join(checkpoint_ids)} {READY}{announced(access, host, runner.addresses[0][1])}", flush=True
        )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await stop_site(runner, station.hub)
        await station.stop()

    asyncio.run(serve())
    return 0
