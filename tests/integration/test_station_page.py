"""The checkpoint station's page in a real browser (Debian Chromium through Playwright), against a
station process connected to the running system: its passes come from the worker's decisions and
status events, its scans go to the worker and are answered.

All passes here run 杭州市西湖区 (330106) → 新余市渝水区 (360502) from a quarter of an hour ago, so
they are valid now; the station is the route's first checkpoint (the Zhejiang–Anhui border).
Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from PIL import Image

from models.passes import kafka_partition
from models.records import format_time
from streams.station.store import Store, station_path
from tests.support.browser import ARTIFACTS, CHROMIUM, wait_for_js, watched_page
from tests.support.camera import camera_flags, write_y4m
from tests.support.factories import STATION_SCENARIO as SCENARIO
from tests.support.factories import STATION_TIMEOUT as TIMEOUT
from tests.support.factories import decided, forged, handled, load_key_enterprises
from tests.support.factories import station_request as a_request
from tests.support.system import PARTITIONS, ROOT, StationProcess, free_port, start_station, stop_processes


@dataclass
class World:
    station: StationProcess
    checkpoint_id: str
    first: dict  # a P0 decision the station knew from its start


@pytest.fixture(scope="module")
def system(own_system):
    """This module's own topics: the risk change and the requests of today it sends stay out of
    the shared log, which the replay tests audit whole."""
    return own_system


@pytest.fixture(scope="module")
async def world(system, tmp_path_factory):
    first = await decided(system, a_request("P0"))
    checkpoint_id = first["pass"]["route"]["checkpoints"][0]["checkpoint_id"]
    station = start_station(system.env, tmp_path_factory.mktemp("station"), [checkpoint_id], system.public_key_path)
    try:
        station.ready()
        await until_known(station, first["pass"]["pass_id"])
        yield World(station, checkpoint_id, first)
    finally:
        stop_processes([station.proc])


async def until_known(station: StationProcess, pass_id: str) -> None:
    """Wait until the station has read the pass from the decisions topic."""
    deadline = time.monotonic() + TIMEOUT
    async with station.session() as http:
        while True:
            async with http.get(station.url + "api/state") as r:
                assert r.status == 200, await r.text()
                if any(a["pass_id"] == pass_id for a in (await r.json())["arrivals"]):
                    return
            assert time.monotonic() < deadline, f"the station never read pass {pass_id}"
            await asyncio.sleep(0.1)  # polling a condition with a deadline


async def open_station(page, world: World) -> None:
    """As a person does: the address the station printed, with its token, which the page trades for
    its cookie (the address bar then shows no token)."""
    await page.goto(world.station.first_visit)
    assert page.url == world.station.url
    await page.wait_for_selector("#link.online", timeout=TIMEOUT * 1000)


async def check(
    page, token: str | None = None, plate: str | None = None, photo: Path | None = None, driver_id: str = ""
) -> None:
    await page.fill("#token", token or "")
    await page.fill("#plate", plate or "")
    await page.fill("#driver_id", driver_id)
    if photo:
        await page.set_input_files("#photo", str(photo))
    await page.click("#check")
    await page.wait_for_selector("#card.green, #card.grey, #card.check")


async def test_the_expected_arrivals_fill_as_decisions_arrive(page, world, system):
    await open_station(page, world)
    await page.wait_for_selector(f"#arrivals tr[data-pass='{world.first['pass']['pass_id']}']", timeout=TIMEOUT * 1000)
    later = await decided(system, a_request("P1"))
    row = await page.wait_for_selector(f"#arrivals tr[data-pass='{later['pass']['pass_id']}']", timeout=TIMEOUT * 1000)
    assert later["pass"]["plate"] in await row.inner_text()
    assert "江西省新余市渝水区" in await row.inner_text()


async def test_a_valid_pass_is_green_with_its_class_toll_mark_and_route(page, world):
    await open_station(page, world)
    the_pass = world.first["pass"]
    await check(page, the_pass["token"], the_pass["plate"])
    card = page.locator("#card")
    assert await card.get_attribute("class") == "card green"
    text = await card.inner_text()
    assert "放行" in text and "不予放行" not in text
    assert "三不一优先" in text and "P0" in text and the_pass["pass_id"] in text
    assert "医疗防护物资" in text  # the class's name, as the printed pass gives it
    assert await page.locator("#card .route li.here").inner_text() == the_pass["route"]["checkpoints"][0]["name"]


async def test_a_plate_with_no_qr_shown_is_to_be_checked_never_green(page, world):
    """待核验: the pass of a listed plate, no QR shown: a cloned plate looks the same, so the officer
    checks the driver's ID and calls in (amber, never GREEN)."""
    await open_station(page, world)
    the_pass = world.first["pass"]
    await check(page, plate=the_pass["plate"])
    card = page.locator("#card")
    assert await card.get_attribute("class") == "card check"
    text = await card.inner_text()
    assert "待核验" in text and "CHECK ID" in text and "CLEARED" not in text
    assert "check the driver's ID and call in" in await page.locator("#reason-en").inner_text()
    await page.screenshot(path=str(ARTIFACTS / "station-no-qr-shown.png"), full_page=True)


