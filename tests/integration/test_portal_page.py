"""The firms' portal in a real browser (Debian Chromium through Playwright), served by a gateway process
connected to the running worker and projector: a firm signs in with its key, applies with the form
(places and cargo completed), watches the decision arrive, opens the pass and prints it; a rejection
and a conflict read in the page's language; another page of the same host cannot use the session.

Requests here depart now (杭州市西湖区 → 新余市渝水区, as the station's page tests): this module has
topics of its own. Screenshots go to tests/artifacts/portal-*.png.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import uuid
from datetime import UTC, datetime

import aiohttp
import pytest

from models.credential import DriverBinding
from models.records import format_time
from streams.dev.simulator import Scenario
from tests.support.browser import ARTIFACTS, wait_for_js
from tests.support.factories import STATION_TIMEOUT as TIMEOUT
from tests.support.system import start_gateway, stop_processes

ID_NUMBER = "11010519491231002X"  # a valid resident ID (its check digit right)


@pytest.fixture(scope="module")
def system(own_system):
    """Topics of this module's own: requests of today stay out of the shared log the replay audits."""
    return own_system


@pytest.fixture(scope="module")
async def firm(system):
    """A firm (its own credit code its only shipper), its key, and the gateway serving the portal."""
    firm_id = f"web-{uuid.uuid4().hex[:6]}"
    request = Scenario(seed=2627).request(0, kind="P0")
    shipper = request["shipper"]["credit_code"]
    added = system.cli("firms", "add", firm_id, "--name", "顺丰速运武汉分公司", "--credit-code", shipper)
    assert added.returncode == 0, added.stdout + added.stderr
    made = system.cli("firms", "key", "new", firm_id)
    assert made.returncode == 0, made.stdout + made.stderr
    gateway = start_gateway(system.env_as("gateway"), system.data_dir, f"gateway-{firm_id}")
    try:
        gateway.ready()
        yield {"id": firm_id, "key": made.stdout.strip().splitlines()[-1], "url": gateway.url, "request": request}
    finally:
        stop_processes([gateway.proc])


async def sign_in(page, firm) -> None:
    await page.goto(firm["url"])
    await page.wait_for_selector("#view-signin:not([hidden])")
    await page.screenshot(path=str(ARTIFACTS / "portal-sign-in.png"), full_page=True)
    await page.fill("#key", firm["key"])
    await page.click("#signin button[type=submit]")
    await page.wait_for_selector("#view-list:not([hidden])")


async def apply(
    page, firm, *, hs_code: str = "901920", cargo_word: str | None = "呼吸机", shipment_id: str | None = None
) -> str:
    """Fill the form as a person does: places and cargo picked from their completions. Its shipment id."""
    request = firm["request"]
    await page.click("nav a[href='#/apply']")
    await page.wait_for_selector("#view-apply:not([hidden])")
    if shipment_id:
        await page.fill("[name=shipment_id]", shipment_id)
    await page.fill("[name='shipper.name']", request["shipper"]["name"])
    await page.fill("[name='consignee.credit_code']", request["consignee"]["credit_code"])
    await page.fill("[name='consignee.name']", request["consignee"]["name"])
    for field, typed, full in (("origin", "西湖", "浙江省杭州市西湖区"), ("destination", "渝水", "江西省新余市渝水区")):
        await page.fill(f"[name={field}]", typed)
        await page.wait_for_selector(f"#{field}-list option[value='{full}']", state="attached")
        await page.fill(f"[name={field}]", full)
    if cargo_word is not None:  # picked from the catalog's completions
        await page.fill("[name='cargo.0.hs_code']", cargo_word)
        await page.wait_for_selector(f"#cargo-list option[value='{hs_code}']", state="attached")
    await page.fill("[name='cargo.0.hs_code']", hs_code)
    await page.fill("[name='cargo.0.quantity']", "120")
    await page.fill("[name='vehicle.plate']", f"浙A{uuid.uuid4().int % 90000 + 10000}")
    await page.fill("[name='driver.name']", "王芳")
    await page.fill("[name='driver.phone']", "13800138000")
    await page.fill("[name='driver.id_number']", ID_NUMBER)
    # Departing a quarter of an hour ago (in the browser's own zone), so that the pass is valid now.
    local = await page.evaluate(
        "(() => { const d = new Date(Date.now() - 15 * 60000);"
        " return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16); })()"
    )
    await page.fill("[name=departure_at]", local)
    sid = await page.input_value("[name=shipment_id]")
    await page.screenshot(path=str(ARTIFACTS / "portal-apply-form.png"), full_page=True)
    await page.click("#submit")
    return sid


