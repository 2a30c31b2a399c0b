"""The operators' dashboard in a real browser (Debian Chromium through Playwright), against the
running system: the map, a risk change arriving live, the checkpoint board, search (its parts without a
broker: tests/unit/test_dashboard_parts.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta

import aiohttp
import pytest

from models.records import format_time
from streams.dev.broker import free_port
from streams.dev.simulator import Scenario
from tests.support.browser import wait_for_js
from tests.support.system import ROOT

HIGH = "#d7301f"  # LEVEL[2] of dashboard.js
WUHAN = "420100"


@pytest.fixture(scope="module")
def system(own_system):
    """This module's own topics: the risk levels it sets now stay out of the shared log."""
    return own_system


def start_dashboard(env: dict, log_path, *args: str) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "dashboard", *args],
            env={k: v for k, v in env.items() if not k.startswith("GC_DASHBOARD_TOKEN")},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def announced(proc: subprocess.Popen, log_path) -> str:
    """The address the dashboard printed once serving (`dashboard at URL`)."""
    deadline = time.monotonic() + 60
    while "dashboard at " not in (text := log_path.read_text(errors="replace")):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"dashboard did not come up: {text[-2000:]}")
        await asyncio.sleep(0.1)  # polling a condition with a deadline
    return text.split("dashboard at ", 1)[1].split()[0]


@pytest.fixture(scope="module")
async def dashboard(system):
    """The address with the token the dashboard made for this run, as a person opens it first."""
    log_path = system.data_dir / "dashboard.log"
    proc = start_dashboard(system.env, log_path, "--port", str(free_port()))
    url = await announced(proc, log_path)
    assert "?token=" in url
    yield url
    proc.terminate()
    proc.wait(30)


async def open_dashboard(page, url: str) -> None:
    await page.goto(url)
    await wait_for_js(page, "window.gc && window.gc.ready")


WUHAN_VISUAL = """() => {
  const data = gc.map.getModel().getSeriesByIndex(0).getData();
  const i = data.indexOfName('420100');
  const [x, y] = gc.map.convertToPixel({geoIndex: 0}, [114.2986, 30.5844]);
  const canvas = gc.map.getDom().querySelector('canvas');  // zlevel 0: the regions (scatters lie above)
  const r = window.devicePixelRatio || 1;
  const px = canvas.getContext('2d').getImageData(Math.round(x * r), Math.round(y * r), 1, 1).data;
  return {value: data.get('value', i), colour: data.getItemVisual(i, 'color'), pixel: [px[0], px[1], px[2]]};
}"""


async def test_the_map_draws_the_regions_and_wuhan_turns_high_risk_without_a_reload(page, dashboard, system):
    await open_dashboard(page, dashboard)
    regions = await page.evaluate("gc.map.getOption().series[0].data.length")
    assert regions > 360
    painted = await page.evaluate("""() => {
      const c = gc.map.getDom().querySelector('canvas');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0; for (let i = 3; i < d.length; i += 4 * 7) if (d[i] > 0) n++; return n; }""")
    assert painted > 10_000  # regions drawn on the canvas, not an empty one
    await page.evaluate("window.__sameDocument = true")

    low = system.cli("risk", "set", "4201", "low")
    assert low.returncode == 0, low.stderr
    await wait_for_js(page, "gc.levels['420100'] === 0")
    high = system.cli("risk", "set", "4201", "high", "--note", "武汉封城")
    assert high.returncode == 0, high.stderr
    await wait_for_js(page, "gc.levels['420100'] === 2")
    wuhan = await page.evaluate(WUHAN_VISUAL)
    assert wuhan["value"] == 2 and wuhan["colour"] == HIGH, wuhan
    assert abs(wuhan["pixel"][0] - 0xD7) < 12 and abs(wuhan["pixel"][1] - 0x30) < 12, wuhan  # red on screen
    assert await page.evaluate("window.__sameDocument === true")  # no reload happened
    assert "武汉市" in await page.inner_text("#declared")
    declared = await page.evaluate(
        """() => [...document.querySelectorAll('#declared li')].filter((li) => li.textContent.includes('武汉市'))
                 .map((li) => [li.querySelector('b').textContent, li.querySelector('b').style.color])"""
    )
    assert declared == [["high", "rgb(215, 48, 31)"]], declared  # the high colour, #d7301f


def _tibet_to_qinghai(n: int) -> dict:
    """An approved request on a route nobody else's tests drive (its border checkpoint is its own)."""
    body = Scenario(seed=uuid.uuid4().int % 10**6).request(n, kind="P0")
    body.update(origin={"adcode": "540102"}, destination={"adcode": "630102"})
    return body


