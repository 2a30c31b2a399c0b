"""The public crossing times' page in a real browser (Debian Chromium through Playwright), served by the
gateway's app (uvicorn, in this process) over a database of departures made here: the map's points
coloured by the last hour's median, the table with figures and withheld windows, "as of" the channel's
clock, English at a click, and the figures moving by themselves when more trucks depart. Needs no
broker: the page reads the database only. Screenshot: tests/artifacts/crossings.png (docs/crossings.png
is a copy)."""

from __future__ import annotations

import random
import socket
import threading
from datetime import timedelta

import pytest
import uvicorn
from sqlalchemy import insert
from sqlmodel import Session

from bench.crossings import END, checkpoints, departures
from models.store.db import init_db, make_engine
from models.store.tables import Checkpoint, PassEvent
from routing import Gazetteer
from streams.gateway.app import Gateway, create_gateway
from streams.gateway.crossings import PublicCrossings
from tests.support.browser import ARTIFACTS, wait_for_js

QUIET = {"checkpoint_id": "BX-QUIET-1", "name": "静安检查站", "adcode": "420111", "lat": 30.48, "lon": 114.4}


@pytest.fixture
def served(tmp_path):
    """30 checkpoints of the gazetteer with 8 days of departures (40,000 , bench.crossings), one more with 3 in the
    last hour; the gateway's app on a free port."""
    rng = random.Random(27)
    engine = make_engine(f"sqlite:///{tmp_path}/gc.db")
    init_db(engine)
    cps = checkpoints(None, 30, rng)
    rows = list(departures(40_000, cps, 8, rng))
    few = [dict(r, event_id=f"quiet-{k}", checkpoint_id=QUIET["checkpoint_id"]) for k, r in enumerate(rows[:3])]
    for k, r in enumerate(few):
        r["at"] = END - timedelta(minutes=5 + k)
    with Session(engine) as s:
        s.execute(insert(Checkpoint), [*cps, QUIET])
        s.execute(insert(PassEvent), rows + few)
        s.commit()
    app = create_gateway(Gateway(engine=engine, publisher=object()))
    app.state.crossings = PublicCrossings(engine, clock="channel", place=Gazetteer.default().name)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", engine, cps, rng, app.state.crossings
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


async def test_the_public_page_shows_the_map_the_table_and_moves_by_itself(page, served):
    url, engine, cps, rng, crossings = served
    await page.set_viewport_size({"width": 1400, "height": 1000})
    await page.goto(url + "/public/crossings")
    await wait_for_js(page, "window.crossings.ready && window.crossings.mapPoints > 0")
    assert await page.evaluate("window.crossings.mapPoints") == 31
    assert "数据截至" in await page.inner_text("#asof") and "2020" in await page.inner_text("#asof")
    levels = await page.eval_on_selector_all("#crossings tbody tr", "rs => rs.map(r => r.dataset.level)")
    assert len(levels) == 31 and {"ok", "over"} <= set(levels)  # some quick, some congested (bench.crossings)
    quiet = f"#crossings tr[data-checkpoint='{QUIET['checkpoint_id']}']"
    assert await page.get_attribute(quiet, "data-level") == "none" and "过少" in await page.inner_text(quiet)
    busiest = f"#crossings tr[data-checkpoint='{cps[0]['checkpoint_id']}']"
    assert "分" in await page.inner_text(busiest) and "%" in await page.inner_text(busiest)
    await page.screenshot(path=str(ARTIFACTS / "crossings.png"), full_page=True)

    await page.click("#lang")
    assert "Crossing times" in await page.inner_text("header h1")
    assert "too few" in await page.inner_text(quiet) and "as of" in await page.inner_text("#asof")
    await page.screenshot(path=str(ARTIFACTS / "crossings-en.png"), full_page=True)

    # Two more trucks leave the quiet checkpoint: five in its last hour, a figure where there was none.
    fetched = await page.evaluate("window.crossings.fetches")
    crossings.interval = 0.0  # the gateway computes them again at each request, the page asks every 0.2 s
    crossings.expire()
    await page.evaluate("window.crossings.refreshSeconds = 0.2; window.crossings.refresh()")
    more = [dict(r, checkpoint_id=QUIET["checkpoint_id"]) for r in departures(2, cps, 0, rng, start=10**7)]
    for k, r in enumerate(more):
        r["at"], r["dwell_seconds"], r["dwell_exceeded"] = END - timedelta(minutes=1 + k), 1260.0, True
    with Session(engine) as s:
        s.execute(insert(PassEvent), more)
        s.commit()
    await wait_for_js(page, f"document.querySelector(\"{quiet}\").dataset.level !== 'none'")
    assert await page.evaluate("window.crossings.fetches") > fetched
    assert "min" in await page.inner_text(quiet)