async def test_a_firm_signs_in_applies_watches_the_decision_opens_and_prints_the_pass(page, firm, system):
    await sign_in(page, firm)
    assert await page.evaluate("document.cookie") == ""  # the session's cookie is HttpOnly; no key kept
    assert firm["key"] not in await page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
    await wait_for_js(page, "window.portal.live === 'sse'", TIMEOUT)  # the gateway's event stream, by the cookie
    sent = []
    page.on(
        "request", lambda r: sent.append(r.post_data_json) if r.method == "POST" and "/v1/requests" in r.url else None
    )
    sid = await apply(page, firm)
    await page.wait_for_selector("#view-list:not([hidden])")
    [body] = sent
    assert "id_number" not in body["driver"] and ID_NUMBER not in str(body)  # bound in the browser
    assert DriverBinding.from_wire(body["driver"]["binding"]).matches(ID_NUMBER)
    assert body["origin"] == {"adcode": "330106"} and body["destination"] == {"adcode": "360502"}
    row = f"#requests tr[data-shipment='{sid}']"
    await page.wait_for_selector(f"{row}[data-status='approved'][data-pass-status='issued']", timeout=TIMEOUT * 1000)
    assert "已批准" in await page.inner_text(row) and "P0" in await page.inner_text(row)
    assert "已批准" in await page.inner_text("#flash")
    assert await page.evaluate("window.portal.live === 'sse' && window.portal.eventsSeen > 0")  # pushed, not polled
    await page.screenshot(path=str(ARTIFACTS / "portal-requests.png"), full_page=True)

    await page.click(f"{row} a.pass-link")
    await page.wait_for_selector("#view-pass:not([hidden]) #checkpoints tbody tr")
    pass_id = await page.inner_text("#pass-id")
    await wait_for_js(page, f"window.portal.mapDrawn === '{pass_id}'", TIMEOUT)
    terms = await page.inner_text("#pass-terms")
    assert "P0" in terms and "已签发" in terms
    assert "已签发" in await page.inner_text("#history")
    checkpoints = await page.locator("#checkpoints tbody tr").count()
    assert checkpoints >= 2  # a border crossing and the destination at least
    # The link to hand the driver, with its QR (the driver's page: tests/integration/test_driver_page.py).
    await page.wait_for_selector("#driver-link:not([hidden])")
    assert f"/d/{pass_id}/" in await page.inner_text("#driver-url")
    await wait_for_js(page, "document.querySelector('#driver-qr').naturalWidth > 0", TIMEOUT)

    # A checkpoint scans the truck: the pass page follows its status without being reloaded.
    the_pass = await (await page.context.request.get(f"{firm['url']}v1/passes/{pass_id}")).json()
    first = the_pass["route"]["checkpoints"][0]
    scan = {
        "scan_id": f"{pass_id}-portal",
        "checkpoint_id": first["checkpoint_id"],
        "pass_id": pass_id,
        "plate": the_pass["plate"],
        "kind": "arrival",
        "token": the_pass["token"],
        "scanned_at": format_time(datetime.now(UTC)),
    }
    await system.send(system.topics.scans, scan, key=pass_id)
    await page.wait_for_selector("#history li:nth-child(2)", timeout=TIMEOUT * 1000)
    assert "在检查站" in await page.inner_text("#pass-terms"), await page.inner_text("#history")
    assert first["checkpoint_id"] in await page.inner_text("#history")
    await page.screenshot(path=str(ARTIFACTS / "portal-pass.png"), full_page=True)

    pdf = await page.context.request.get(firm["url"] + (await page.get_attribute("#print-pdf", "href")).lstrip("/"))
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    assert (await pdf.body()).startswith(b"%PDF")
    png = await page.context.request.get(firm["url"] + (await page.get_attribute("#print-png", "href")).lstrip("/"))
    assert png.status == 200 and (await png.body()).startswith(b"\x89PNG")

    await page.click("#lang")
    await page.wait_for_selector("#view-pass:not([hidden]) #pass-terms dt")
    assert "Checkpoints and ETAs" in await page.inner_text("#view-pass")
    assert "at a checkpoint" in await page.inner_text("#pass-terms")
    await wait_for_js(page, f"window.portal.mapDrawn === '{pass_id}'", TIMEOUT)
    await page.screenshot(path=str(ARTIFACTS / "portal-pass-en.png"), full_page=True)


