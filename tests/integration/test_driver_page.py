"""The driver's pass on a phone (Debian Chromium through Playwright, a 390×844 viewport), served by a
gateway process beside the running worker and projector: the firm gets the link from the API, the
driver opens it; offline the service worker opens it again with the age of what it shows; back
online, a reroute (a province on the route raised to high risk) arrives live, without a reload.

Requests here depart now: this module has topics of its own. Screenshots: tests/artifacts/driver*.png
(the README's, docs/driver*.png, are copies).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from models.records import format_time
from streams.dev.simulator import Scenario
from tests.support.browser import ARTIFACTS, wait_for_js
from tests.support.factories import STATION_TIMEOUT as TIMEOUT
from tests.support.system import start_gateway, stop_processes

PHONE = {"width": 390, "height": 844}
CHECKPOINTS = "[...document.querySelectorAll('#checkpoints li')].map(l => l.dataset.checkpoint)"


@pytest.fixture(scope="module")
def system(own_system):
    return own_system


@pytest.fixture(scope="module")
async def gateway(system):
    firm_id = f"drv-{uuid.uuid4().hex[:6]}"
    request = Scenario(seed=2627).request(1, kind="P0")
    added = system.cli("firms", "add", firm_id, "--name", "顺丰速运武汉分公司", "--credit-code",
                       request["shipper"]["credit_code"])  # fmt: skip
    assert added.returncode == 0, added.stdout + added.stderr
    made = system.cli("firms", "key", "new", firm_id)
    assert made.returncode == 0, made.stdout + made.stderr
    gw = start_gateway(system.env_as("gateway"), system.data_dir, f"gateway-{firm_id}")
    try:
        gw.ready()
        yield {"url": gw.url, "key": made.stdout.strip().splitlines()[-1], "request": request}
    finally:
        stop_processes([gw.proc])


async def _approved_pass(gateway) -> tuple[str, str]:
    """A P0 pass 武汉 → 广州 (through Hunan) asked for and departing a quarter of an hour ago: its id and
    driver link. (The channel here has no wall clock: the page's "now" is the last event's time, the
    decision's, which is the request's submitted_at.)"""
    now = datetime.now(UTC) - timedelta(minutes=15)
    body = gateway["request"] | {
        "shipment_id": f"DRV-{uuid.uuid4().hex[:6]}",
        "origin": {"adcode": "420111"},
        "destination": {"adcode": "440106"},
        "submitted_at": format_time(now),
        "departure_at": format_time(now),
    }
    headers = {"Authorization": f"Bearer {gateway['key']}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{gateway['url']}v1/requests", json=body) as r:
            assert r.status == 202, await r.text()

        async def decided():
            async with http.get(f"{gateway['url']}v1/requests/{body['shipment_id']}") as r:
                view = await r.json()
                return view if view.get("pass_status") else None

        view = await _until(decided, "the pass issued")
        pass_id = view["decision"]["pass_id"]
        async with http.get(f"{gateway['url']}v1/passes/{pass_id}/driver-link") as r:
            assert r.status == 200, await r.text()
            link = (await r.json())["url"]
    return pass_id, link


async def _through_the_first_checkpoint(gateway, system, pass_id: str) -> str:
    """The truck arrives at its first checkpoint 14 minutes ago and leaves 2 minutes ago (a 12-minute
    wait, the checkpoint's median now); its checkpoint."""
    headers = {"Authorization": f"Bearer {gateway['key']}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{gateway['url']}v1/passes/{pass_id}") as r:
            the_pass = await r.json()
        first = the_pass["route"]["checkpoints"][0]["checkpoint_id"]
        now = datetime.now(UTC)
        for kind, ago in (("arrival", 14), ("departure", 2)):
            scan = {"scan_id": f"{pass_id}-{kind}", "checkpoint_id": first, "pass_id": pass_id, "kind": kind,
                    "plate": the_pass["plate"], "token": the_pass["token"],
                    "scanned_at": format_time(now - timedelta(minutes=ago))}  # fmt: skip
            await system.send(system.topics.scans, scan, key=pass_id)

        async def departed():
            async with http.get(f"{gateway['url']}v1/passes/{pass_id}") as r:
                return (await r.json())["status"] == "in_transit"

        await _until(departed, "the departure projected")
    return first


async def _until(probe, what: str):
    import asyncio
    import time

    deadline = time.monotonic() + TIMEOUT
    while not (found := await probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)  # polling a condition with a deadline
    return found


async def test_the_drivers_page_online_then_offline_then_a_reroute_arriving_live(chromium, gateway, system):
    pass_id, link = await _approved_pass(gateway)
    first = await _through_the_first_checkpoint(gateway, system, pass_id)
    assert link.startswith(gateway["url"] + f"d/{pass_id}/")
    context = await chromium.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True,
                                         locale="zh-CN")  # fmt: skip
    page = await context.new_page()
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        # Online: the pass, green, its route and checkpoints, the map; live by its event stream.
        await page.goto(link)
        await page.wait_for_selector("#verdict[data-verdict='green']", timeout=TIMEOUT * 1000)
        assert "有效" in await page.inner_text("#verdict") and pass_id in await page.inner_text("#verdict")
        assert await page.locator("#checkpoints li").count() >= 2
        first_route = await page.evaluate(CHECKPOINTS)
        assert await page.get_attribute("#instruction", "data-instruction") == "go"
        assert "在途" in await page.inner_text("#verdict")
        assert "当前等待 12 分钟" in await page.inner_text(f"#checkpoints li[data-checkpoint='{first}']")
        await wait_for_js(page, "window.driver.live === 'sse' && window.driver.cached === true", TIMEOUT)
        await wait_for_js(page, "!!window.driver.mapDrawn", TIMEOUT)
        assert await page.evaluate("navigator.serviceWorker.controller !== null")
        assert "实时" in await page.inner_text("#freshness")
        await page.screenshot(path=str(ARTIFACTS / "driver.png"), full_page=True)

        # Offline: reloaded (the phone's clock 7 minutes on), the service worker serves the page and
        # its last state, with its age.
        await context.set_offline(True)
        await page.clock.set_system_time(datetime.now(UTC) + timedelta(minutes=7, seconds=30))
        await page.reload()
        await page.wait_for_selector("#freshness.stale", timeout=TIMEOUT * 1000)
        stale = await page.inner_text("#freshness")
        assert "离线" in stale and "7 分钟前保存的状态" in stale, stale
        assert await page.get_attribute("#verdict", "data-verdict") == "green"  # within its validity still
        assert pass_id in await page.inner_text("#verdict") and await page.locator("#checkpoints li").count() >= 2
        await wait_for_js(page, "!!window.driver.mapDrawn", TIMEOUT)  # ECharts and the map from the cache too
        await page.screenshot(path=str(ARTIFACTS / "driver-offline.png"), full_page=True)

        # Back online, with no reload: Hunan (on the route) raised to high risk reroutes the pass, live.
        await context.set_offline(False)
        await wait_for_js(page, "window.driver.live === 'sse' && !window.driver.offline", TIMEOUT)
        seen = await page.evaluate("window.driver.eventsSeen")
        at = format_time(datetime.now(UTC))
        await system.send(system.topics.risk, {"adcode": "430000", "level": "high", "effective_at": at}, key="430000")
        await page.wait_for_selector("#instruction[data-instruction='new_route']", timeout=TIMEOUT * 1000)
        assert await page.evaluate("window.driver.eventsSeen") > seen  # pushed, not polled or reloaded
        assert "路线已变更" in await page.inner_text("#instruction")
        assert await page.get_attribute("#verdict", "data-verdict") == "green"  # a rerouted pass is valid
        new_route = await page.evaluate(CHECKPOINTS)
        assert new_route != first_route
        await page.click("#lang")
        await page.wait_for_selector("#instruction:has-text('Your route has changed')")
        await wait_for_js(page, "!!window.driver.mapDrawn", TIMEOUT)
        await page.screenshot(path=str(ARTIFACTS / "driver-rerouted-en.png"), full_page=True)
    finally:
        await page.screenshot(path=str(ARTIFACTS / "driver-last.png"), full_page=True)
        await context.close()
    assert violations == [], f"the page broke its Content-Security-Policy: {violations}"


async def test_without_its_event_stream_the_page_polls_and_still_follows_the_pass(chromium, gateway, system):
    pass_id, link = await _approved_pass(gateway)
    context = await chromium.new_context(viewport=PHONE, is_mobile=True, locale="en-GB")
    page = await context.new_page()
    try:
        await page.route("**/events", lambda route: route.abort())
        await page.goto(link)
        await page.click("#lang")  # English (Chinese is the default whatever the phone's language)
        await wait_for_js(page, "window.driver.live === 'poll'", TIMEOUT)
        assert "Refreshed every 30 s" in await page.inner_text("#freshness")
        await _through_the_first_checkpoint(gateway, system, pass_id)
        await page.wait_for_selector("#verdict:has-text('in transit')", timeout=TIMEOUT * 1000)
        assert await page.evaluate("window.driver.eventsSeen") == 0
    finally:
        await page.screenshot(path=str(ARTIFACTS / "driver-polled.png"), full_page=True)
        await context.close()