async def test_the_board_shows_the_dwell_after_scans_and_search_shows_the_timeline(page, dashboard, system):
    body = _tibet_to_qinghai(1)
    await system.send(system.topics.requests, body, key=body["shipment_id"])
    [answer] = await system.tap.wait_for(system.topics.decisions, lambda m: m.key == body["shipment_id"].encode())
    the_pass = answer.json["pass"]
    assert the_pass, answer.json
    cp = the_pass["route"]["checkpoints"][0]
    eta = datetime.fromisoformat(cp["eta"])
    base = {"checkpoint_id": cp["checkpoint_id"], "pass_id": the_pass["pass_id"], "plate": the_pass["plate"]}
    scans = [
        {
            **base,
            "scan_id": f"{the_pass['pass_id']}-a",
            "kind": "arrival",
            "token": the_pass["token"],
            "scanned_at": format_time(eta),
        },
        {
            **base,
            "scan_id": f"{the_pass['pass_id']}-d",
            "kind": "departure",
            "scanned_at": format_time(eta + timedelta(minutes=20)),
        },
    ]
    for scan in scans:
        await system.send(system.topics.scans, scan, key=the_pass["pass_id"])
    await system.tap.wait_for(
        system.topics.status, lambda m: m.key == the_pass["pass_id"].encode() and m.json.get("dwell_seconds") == 1200.0
    )

    await open_dashboard(page, dashboard)
    row = f'#board tr[data-checkpoint="{cp["checkpoint_id"]}"]'
    await page.wait_for_selector(f'{row} .dwell:has-text("20.0 min")', timeout=30_000)
    assert "flagged" in await page.get_attribute(row, "class")  # over 15 minutes
    await page.click('#board th[data-key="median_dwell_seconds"]')  # sortable: longest dwell first
    first = await page.get_attribute("#board tbody tr:first-child", "data-checkpoint")
    board = await page.evaluate("gc.board")
    assert first == max(board, key=lambda r: r["median_dwell_seconds"] or -1)["checkpoint_id"]

    await page.fill("#q", the_pass["plate"])
    await page.click("#search button")
    card = f'#result .pass-card:has-text("{the_pass["pass_id"]}")'
    await page.wait_for_selector(card, timeout=10_000)
    text = await page.inner_text(card)
    for expected in (
        "issued",
        "at_checkpoint",
        "in_transit",
        cp["checkpoint_id"],
        "20.0 min",
        "over 15 min",
        body["shipment_id"],
        "拉萨市",
    ):
        assert expected in text, (expected, text)
    for query in (the_pass["pass_id"], body["shipment_id"]):
        await page.fill("#q", query)
        await page.click("#search button")
        await page.wait_for_selector(card, timeout=10_000)


async def test_the_page_opens_with_its_token_once_then_by_its_cookie_and_refuses_other_sites(page, system, tmp_path):
    """Bound to every interface, its token in a file: refused without it; the first visit with
    ?token= leaves it in a cookie and the address bar; the page, its script, map and events all
    work from then on; a foreign Host is refused."""
    (tmp_path / "token").write_text("s3cret-of-the-file\n")
    log_path = system.data_dir / "dashboard-token.log"
    port = free_port()
    proc = start_dashboard(
        system.env, log_path, "--host", "0.0.0.0", "--port", str(port), "--token-file", str(tmp_path / "token")
    )
    try:
        said = await announced(proc, log_path)
        assert said == f"http://0.0.0.0:{port}/" and "s3cret" not in log_path.read_text()  # never printed
        refused = await page.goto(f"http://127.0.0.1:{port}/")
        assert refused.status == 401
        await open_dashboard(page, f"http://127.0.0.1:{port}/?token=s3cret-of-the-file")  # script, map, events: all in
        assert page.url == f"http://127.0.0.1:{port}/"  # the token left the address bar
        assert await page.evaluate("gc.map.getOption().series[0].data.length") > 360
        cookies = await page.context.cookies()
        assert [(c["httpOnly"], c["sameSite"], c["value"]) for c in cookies] == [(True, "Strict", "s3cret-of-the-file")]
        await page.reload()
        await wait_for_js(page, "window.gc && window.gc.ready")  # by the cookie alone
        async with aiohttp.ClientSession() as http:
            rebound = await http.get(
                f"http://127.0.0.1:{port}/state",
                headers={"Authorization": "Bearer s3cret-of-the-file", "Host": "rebind.attacker.example"},
            )
            assert rebound.status == 400
        status = await page.evaluate(
            """async (port) => (await fetch(`http://127.0.0.1:${port}/state`, {method: "POST", body: "a=1",
               headers: {"Content-Type": "application/x-www-form-urlencoded"}})).status""",
            port,
        )
        assert status == 415
    finally:
        proc.terminate()
        proc.wait(30)