async def test_a_rejection_and_a_conflict_are_explained_in_both_languages(page, firm):
    """With no event stream (blocked here), the page polls: the rejection still arrives."""
    await page.route("**/v1/events", lambda route: route.abort())
    await sign_in(page, firm)
    await wait_for_js(page, "window.portal.live === 'poll'", TIMEOUT)
    sid = await apply(page, firm, hs_code="0101", cargo_word=None)  # live horses: in no priority class
    row = f"#requests tr[data-shipment='{sid}']"
    await page.wait_for_selector(f"{row}[data-status='rejected']", timeout=TIMEOUT * 1000)
    assert "货物不在任何优先类别目录中" in await page.inner_text(row)
    await apply(page, firm, shipment_id=sid)  # the same id, another request
    await page.wait_for_selector("#apply-error:not([hidden])")
    assert "该运单号已用于另一份不同的申请" in await page.inner_text("#apply-error")
    await page.screenshot(path=str(ARTIFACTS / "portal-conflict.png"), full_page=True)
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    await page.fill("[name=shipment_id]", f"{sid}-2")
    await page.fill("[name='driver.id_number']", ID_NUMBER[:-1] + "1")  # its check digit wrong
    await page.click("#submit")
    await page.wait_for_selector("#apply-error:not([hidden]):has-text('校验位应为 X')")
    assert posts == []  # told, and nothing sent
    await page.screenshot(path=str(ARTIFACTS / "portal-bad-id.png"), full_page=True)
    await page.click("#lang")
    await page.click("nav a[href='#/']")
    await page.wait_for_selector(f"{row}[data-status='rejected']")
    assert "the cargo is in no priority class of the catalog" in await page.inner_text(row)
    await page.screenshot(path=str(ARTIFACTS / "portal-rejected-en.png"), full_page=True)


@contextlib.contextmanager
def foreign_page(body: bytes):
    """Another web page on this host (another port: the same *site*, so a SameSite=Strict cookie goes)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 — http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


async def test_another_page_cannot_apply_with_the_firms_session(page, firm):
    await sign_in(page, firm)
    evil = (
        f'<form method="post" action="{firm["url"]}v1/requests" enctype="text/plain">'
        '<input name=\'{"shipment_id": "EVIL-1", "x": "\' value=\'"}\'><button id="go">go</button></form>'
    ).encode()
    with foreign_page(evil) as url:
        await page.goto(url)
        await page.click("#go")
        await page.wait_for_load_state()
        answer = await page.inner_text("body")
    assert '"error":"forbidden"' in answer  # the cookie went with it (else: unauthorized) and was refused
    async with aiohttp.ClientSession() as http_:
        headers = {"Authorization": f"Bearer {firm['key']}"}
        async with http_.get(f"{firm['url']}v1/requests/EVIL-1", headers=headers) as r:
            assert r.status == 404  # nothing was recorded, nothing sent