async def test_the_driver_s_id_typed_is_checked_against_the_pass(page, world, system):
    """人车证一致: the ID the officer types is hashed here and compared with the pass's signed binding."""
    request = a_request("P0")
    decision = await decided(system, request)
    await until_known(world.station, decision["pass"]["pass_id"])
    await open_station(page, world)
    the_pass, id_number = decision["pass"], request["driver"]["id_number"]
    await check(page, the_pass["token"], the_pass["plate"], driver_id=id_number)
    assert await page.locator("#card").get_attribute("class") == "card green"
    assert "driver: the ID matches the pass" in await page.locator("#driver").inner_text()
    await page.screenshot(path=str(ARTIFACTS / "station-driver-matched.png"), full_page=True)
    other = id_number[:-1] + ("0" if id_number[-1] != "0" else "1")
    await check(page, the_pass["token"], the_pass["plate"], driver_id=other)
    assert await page.locator("#card").get_attribute("class") == "card grey"
    assert "does not match" in await page.locator("#driver").inner_text()


def printed_pass(decision: dict, folder: Path) -> Path:
    """The pass's page as `greenchannel pass print` makes it (a PNG), from the worker's decision."""
    (folder / "decision.json").write_bytes(orjson.dumps(decision))
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "pass",
            "print",
            decision["pass"]["pass_id"],
            "--png",
            str(folder / "pass.png"),
            "--from-decision",
            str(folder / "decision.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stderr
    return folder / "pass.png"


async def test_a_printed_pass_photographed_is_green(page, world, tmp_path):
    the_pass = world.first["pass"]
    photo = printed_pass(world.first, tmp_path)
    await open_station(page, world)
    await check(page, plate=the_pass["plate"], photo=photo)
    assert await page.locator("#card").get_attribute("class") == "card green"
    assert the_pass["pass_id"] in await page.locator("#card").inner_text()


@contextlib.asynccontextmanager
async def filming(chromium, video: Path, name: str):
    """A page of a Chromium whose camera films `video` (allowed without asking), its screenshot
    going to tests/artifacts/NAME.png; fails, as the `page` fixture does, if the page broke its CSP."""
    browser = await chromium.browser_type.launch(
        executable_path=str(CHROMIUM), args=["--no-sandbox", *camera_flags(video)]
    )
    try:
        async with watched_page(browser, ARTIFACTS / f"{name}.png") as pg:
            yield pg
    finally:
        await browser.close()


async def test_the_camera_reads_a_printed_pass_and_checks_it(chromium, world, tmp_path):
    """The officer types the plate and points the camera at the printed pass: the page reads the QR
    in the browser (zxing-wasm here: Chromium on Linux has no BarcodeDetector), checks it as a typed
    token and stops the camera."""
    the_pass = world.first["pass"]
    video = write_y4m(printed_pass(world.first, tmp_path), tmp_path / "pass.y4m")
    async with filming(chromium, video, "station-camera-read") as page:
        await open_station(page, world)
        await page.fill("#plate", the_pass["plate"])
        started = time.monotonic()
        await page.click("#camera-start")
        await page.wait_for_selector("#card.green, #card.grey", timeout=TIMEOUT * 1000)
        reader = await page.evaluate("document.body.dataset.reader")
        print(f"\ncamera: QR read by {reader} and checked in {time.monotonic() - started:.2f} s")
        has_detector = await page.evaluate("'BarcodeDetector' in window")
        assert reader == ("BarcodeDetector" if has_detector else "zxing-wasm")
        assert await page.locator("#card").get_attribute("class") == "card green"
        assert the_pass["pass_id"] in await page.locator("#card").inner_text()
        assert await page.input_value("#token") == the_pass["token"]  # read whole, from the camera
        # The camera stopped once the code was read: its tracks ended, its picture hidden.
        assert await page.evaluate("document.body.dataset.camera") == "off"
        assert await page.evaluate("document.querySelector('#camera').srcObject") is None
        assert await page.locator("#camera").is_hidden()


async def test_the_camera_films_until_the_officer_stops_it(chromium, world, tmp_path):
    """A camera that sees no QR keeps filming, its picture shown, until 停止 Stop."""
    blank = tmp_path / "blank.png"
    Image.new("RGB", (640, 480), (240, 240, 235)).save(blank)
    async with filming(chromium, write_y4m(blank, tmp_path / "blank.y4m", size=(640, 480)), "station-camera") as page:
        await open_station(page, world)
        await page.click("#camera-start")
        await page.wait_for_selector("#camera:not([hidden])")
        await wait_for_js(page, "document.querySelector('#camera').videoWidth === 640")
        await page.screenshot(path=str(ARTIFACTS / "station-camera-filming.png"), full_page=True)
        await page.click("#camera-stop")
        assert await page.evaluate("document.body.dataset.camera") == "off"
        assert await page.locator("#camera").is_hidden()
        assert await page.locator("#card").get_attribute("class") == "card empty"


async def test_a_forged_token_is_grey_with_the_reason(page, world):
    the_pass = world.first["pass"]
    await open_station(page, world)
    await check(page, forged(the_pass["token"]), the_pass["plate"])
    assert await page.locator("#card").get_attribute("class") == "card grey"
    assert "不予放行" in await page.locator("#card .verdict").inner_text()
    assert "签名无效" in await page.locator("#reason-zh").inner_text()
    assert "signature does not verify" in await page.locator("#reason-en").inner_text()


async def test_a_plate_that_does_not_match_is_grey(page, world):
    the_pass = world.first["pass"]
    await open_station(page, world)
    await check(page, the_pass["token"], "浙Z00001")
    assert await page.locator("#card").get_attribute("class") == "card grey"
    assert "车牌与通行证不符" in await page.locator("#reason-zh").inner_text()
    assert "plate does not match" in await page.locator("#reason-en").inner_text()


async def test_a_pass_suspended_by_a_risk_change_is_grey(page, world, system):
    await load_key_enterprises(system, SCENARIO, lambda n: a_request("P2"))
    key_industry = await decided(system, a_request("P2"))
    pass_id = key_industry["pass"]["pass_id"]
    await open_station(page, world)
    await page.wait_for_selector(f"#arrivals tr[data-pass='{pass_id}']", timeout=TIMEOUT * 1000)
    await check(page, key_industry["pass"]["token"], key_industry["pass"]["plate"])
    assert await page.locator("#card").get_attribute("class") == "card green"
    # The destination's prefecture becomes high risk: a P2 pass may not go there any more.
    at = format_time(datetime.now(UTC))
    await system.send(system.topics.risk, {"adcode": "3605", "level": "high", "effective_at": at}, key="3605")
    try:
        await system.tap.wait_for(
            system.topics.status,
            lambda m: m.key == pass_id.encode() and m.json["status"] == "suspended",
            timeout=TIMEOUT,
        )
        # The station saw it when the pass leaves its expected arrivals (a live update).
        await page.wait_for_selector(f"#arrivals tr[data-pass='{pass_id}']", state="detached", timeout=TIMEOUT * 1000)
        await check(page, key_industry["pass"]["token"], key_industry["pass"]["plate"])
        assert await page.locator("#card").get_attribute("class") == "card grey"
        assert "暂停" in await page.locator("#reason-zh").inner_text()
        assert "suspended" in await page.locator("#reason-en").inner_text()
    finally:
        low = format_time(datetime.now(UTC) + timedelta(seconds=1))
        await system.send(system.topics.risk, {"adcode": "3605", "level": "low", "effective_at": low}, key="3605")


async def test_arrival_then_departure_shows_the_dwell_and_the_system_answers(page, world, system):
    the_pass = world.first["pass"]
    await open_station(page, world)
    await check(page, the_pass["token"], the_pass["plate"])
    await page.click("#arrive")
    here = page.locator(f"#present li[data-pass='{the_pass['pass_id']}']")
    await here.wait_for()
    # The dwell timer runs: wait until it has counted two seconds.
    await wait_for_js(
        page, f"document.querySelector(\"#present li[data-pass='{the_pass['pass_id']}'] .timer\").textContent >= '0:02'"
    )
    await page.screenshot(path=str(ARTIFACTS / "station-vehicle-at-checkpoint.png"), full_page=True)
    await here.locator("button.depart").click()
    await page.wait_for_selector("#departed:not([hidden])")
    shown = float(await page.locator("#departed").get_attribute("data-dwell"))
    assert shown >= 2 and "停留 dwell 0:0" in await page.locator("#departed").inner_text()
    await here.wait_for(state="detached")

    def departure_answer(m) -> bool:
        return (
            m.key == the_pass["pass_id"].encode()
            and m.json["cause"].startswith(f"scan:{world.checkpoint_id}-")
            and m.json["status"] == "in_transit"
        )

    await system.tap.wait_for(system.topics.status, departure_answer, timeout=TIMEOUT)
    # The page hears the answers too: both scans sent, the departure answered in transit.
    await page.wait_for_selector("#recent li:first-child:has-text('in_transit')", timeout=TIMEOUT * 1000)
    assert await page.locator("#recent li .queued").count() == 0
    # Answered once: with nothing queued at the station, every scan it sent is on the pass's
    # partition of the scans topic, and once a marker behind them is dead-lettered a second
    # answer would be out too.
    home = kafka_partition(the_pass["pass_id"].encode(), PARTITIONS)
    await handled(system, system.topics.scans, [home], TIMEOUT)
    answers = system.tap.where(system.topics.status, departure_answer)
    assert len(answers) == 1 and answers[0].json["dwell_seconds"] == pytest.approx(shown, abs=0.2)
    assert answers[0].json["checkpoint_id"] == world.checkpoint_id


async def test_a_station_without_a_key_file_verifies_with_the_key_the_worker_published(world, system, tmp_path):
    """The worker publishes its public key on the keys topic; a station given no key file takes it from there."""
    station = start_station(system.env, tmp_path, [world.checkpoint_id], tmp_path / "no-such-key.pub").ready()
    the_pass = world.first["pass"]
    try:
        assert "every token is refused until" in station.log_path.read_text()
        deadline = time.monotonic() + TIMEOUT
        async with station.session() as http:
            while True:
                async with http.post(
                    station.url + "api/check", json={"token": the_pass["token"], "plate": the_pass["plate"]}
                ) as r:
                    answer = await r.json()
                if answer["green"]:
                    break
                # Before the key: refused as unknown. Between the key and the pass's decision (two
                # topics, read side by side): a genuine token whose route is not known here yet.
                assert answer["reason"].startswith(
                    ("bad_token: token signed with an unknown key", "route_not_known_here")
                ), answer
                assert time.monotonic() < deadline, "the station never took the worker's key from the topic"
                await asyncio.sleep(0.1)  # polling a condition with a deadline
    finally:
        stop_processes([station.proc])


async def test_a_station_whose_link_stopped_says_how_old_its_view_is(page, world, system, tmp_path):
    """A station reads the log to the end, then loses its broker; twenty minutes on it is restarted,
    still offline (its store kept when its view was last fresh). Its header marks the views as old,
    and a check of a valid pass is still GREEN, with the warning to call in beside it."""
    the_pass = (await decided(system, a_request("P0")))["pass"]  # its own: not yet scanned by another test
    station = start_station(system.env, tmp_path, [world.checkpoint_id], system.public_key_path).ready()
    try:
        await until_known(station, the_pass["pass_id"])
        async with station.session() as http:
            deadline = time.monotonic() + TIMEOUT
            while True:  # read to the end: every view fresh
                async with http.get(station.url + "api/state") as r:
                    fresh = (await r.json())["freshness"]
                if not any(v["stale"] for v in fresh.values()):
                    break
                assert time.monotonic() < deadline, f"the station never caught up: {fresh}"
                await asyncio.sleep(0.1)  # polling a condition with a deadline
    finally:
        stop_processes([station.proc])
    store = Store(station_path(tmp_path, [world.checkpoint_id]), [world.checkpoint_id])
    for view, at in store.fresh_as_of().items():  # twenty minutes pass
        store.db.execute("UPDATE station SET value = ? WHERE name = ?", (repr(at - 20 * 60), f"fresh_as_of:{view}"))
    store.db.close()

    offline = {**system.env, "GC_BROKER_URL": f"kafka://127.0.0.1:{free_port()}"}  # nothing listens there
    again = start_station(offline, tmp_path, [world.checkpoint_id], system.public_key_path, "again").ready()
    try:
        await page.goto(again.first_visit)
        await page.wait_for_selector("#link.offline")
        await page.wait_for_selector("#freshness span[data-view='statuses'].stale")
        assert "20 min" in await page.locator("#freshness span[data-view='statuses']").inner_text()
        assert await page.locator("#freshness span[data-view='keys'].stale").count() == 0  # within its day
        await check(page, the_pass["token"], the_pass["plate"])
        assert await page.locator("#card").get_attribute("class") == "card green"  # the verdict stands
        warning = await page.locator("#stale-warning").inner_text()
        assert "view of decisions, statuses is 20 min old: call in to confirm" in warning
        assert "请电话核实" in warning
        await page.screenshot(path=str(ARTIFACTS / "station-stale-view.png"), full_page=True)
    finally:
        stop_processes([again.proc])
