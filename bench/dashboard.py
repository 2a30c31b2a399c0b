"""`python -m bench.dashboard`: the operators' page with many active passes, in headless Chromium.

Measures (not part of `make bench`, and asserted by no test):
- time to first paint: from navigation to the page having drawn the map and every panel from
  its first state event, with N active passes (default 10,000) in the projector's database;
- risk-change latency: from just before `risk set`'s publish (streams.operators.publish) to the
  frame after the page recoloured the region, for several changes of Wuhan (4201).

The database is filled with real decisions and statuses of the decision core (build_pipeline),
projected with the projector's own code; an embedded Tansu broker carries the risk changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlmodel import Session  # noqa: E402

from models.operators import risk_entry  # noqa: E402
from models.passes import kafka_partition  # noqa: E402
from models.store.db import init_db, make_engine, project_batch  # noqa: E402
from routing import Gazetteer  # noqa: E402
from streams.bootstrap import build_pipeline  # noqa: E402
from streams.dev.broker import TansuBroker, free_port  # noqa: E402
from streams.dev.simulator import Scenario, scans_for  # noqa: E402
from streams.handlers import RecordMeta, Tables, Topics  # noqa: E402
from streams.operators import publish  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402

RISKS = [
    {"adcode": a, "level": lv, "effective_at": "2020-02-24T00:00:00Z"}
    for a, lv in (("4202", "medium"), ("4211", "high"), ("4403", "medium"), ("3301", "medium"), ("2102", "medium"))
]


def fill(settings: Settings, passes: int) -> int:
    """Decide requests until `passes` are approved; project decisions, statuses and first scans."""
    pipeline = build_pipeline(settings)
    topics = pipeline.topics
    tables, scenario, rng = Tables.empty(), Scenario(seed=99, start=datetime(2020, 2, 25, tzinfo=UTC)), random.Random(5)
    for entry in scenario.enterprise_entries():  # the key list, so P2/P3 requests can qualify
        pipeline.on_enterprise(
            entry["credit_code"].encode(), orjson.dumps(entry), RecordMeta(topics.enterprises, 0, 0, 0)
        )
    for entry in RISKS:
        pipeline.on_risk(entry["adcode"].encode(), orjson.dumps(entry), RecordMeta(topics.risk, 0, 0, 0))
    decisions, statuses, approved, n = [], [], 0, 0
    while approved < passes:
        body = scenario.request(n, kind=rng.choice(["P0", "P1", "P2", "P3"]))
        key = body["shipment_id"].encode()
        partition = kafka_partition(key, settings.partitions)
        outs = pipeline.on_request(key, orjson.dumps(body), RecordMeta(topics.requests, partition, n, 0), tables=tables)
        n += 1
        decision = orjson.loads(outs[0].value)
        decisions.append(decision)
        statuses += [(dict(o.headers)["ce_id"].decode(), orjson.loads(o.value)) for o in outs[1:]]
        if decision["pass"]:
            approved += 1
            if approved % 3 == 0:  # a third of them wait at, or have left, their first checkpoint
                for scan in scans_for(decision, rng)[: 1 + approved % 2]:
                    for o in pipeline.on_scan(
                        decision["pass"]["pass_id"].encode(),
                        orjson.dumps(scan),
                        RecordMeta(topics.scans, partition, n, 0),
                        tables=tables,
                    ):
                        statuses.append((dict(o.headers)["ce_id"].decode(), orjson.loads(o.value)))
    engine = make_engine(settings.database_url)
    init_db(engine)
    with Session(engine) as session:
        project_batch(session, decisions=decisions, statuses=statuses)
    engine.dispose()
    return n


async def measure(url: str, settings: Settings, changes: int, screenshot: Path | None = None) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=os.environ.get("GC_CHROMIUM", "/usr/bin/chromium"), args=["--no-sandbox"]
        )
        page = await (await browser.new_context(viewport={"width": 1400, "height": 900})).new_page()
        started = time.perf_counter()
        await page.goto(url)
        await page.wait_for_function("window.gc && window.gc.ready", timeout=120_000)
        await page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        wall = time.perf_counter() - started
        first = await page.evaluate("gc.firstPaint")  # ms from navigation start, when the state was painted
        shown = await page.evaluate("gc.activePasses")
        places = await page.evaluate("gc.map.getOption().series[1].data.length")
        topic = Topics.with_prefix(settings.topic_prefix).risk
        latencies = []
        for i in range(changes):
            level = "high" if i % 2 == 0 else "low"
            entry = risk_entry("4201", level, at=datetime.now(UTC), is_region=Gazetteer.default().names_region)
            sent = time.time()
            await publish(settings, topic, [("4201", entry)])
            await page.wait_for_function(
                f"gc.levels['420100'] === {2 if level == 'high' else 0} && gc.lastLevels && gc.lastLevels.painted",
                timeout=30_000,
            )
            painted = await page.evaluate("gc.lastLevels.painted")
            latencies.append((painted - sent) * 1000)
            await page.evaluate("gc.lastLevels = null")
        if screenshot:
            await page.screenshot(path=str(screenshot))
        await browser.close()
    return {
        "first_paint_ms": round(first),
        "load_to_painted_wall_ms": round(wall * 1000),
        "active_passes_on_map": shown,
        "places_on_map": places,
        "risk_change_ms": [round(x) for x in latencies],
        "risk_change_median_ms": round(statistics.median(latencies)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard")
    parser.add_argument("--passes", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=7, help="risk changes timed (odd: Wuhan ends high)")
    parser.add_argument("--screenshot", type=Path, help="save the page there at the end")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gc-dashboard-bench-"))
    broker = TansuBroker(log_path=work / "tansu.log").start()
    try:
        settings = Settings(
            broker_url=broker.url,
            database_url=f"sqlite:///{work}/gc.db",
            data_dir=work,
            partitions=4,
            app_id="bench-dashboard",
        )
        topics = Topics.with_prefix(settings.topic_prefix)
        asyncio.run(ensure_topics(settings.connection, topics.public(), partitions=4))
        t = time.perf_counter()
        requests = fill(settings, args.passes)
        asyncio.run(publish(settings, topics.risk, [(e["adcode"], e) for e in RISKS]))  # as the worker saw them
        print(f"{args.passes} active passes from {requests} requests in the database ({time.perf_counter() - t:.0f} s)")
        result = _measure_a_dashboard(settings, work, args)
        result.update(passes=args.passes, at=datetime.now(UTC).isoformat(timespec="seconds"), load=os.getloadavg())
        print(json.dumps(result, indent=2))
        out = ROOT / "bench" / "out"
        out.mkdir(exist_ok=True)
        (out / "dashboard.json").write_text(json.dumps(result, indent=2) + "\n")
    finally:
        broker.stop()


def _measure_a_dashboard(settings: Settings, work: Path, args) -> dict:
    """Start `greenchannel dashboard` on the filled database, wait for its first read, measure it."""
    port = free_port()
    env = {
        **os.environ,
        "GC_BROKER_URL": settings.broker_url,
        "GC_DATABASE_URL": settings.database_url,
        "GC_DATA_DIR": str(work),
        "GC_PARTITIONS": "4",
        "GC_APP_ID": settings.app_id,
        "PYTHONPATH": str(ROOT),
    }
    with open(work / "dashboard.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "dashboard", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for_first_read(url, work)
        return asyncio.run(measure(url, settings, args.changes, args.screenshot))
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_for_first_read(url: str, work: Path) -> None:
    """Up, and its first database read done (the state then holds the passes)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "state", timeout=5) as answer:
                if json.loads(answer.read())["passes"]:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit((work / "dashboard.log").read_text()[-2000:])
        time.sleep(0.2)  # polling a condition with a deadline


if __name__ == "__main__":
    main()
