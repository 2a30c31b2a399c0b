"""The station's page refuses what it must before anything is recorded or decoded: scans over the
input limits, photos of another format or too many pixels, more decodes at once than its cap; and its
forwarder sets aside an outbox item that can never be sent and goes on with the queue. No broker:
the station's own store, its app served for real, a stand-in producer."""

from __future__ import annotations

import asyncio
import io
import threading
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession, FormData
from aiokafka.errors import MessageSizeTooLargeError, TopicAuthorizationFailedError
from PIL import Image

from models.records import MAX_TOKEN
from streams.keys import key_id
from streams.settings import Settings
from streams.station import web as station_web
from streams.station.link import Station
from streams.station.store import Store
from streams.web import Access, start_site, stop_site
from tests.support.factories import (
    DEPARTURE,
    KEY,
    SIGNER,
    decision_of,
    legacy_token_of,
    make_tracker,
    until,
    wuhan_to_guangzhou,
)
from tests.unit.test_web import assert_secure_headers

KEYS = {key_id(KEY.public_key()): KEY.public_key()}
BEARER = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def the_pass():
    return wuhan_to_guangzhou(make_tracker(SIGNER, KEYS), priority="P0", trip="single")


@pytest.fixture
def station(the_pass, tmp_path):
    here = the_pass.checkpoint_ids[0]
    store = Store(tmp_path / "station.db", [here])
    store.take_decision(decision_of(the_pass))
    return Station(Settings(_env_file=None), [here], store, KEYS, clock_start=DEPARTURE + timedelta(hours=4))


@pytest.fixture
async def url(station):
    runner = await start_site(station_web.make_app(station, Access.for_site("127.0.0.1", "s3cret")), "127.0.0.1", 0)
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    await stop_site(runner, station.hub)


def recorded(station: Station) -> int:
    return station.store.db.execute("SELECT count(*) FROM outbox").fetchone()[0]


def image_bytes(size: tuple[int, int], fmt: str, mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, fmt)
    return out.getvalue()


def photo_form(data: bytes, name: str = "qr.png") -> FormData:
    form = FormData()
    form.add_field("photo", data, filename=name)
    return form


# --- input limits, before anything is recorded ------------------------------------------------------
async def test_an_oversized_token_or_plate_is_refused_and_nothing_recorded(station, the_pass, url):
    scan = {"kind": "arrival", "pass_id": the_pass.pass_id, "plate": the_pass.plate}
    async with ClientSession() as http:
        for too_big in ({"token": "e" * (MAX_TOKEN + 1)}, {"plate": "浙" * 129}, {"pass_id": "1" * 129}):
            answer = await http.post(url + "api/scan", json={**scan, **too_big}, headers=BEARER)
            assert answer.status == 400 and "too_long" in await answer.text()
        answer = await http.post(url + "api/check", json={"token": "e" * (MAX_TOKEN + 1)}, headers=BEARER)
        assert answer.status == 400 and "too_long: token" in await answer.text()
        answer = await http.post(url + "api/scan", json={**scan, "token": "e" * 70_000}, headers=BEARER)
        assert answer.status == 413  # the body itself is over the 64 KiB of a message
        for wrong in ({"pass_id": ["330106000001"]}, {"plate": {"a": 1}}, {"pass_id": "not-12-digits"}):
            answer = await http.post(url + "api/scan", json={**scan, **wrong}, headers=BEARER)
            assert answer.status == 400, wrong
        assert recorded(station) == 0
        fine = await http.post(url + "api/scan", json=scan, headers=BEARER)
        assert fine.status == 200, await fine.text()
    assert recorded(station) == 1 and station.store.queued() == 1


async def test_a_token_that_is_not_text_or_mistyped_is_a_grey_bad_token_never_a_500(station, the_pass, url):
    """Issue 24, measured: a token whose kid was a JSON list was answered HTTP 500."""
    mistyped = legacy_token_of(the_pass, kid=["x"])
    async with ClientSession() as http:
        for token in (["kid"], {"kid": ["x"]}, 42, mistyped):
            answer = await http.post(url + "api/check", json={"token": token, "plate": the_pass.plate}, headers=BEARER)
            assert answer.status == 200, await answer.text()
            body = await answer.json()
            assert (body["verdict"], body["green"]) == ("grey", False) and body["reason"].startswith("bad_token: ")
        plate_only = await http.post(url + "api/check", json={"plate": the_pass.plate}, headers=BEARER)
        assert (await plate_only.json())["verdict"] == "check"


def test_the_station_itself_refuses_a_scan_over_the_limits(station, the_pass):
    """Whoever calls it, not only the page: the worker's own rules (models.records.parse_scan)."""
    with pytest.raises(ValueError, match="too_long: token"):
        station.scan("arrival", None, the_pass.pass_id, the_pass.plate, "e" * (MAX_TOKEN + 1))
    with pytest.raises(ValueError, match="must be a string"):
        station.scan("arrival", None, the_pass.pass_id, the_pass.plate, ["a", "list"])
    assert recorded(station) == 0


