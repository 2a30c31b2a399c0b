"""`greenchannel demo --serve` as a person walks through it: the demo plays its day on its own
embedded broker, leaves trucks on the road, and serves its pages until it is stopped. Its
addresses and the truck to follow are in GC_DATA_DIR/demo/demo.json.

It runs in the embedded lane only: the demo is the embedded defaults' job, and it starts its own
broker whatever the lane.
"""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from sqlmodel import Session, col, select

from models.store.db import make_engine
from models.store.tables import PassEvent
from tests.support.browser import ARTIFACTS, watched_page
from tests.support.system import ROOT, stop_processes

pytestmark = pytest.mark.skipif(
    os.environ.get("GC_TEST_BROKER", "tansu") != "tansu",
    reason="the demo runs on its own embedded broker: the embedded lane runs it",
)

SHIPMENTS = 60  # the day's requests: enough for every phase, a short day
STARTUP = 240  # seconds for the demo to play its day and leave its trucks on the road


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The running demo: its summary (pages, the truck to follow) and its data folder."""
    data = tmp_path_factory.mktemp("demo-data")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GC_")},
        "GC_DATA_DIR": str(data),
        "GC_KEY_DIR": str(data / "keys"),
        "PYTHONPATH": str(ROOT),
    }
    log = data / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "demo", "--serve", "--shipments", str(SHIPMENTS)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    summary = data / "demo" / "demo.json"
    try:
        deadline = time.monotonic() + STARTUP
        while not summary.exists():
            assert proc.poll() is None, f"the demo exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no {summary} after {STARTUP} s:\n{log.read_text()[-4000:]}"
            time.sleep(0.2)  # polling a condition with a deadline
        yield {**orjson.loads(summary.read_bytes()), "dir": data / "demo", "log": log}
    finally:
        stop_processes([proc], timeout=120)  # SIGTERM: the demo stops what it started, then itself


def _session(url: str) -> aiohttp.ClientSession:
    """A client holding the page's cookie once it has opened the page's token link."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def _base(url: str) -> str:
    return url.split("?", 1)[0]


async def test_the_demo_prints_its_pages_and_a_truck_to_follow(demo):
    assert set(demo["pages"]) >= {"dashboard", "portal", "station", "driver", "public"}
    follow = demo["follow"]
    assert follow and follow["shipment_id"].startswith("gw:demo-logistics:"), follow
    text = Path(demo["log"]).read_text()
    for page in demo["pages"].values():
        assert page["url"] in text.replace("\n", ""), f"{page['name']} not printed"


async def test_the_station_expects_the_trucks_left_on_the_road(demo):
    """The demo's followed truck (the demo firm's, through the gateway) is an expected arrival at the
    station the demo serves: its clock is at the trucks' departure, not on the played day."""
    station = demo["pages"]["station"]["url"]
    async with _session(station) as http:
        async with http.get(station) as r:
            assert r.status == 200
        async with http.get(_base(station) + "api/state") as r:
            state = await r.json()
    expected = {a["pass_id"] for a in state["arrivals"]}
    assert demo["follow"]["pass_id"] in expected, state["arrivals"]


async def test_the_followed_truck_is_checked_green_from_its_drivers_phone_and_departs(demo, chromium, tmp_path):
    """The person's walk: the driver's page (a phone) shows the pass green with its QR; the officer
    photographs that QR at the station, which checks it GREEN; the truck arrives and departs."""
    follow = demo["follow"]
    phone = await chromium.new_context(viewport={"width": 390, "height": 844}, locale="zh-CN")
    try:
        driver = await phone.new_page()
        await driver.goto(demo["pages"]["driver"]["url"])
        await driver.wait_for_selector("#verdict[data-verdict='green']", timeout=60_000)
        assert follow["plate"] in await driver.locator("#terms").inner_text()
        await driver.screenshot(path=str(ARTIFACTS / "demo-walk-driver.png"), full_page=True)
        photo = tmp_path / "qr-on-the-phone.png"
        await driver.locator("#qr").screenshot(path=str(photo))
    finally:
        await phone.close()
    async with watched_page(chromium, ARTIFACTS / "demo-walk-station.png") as station:
        await station.goto(demo["pages"]["station"]["url"])
        await station.wait_for_selector(f"#arrivals tr[data-pass='{follow['pass_id']}']", timeout=60_000)
        await station.fill("#plate", follow["plate"])
        await station.set_input_files("#photo", str(photo))
        await station.click("#check")
        await station.wait_for_selector("#card.green, #card.grey, #card.check")
        assert await station.locator("#card").get_attribute("class") == "card green"
        assert follow["pass_id"] in await station.locator("#card").inner_text()
        before = await _crossings(demo, follow["checkpoint"])
        assert before["crossings"] >= 5 and before["withheld"] is None, before  # the convoy before it
        await station.click("#arrive")
        here = station.locator(f"#present li[data-pass='{follow['pass_id']}']")
        await here.wait_for()
        await here.locator("button.depart").click()
        await station.wait_for_selector("#departed:not([hidden])")
    # The public figures move: one more vehicle at that crossing in the last hour.
    checkpoint = _departed(demo)
    assert checkpoint == follow["checkpoint"]
    deadline = time.monotonic() + 180  # the feed computes its figures at most once a minute
    while (now := await _crossings(demo, checkpoint))["crossings"] <= before["crossings"]:
        assert time.monotonic() < deadline, (before, now)
        await asyncio.sleep(1)  # polling a condition with a deadline
    async with watched_page(chromium, ARTIFACTS / "demo-walk-public.png") as public:
        await public.goto(demo["pages"]["public"]["url"])
        await public.wait_for_selector(f"[data-checkpoint='{checkpoint}']", timeout=60_000)


async def _crossings(demo, checkpoint: str) -> dict:
    """The public feed's last hour at `checkpoint`."""
    base = demo["pages"]["public"]["url"].rsplit("/public/", 1)[0]
    async with aiohttp.ClientSession() as http, http.get(base + "/public/v1/crossings") as r:
        feed = await r.json()
    return next(c["last_hour"] for c in feed["checkpoints"] if c["checkpoint_id"] == checkpoint)


def test_the_days_report_counts_the_followed_truck_and_the_log_proves_it(demo, tmp_path):
    """The departure the walk made (the test before) is in the day's report, from the database,
    and the log proves the report's figures."""
    checkpoint = _departed(demo)
    env = {**os.environ, **demo["env"], "PYTHONPATH": str(ROOT)}
    args = ["report", "--day", demo["day"], "--csv", str(tmp_path / "day"), "--verify"]
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader((tmp_path / "day" / "dwell.csv").open(encoding="utf-8")))
    assert any(r["checkpoint_id"] == checkpoint and int(r["departures"]) >= 1 for r in rows), rows
    summary = {r["key"]: r["value"] for r in csv.DictReader((tmp_path / "day" / "summary.csv").open(encoding="utf-8"))}
    assert int(summary["passes_issued"]) >= 1 and "proven" in summary["verified"], summary


def _departed(demo, timeout: float = 60) -> str:
    """Wait until the database holds the followed truck's departure; its checkpoint."""
    engine = make_engine(demo["env"]["GC_DATABASE_URL"])
    deadline = time.monotonic() + timeout
    try:
        while True:
            with Session(engine) as s:
                q = select(PassEvent.checkpoint_id).where(
                    PassEvent.pass_id == demo["follow"]["pass_id"], col(PassEvent.dwell_seconds).is_not(None)
                )
                if (found := s.exec(q).first()) is not None:
                    return found
            assert time.monotonic() < deadline, "the followed truck's departure never reached the database"
            time.sleep(0.2)  # polling a condition with a deadline
    finally:
        engine.dispose()