async def test_the_cross_origin_form_of_the_issue_is_not_recorded(station, the_pass, url):
    """Issue 24, measured: a form POST from another site to /api/scan was recorded and published."""
    form = f"kind=arrival&pass_id={the_pass.pass_id}&plate=x"
    async with ClientSession() as http:
        as_a_browser = {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"}
        assert (await http.post(url + "api/scan", data=form, headers=as_a_browser)).status == 401  # no cookie sent
        with_cookie = {**as_a_browser, "Cookie": f"{Access.for_site('127.0.0.1', 's3cret').cookie}=s3cret"}
        assert (await http.post(url + "api/scan", data=form, headers=with_cookie)).status == 403
        same_origin = {**with_cookie, "Origin": url[:-1]}
        assert (await http.post(url + "api/scan", data=form, headers=same_origin)).status == 415
    assert recorded(station) == 0


STATION_SCRIPT = ("'self'", "'wasm-unsafe-eval'")  # the camera's QR reader compiles WebAssembly, no eval


async def test_the_station_page_sends_the_security_headers(url):
    async with ClientSession() as http:
        for path in ("", "api/state", "static/station.js", "static/station.css"):
            answer = await http.get(url + path, headers=BEARER)
            assert answer.status == 200, path
            assert_secure_headers(answer, STATION_SCRIPT)
            assert "'unsafe-inline'" not in answer.headers["Content-Security-Policy"]  # styles too
        page = await (await http.get(url, headers=BEARER)).text()
        assert "<script>" not in page and "style=" not in page
        assert_secure_headers(await http.get(url + "api/state"), STATION_SCRIPT)  # 401


@pytest.mark.skipif(not station_web.ZXING.is_dir(), reason="zxing-wasm not vendored: make env")
async def test_the_station_serves_its_own_qr_reader(url):
    """The camera's reader comes from the station (no CDN), its WebAssembly as application/wasm,
    which the browser compiles as it streams in."""
    async with ClientSession() as http:
        wasm = await http.get(url + "vendor/zxing/zxing_reader.wasm", headers=BEARER)
        assert wasm.status == 200 and wasm.content_type == "application/wasm"
        assert (await wasm.read())[:4] == b"\0asm"
        script = await http.get(url + "vendor/zxing/zxing-reader.js", headers=BEARER)
        assert script.status == 200 and "ZXingWASM" in await script.text()
        assert_secure_headers(script, STATION_SCRIPT)


# --- photos ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "name"),
    [
        (image_bytes((64, 64), "GIF", "P"), "qr.gif"),
        (image_bytes((64, 64), "BMP"), "qr.bmp"),
        (image_bytes((64, 64), "TIFF"), "qr.tiff"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n", "qr.eps"),  # Ghostscript, where installed
        (b"not an image at all", "qr.png"),
    ],
)
async def test_a_photo_other_than_png_jpeg_or_webp_is_refused(url, data, name):
    async with ClientSession() as http:
        answer = await http.post(url + "api/check", data=photo_form(data, name), headers=BEARER)
        assert answer.status == 415 and "PNG, JPEG or WebP" in (await answer.json())["error"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_are_opened(fmt):
    assert station_web.decode_qr(image_bytes((64, 64), fmt)) is None  # opened, no code in it


async def test_a_photo_of_too_many_pixels_is_refused_before_decoding(url, monkeypatch):
    decoded = []
    monkeypatch.setattr("zxingcpp.read_barcodes", lambda image: decoded.append(image) or [])
    big = image_bytes((8000, 6000), "PNG", "1")  # 48 Mpx, a few KB
    assert len(big) < 1024**2
    async with ClientSession() as http:
        answer = await http.post(url + "api/check", data=photo_form(big), headers=BEARER)
        assert answer.status == 413 and "8000×6000" in (await answer.json())["error"]
        assert decoded == []
        within = image_bytes((6000, 6000), "PNG", "1")  # 36 Mpx: decoded
        answer = await http.post(url + "api/check", data=photo_form(within), headers=BEARER)
        assert answer.status == 400 and len(decoded) == 1  # no QR code in it


async def test_a_photo_body_over_the_limit_is_refused(url, monkeypatch):
    monkeypatch.setattr(station_web, "decode_qr", lambda data: pytest.fail("decoded a photo over the limit"))
    async with ClientSession() as http:
        answer = await http.post(
            url + "api/check", data=photo_form(b"\0" * (station_web.MAX_PHOTO_BYTES + 70_000)), headers=BEARER
        )
        assert answer.status == 413


async def test_a_multipart_body_is_only_for_a_photo(url):
    form = FormData()
    form.add_field("token", "eyJ")
    form.add_field("plate", "浙A12345")
    form.add_field("blob", b"x", filename="x.bin")
    async with ClientSession() as http:
        answer = await http.post(url + "api/check", data=form, headers=BEARER)
        assert answer.status == 400 and "photo" in (await answer.json())["error"]
        scan = FormData()
        scan.add_field("photo", b"x", filename="x.png")
        assert (await http.post(url + "api/scan", data=scan, headers=BEARER)).status == 415


async def test_at_most_max_decodes_photos_are_decoded_at_once(url, monkeypatch):
    release, inside = threading.Event(), []

    def slow_decode(data: bytes):
        inside.append(data)
        assert release.wait(60)
        return None

    monkeypatch.setattr(station_web, "decode_qr", slow_decode)
    async with ClientSession() as http:

        async def upload():
            async with http.post(url + "api/check", data=photo_form(b"photo"), headers=BEARER) as answer:
                return answer.status, answer.headers.get("Retry-After")

        first = [asyncio.create_task(upload()) for _ in range(station_web.MAX_DECODES)]
        try:
            await until(lambda: len(inside) == station_web.MAX_DECODES, 30, "the uploads being decoded")
            assert await upload() == (503, "1")
        finally:
            release.set()
        assert [(await t)[0] for t in first] == [400] * station_web.MAX_DECODES  # decoded: no code found
        assert len(inside) == station_web.MAX_DECODES
        assert (await upload())[0] == 400  # a free slot again


# --- the outbox: what can never be sent is set aside --------------------------------------------------
class Producer:
    """What the forwarder needs of an AIOKafkaProducer: refuses a scan whose plate says so as too
    large (as a broker does), or every scan as unauthorised (the whole station's problem)."""

    sent: list[dict] = []
    deny_all = False

    def __init__(self, **kwargs) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send_and_wait(self, topic, value, key=None, headers=None):
        body = orjson.loads(value)
        if Producer.deny_all:
            raise TopicAuthorizationFailedError(topic)
        if body["plate"] == "浙Z99999":
            raise MessageSizeTooLargeError("The message is 2000000 bytes when serialized")
        Producer.sent.append(body)


async def test_a_scan_that_can_never_be_sent_is_set_aside_and_the_queue_moves_on(station, the_pass, monkeypatch):
    monkeypatch.setattr(Producer, "sent", [])
    monkeypatch.setattr(Station, "producer", Producer)
    here = station.ids[0]
    # Recorded by a station before it checked the limits: a 20 kB token (the worker would dead-letter it).
    old = {
        "scan_id": f"{here}-old",
        "checkpoint_id": here,
        "pass_id": the_pass.pass_id,
        "plate": the_pass.plate,
        "kind": "arrival",
        "scanned_at": "2020-02-25T10:00:00Z",
        "token": "e" * 20_000,
    }
    station.store.record(old)
    first = station.scan("arrival", here, the_pass.pass_id, the_pass.plate)
    refused = station.scan("departure", here, the_pass.pass_id, "浙Z99999")
    last = station.scan("departure", here, the_pass.pass_id, the_pass.plate)
    forwarder = asyncio.create_task(station._forward())
    try:
        await until(lambda: station.store.queued() == 0, 30, "the outbox to drain")
    finally:
        forwarder.cancel()
        await asyncio.gather(forwarder, return_exceptions=True)
    assert [s["scan_id"] for s in Producer.sent] == [first["scan_id"], last["scan_id"]]  # in order, once each
    aside = {s["scan_id"]: s["reason"] for s in station.state()["set_aside"]}
    assert set(aside) == {old["scan_id"], refused["scan_id"]}
    assert aside[old["scan_id"]].startswith("refused by the input limits: too_long: token")
    assert aside[refused["scan_id"]].startswith("MessageSizeTooLargeError")
    shown = {r["scan_id"]: r for r in station.state()["recent"]}
    assert shown[refused["scan_id"]]["set_aside"] and not shown[refused["scan_id"]]["sent"]
    assert shown[last["scan_id"]]["sent"] and shown[last["scan_id"]]["set_aside"] is None
    # Still set aside after a restart: the head of the queue is the next scan, not these.
    again = Store(Path(station.store.db.execute("PRAGMA database_list").fetchone()["file"]), station.ids)
    assert again.next_unsent() is None and len(again.set_aside_scans()) == 2


async def test_an_error_of_the_whole_station_keeps_the_scan_at_the_head(station, the_pass, monkeypatch):
    """Credentials or ACLs refused concern every scan alike: none is set aside, the page says why."""
    monkeypatch.setattr(Producer, "sent", [])
    monkeypatch.setattr(Producer, "deny_all", True)
    monkeypatch.setattr(Station, "producer", Producer)
    station.scan("arrival", None, the_pass.pass_id, the_pass.plate)
    forwarder = asyncio.create_task(station._forward())
    try:
        await until(lambda: "TopicAuthorizationFailedError" in (station.link.error or ""), 30, "the refusal shown")
    finally:
        forwarder.cancel()
        await asyncio.gather(forwarder, return_exceptions=True)
    assert station.store.queued() == 1 and station.state()["set_aside"] == [] and Producer.sent == []
