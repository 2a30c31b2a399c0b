"""`python -m bench.dashboard`: the operators' page with many passes in the projector's database.

For each `--passes` N (default 10,000) and each tree (this one, and each `--before DIR`, e.g. a
`git worktree` of an older commit), on the same database:
- the schema brought to that tree's head (`init_db`: at 1,000,000 passes, migration 0002's backfill);
- the server's work per refresh: `Dashboard.read_database`, the first and the median of 6 more;
- a projector batch of 2,000 new passes (their decisions and statuses) written by that tree's
  `project_batch` (the triggers' cost);
- cold first paint: from starting `greenchannel dashboard` to a page showing the database's passes;
- first paint: a page opened on the running dashboard, from navigation to the state drawn;
- the server's CPU while idle (its refreshes), as a share of one core, over 10 s;
- risk-change latency: from just before `risk set`'s publish to the frame showing Wuhan's new level.

The database is filled fast: 2,000 passes decided for real by the decision core (build_pipeline),
a third scanned at their first checkpoint and one request in five rejected, copied with new ids and
times spread over a week, bulk-inserted as the rows `project_batch` makes, at revision 0001 (the
schema both trees start from). An embedded Tansu broker carries the risk changes. Not part of
`make bench` (a million passes take minutes to fill, and it drives Chromium); no test asserts its
timings. Results: `--out` (bench/out/dashboard.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alembic import command  # noqa: E402

from models.operators import risk_entry  # noqa: E402
from models.passes import kafka_partition  # noqa: E402
from models.records import format_time, parse_time  # noqa: E402
from models.store.db import (  # noqa: E402
    _first_entry_per_checkpoint,
    _pass_row,
    _route_checkpoint_rows,
    _shipment_row,
    alembic_config,
    history_row,
    make_engine,
)
from models.store.tables import Checkpoint, Pass, PassEvent, Shipment  # noqa: E402
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

# The classes requested, and one request in five rejected (no essential goods, an unlisted firm, bad fields).
KINDS = ["P0", "P1", "P2", "P3"] * 3 + ["none", "unlisted", "bad_fields"]


@dataclass(slots=True)
class Template:
    """Real decisions and statuses of the decision core: what the bulk fill copies."""

    decisions: list[dict]
    statuses: list[tuple[str, dict]]  # (ce_id, PassStatus), in the order the worker sent them


def template(settings: Settings, passes: int, *, seed: int = 99) -> Template:
    """Decide requests until `passes` are approved; a third of them scanned at their first checkpoint."""
    pipeline = build_pipeline(settings)
    topics = pipeline.topics
    tables, rng = Tables.empty(), random.Random(seed - 94)
    scenario = Scenario(seed=seed, start=datetime(2020, 2, 25, tzinfo=UTC))
    for entry in scenario.enterprise_entries():  # the key list, so P2/P3 requests can qualify
        pipeline.on_enterprise(
            entry["credit_code"].encode(), orjson.dumps(entry), RecordMeta(topics.enterprises, 0, 0, 0)
        )
    for entry in RISKS:
        pipeline.on_risk(entry["adcode"].encode(), orjson.dumps(entry), RecordMeta(topics.risk, 0, 0, 0))
    out, approved, n = Template([], []), 0, 0
    while approved < passes:
        body = scenario.request(n, kind=rng.choice(KINDS))
        key = body["shipment_id"].encode()
        partition = kafka_partition(key, settings.partitions)
        outs = pipeline.on_request(key, orjson.dumps(body), RecordMeta(topics.requests, partition, n, 0), tables=tables)
        n += 1
        decision = orjson.loads(outs[0].value)
        out.decisions.append(decision)
        out.statuses += [(dict(o.headers)["ce_id"].decode(), orjson.loads(o.value)) for o in outs[1:]]
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
                        out.statuses.append((dict(o.headers)["ce_id"].decode(), orjson.loads(o.value)))
    return out


def copies(
    t: Template, passes: int, serials: Counter, *, first: int = 0, spread: timedelta = timedelta(days=7)
) -> Template:
    """`passes` passes copied from `t`'s, the `first`th on: new shipment, pass and event ids (each
    pass its issuer's next serial, counted in `serials`), times spread over `spread` (a week of
    flow), everything else as the decision core made it."""
    events: dict[str, list[tuple[str, dict]]] = {}
    for ce_id, e in t.statuses:
        events.setdefault(e["pass_id"], []).append((ce_id, e))
    out, i, r = Template([], []), first, 0
    while i < first + passes:
        for d in t.decisions:
            if i >= first + passes:
                break
            shift = spread * ((i - first) / passes) - spread  # the week before the template's times
            d2 = {**d, "shipment_id": f"{d['shipment_id']}~{r}~{first}", "decided_at": _shifted(d["decided_at"], shift)}
            if the_pass := d["pass"]:
                serials[the_pass["issuer"]] += 1
                old, new = the_pass["pass_id"], f"{the_pass['issuer']}{serials[the_pass['issuer']]:06d}"
                d2["pass"] = {**the_pass, "pass_id": new}
                out.statuses += [
                    (f"{ce_id}~{r}~{first}", {**e, "pass_id": new, "at": _shifted(e["at"], shift)})
                    for ce_id, e in events.get(old, ())
                ]
                i += 1
            out.decisions.append(d2)
        r += 1
    return out


def _shifted(at: str, by: timedelta) -> str:
    return format_time(parse_time(at) + by)


def bulk_fill(url: str, t: Template, passes: int, serials: Counter, *, chunk: int = 20_000) -> dict:
    """The database at revision 0001 (the schema before the aggregates, which both the before and
    the after code start from) holding `passes` passes copied from `t`, by plain bulk INSERTs of the
    rows `project_batch` writes: what it would make of them, without its upserts."""
    engine = make_engine(url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection=connection), "0001")
    counts = {"shipments": 0, "passes": 0, "events": 0}
    try:
        with engine.begin() as connection:
            checkpoints = [c for d in t.decisions if d["pass"] for c in _route_checkpoint_rows(d["pass"])]
            connection.execute(Checkpoint.__table__.insert(), _first_entry_per_checkpoint(checkpoints))
        for start in range(0, passes, chunk):
            part = copies(t, min(chunk, passes - start), serials, first=start)
            shipments, rows, events = _rows(part)
            with engine.begin() as connection:
                connection.execute(Shipment.__table__.insert(), shipments)
                connection.execute(Pass.__table__.insert(), rows)
                connection.execute(PassEvent.__table__.insert(), events)
            counts["shipments"] += len(shipments)
            counts["passes"] += len(rows)
            counts["events"] += len(events)
    finally:
        engine.dispose()
    return counts


def _rows(t: Template) -> tuple[list[dict], list[dict], list[dict]]:
    shipments = [_shipment_row(d) for d in t.decisions]
    passes = {d["pass"]["pass_id"]: _pass_row(d["shipment_id"], d["pass"]) for d in t.decisions if d["pass"]}
    for row in passes.values():
        row.update(status=None, status_at=None, checkpoint_id=None)
    events = []
    for ce_id, e in t.statuses:
        events.append(history_row(ce_id, e))  # the projector's own row
        at = events[-1]["at"]
        passes[e["pass_id"]].update(status=e["status"], status_at=at, checkpoint_id=e.get("checkpoint_id"))
    return shipments, list(passes.values()), events


# Run in the tree under test (before or after), on the filled database: the schema brought to that
# tree's head (migration 0002 backfills the aggregates), the dashboard's database read timed, then
# one projector batch of new passes written with that tree's project_batch.
IN_TREE = r"""
import json, pickle, statistics, sys, time
from sqlmodel import Session
from models.store.db import init_db, make_engine, project_batch
from streams.dashboard import Dashboard
from streams.settings import Settings

url, batch_file = sys.argv[1], sys.argv[2]
engine = make_engine(url)
t = time.perf_counter()
init_db(engine)
migrate = time.perf_counter() - t
board = Dashboard(Settings(database_url=url))
times = []
for _ in range(7):
    t = time.perf_counter()
    panels = board.read_database()
    times.append(time.perf_counter() - t)
decisions, statuses = pickle.load(open(batch_file, "rb"))
t = time.perf_counter()
with Session(engine) as session:
    project_batch(session, decisions=decisions, statuses=statuses)
write = time.perf_counter() - t
print(json.dumps({
    "migrate_s": round(migrate, 2),
    "refresh_first_ms": round(times[0] * 1000, 1),
    "refresh_median_ms": round(statistics.median(times[1:]) * 1000, 1),
    "active_passes": sum(p[2] for p in panels["passes"]),
    "statuses": panels["flow"]["statuses"],
    "board_rows": len(panels["board"]),
    "hour_rows": len(panels["flow"]["hours"]),
    "projector_batch_records": len(decisions) + len(statuses),
    "projector_batch_s": round(write, 3),
    "projector_records_per_s": round((len(decisions) + len(statuses)) / write),
}))
board.engine.dispose()
engine.dispose()
"""


async def measure(start, settings: Settings, changes: int, screenshot: Path | None = None) -> dict:
    """`start()` starts the dashboard and returns its URL. Cold: from its start to the page painting
    the database's figures; warm: a page opened on the running dashboard; then the server's CPU
    while idle (its refreshes), and the risk-change latency."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=os.environ.get("GC_CHROMIUM", "/usr/bin/chromium"), args=["--no-sandbox"]
        )
        # The page's CSP forbids eval, which wait_for_function("...") is.
        context = await browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        cold_page = await context.new_page()
        started = time.perf_counter()
        url, pid, log = start()
        await asyncio.to_thread(_wait_up, url, log)
        up = time.perf_counter()
        await cold_page.goto(url)
        await cold_page.wait_for_function("window.gc && gc.ready && gc.activePasses > 0", timeout=900_000)
        await cold_page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        cold, cold_from_up = time.perf_counter() - started, time.perf_counter() - up
        await cold_page.close()
        page = await context.new_page()
        started = time.perf_counter()
        await page.goto(url)
        await page.wait_for_function("window.gc && window.gc.ready", timeout=120_000)
        await page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        wall = time.perf_counter() - started
        first = await page.evaluate("gc.firstPaint")  # ms from navigation start, when the state was painted
        shown = await page.evaluate("gc.activePasses")
        places = await page.evaluate("gc.map.getOption().series[1].data.length")
        cpu = await cpu_share(pid, 10.0)
        latencies = await risk_changes(page, settings, changes)
        if screenshot:
            await page.screenshot(path=str(screenshot))
        await browser.close()
    return {
        "cold_first_paint_ms": round(cold * 1000),
        "cold_first_paint_from_listening_ms": round(cold_from_up * 1000),
        "first_paint_ms": round(first),
        "load_to_painted_wall_ms": round(wall * 1000),
        "server_cpu_share_idle": round(cpu, 3),
        "active_passes_on_map": shown,
        "places_on_map": places,
        "risk_change_ms": [round(x) for x in latencies],
        "risk_change_median_ms": round(statistics.median(latencies)) if latencies else None,
    }


async def cpu_share(pid: int, seconds: float) -> float:
    """The share of one core the process used over `seconds` (a sampling window)."""

    def used() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before, t = used(), time.perf_counter()
    await asyncio.sleep(seconds)  # a sampling window, not a synchronisation
    return (used() - before) / (time.perf_counter() - t)


async def risk_changes(page, settings: Settings, changes: int) -> list[float]:
    """ms from just before `risk set`'s publish to the frame showing Wuhan's new level, per change."""
    topic = Topics.with_prefix(settings.topic_prefix).risk
    latencies = []
    for _ in range(changes):
        level = "low" if await page.evaluate("gc.levels['420100']") == 2 else "high"  # a change, whatever it was
        entry = risk_entry("4201", level, at=datetime.now(UTC), is_region=Gazetteer.default().names_region)
        sent = time.time()
        await publish(settings, topic, [("4201", entry)])
        await page.wait_for_function(
            f"gc.levels['420100'] === {2 if level == 'high' else 0} && gc.lastLevels && gc.lastLevels.painted",
            timeout=60_000,
        )
        painted = await page.evaluate("gc.lastLevels.painted")
        latencies.append((painted - sent) * 1000)
        await page.evaluate("gc.lastLevels = null")
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard")
    parser.add_argument("--passes", type=int, nargs="+", default=[10_000], help="one run per size")
    parser.add_argument("--template", type=int, default=2_000, help="passes decided for real, then copied")
    parser.add_argument("--before", type=Path, action="append", default=[], help="another tree to run the same on")
    parser.add_argument("--changes", type=int, default=3, help="risk changes timed (odd: Wuhan ends high)")
    parser.add_argument("--screenshot", type=Path, help="save the page there at the end (of each tree: a suffix)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "dashboard.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gc-dashboard-bench-"))
    broker = TansuBroker(log_path=work / "tansu.log").start()
    results = []
    try:
        settings = Settings(
            broker_url=broker.url,
            database_url=f"sqlite:///{work}/base.db",
            data_dir=work,
            partitions=4,
            app_id="bench-dashboard",
        )
        topics = Topics.with_prefix(settings.topic_prefix)
        asyncio.run(ensure_topics(settings.connection, topics.public(), partitions=4))
        asyncio.run(publish(settings, topics.risk, [(e["adcode"], e) for e in RISKS]))  # as the worker saw them
        t = time.perf_counter()
        real = template(settings, args.template)
        took = time.perf_counter() - t
        print(f"template: {len(real.decisions)} decisions, {len(real.statuses)} statuses ({took:.0f} s)")
        trees = [("after", ROOT)] + [(f"before:{p.name}", p.resolve()) for p in args.before]
        for passes in args.passes:
            results += _one_size(settings, work, real, passes, trees, args)
            args.out.parent.mkdir(exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        broker.stop()
    shutil.rmtree(work, ignore_errors=True)  # kept when it failed, for its logs
    print(json.dumps(results, indent=2))


def _one_size(settings: Settings, work: Path, real: Template, passes: int, trees, args) -> list[dict]:
    base = work / "base.db"
    base.unlink(missing_ok=True)
    serials: Counter = Counter()
    t = time.perf_counter()
    counts = bulk_fill(f"sqlite:///{base}", real, passes, serials)
    fill_s = time.perf_counter() - t
    print(f"{passes:,} passes: {counts} in {fill_s:.0f} s ({base.stat().st_size / 1e9:.2f} GB)", flush=True)
    batch = copies(real, 2_000, serials, first=passes)
    (work / "batch.pickle").write_bytes(pickle.dumps((batch.decisions, batch.statuses)))
    out = []
    for label, root in trees:
        db = work / f"{label.replace(':', '-')}.db"
        shutil.copyfile(base, db)
        tree = settings.model_copy(update={"database_url": f"sqlite:///{db}"})
        env = {**os.environ, "PYTHONPATH": str(root)}
        done = subprocess.run(
            [sys.executable, "-c", IN_TREE, tree.database_url, str(work / "batch.pickle")],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise SystemExit(f"{label}: {done.stderr[-3000:]}")
        result = {"tree": label, "passes": passes, "fill_s": round(fill_s), **counts, **json.loads(done.stdout)}
        shot = (
            args.screenshot.with_name(f"{args.screenshot.stem}-{passes}-{label.split(':')[0]}.png")
            if args.screenshot
            else None
        )
        result.update(_measure_a_dashboard(tree, work, root, args.changes, shot))
        result.update(at=datetime.now(UTC).isoformat(timespec="seconds"), load=os.getloadavg())
        print(json.dumps(result), flush=True)
        out.append(result)
        db.unlink()
    return out


def _measure_a_dashboard(settings: Settings, work: Path, root: Path, changes: int, shot: Path | None) -> dict:
    """Start `greenchannel dashboard` of the tree at `root` on the database and measure it."""
    port = free_port()
    env = {
        **os.environ,
        "GC_BROKER_URL": settings.broker_url,
        "GC_DATABASE_URL": settings.database_url,
        "GC_DATA_DIR": str(work),
        "GC_PARTITIONS": "4",
        "GC_APP_ID": settings.app_id,
        "GC_DASHBOARD_TOKEN": "bench-dashboard-token",
        "PYTHONPATH": str(root),
    }
    procs = []

    def start() -> tuple[str, int, Path]:
        log = open(work / "dashboard.log", "wb")  # noqa: SIM115 — closed with the process below
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "streams.cli", "dashboard", "--port", str(port)],
                    env=env,
                    cwd=root,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
        return f"http://127.0.0.1:{port}/?token={env['GC_DASHBOARD_TOKEN']}", procs[0][0].pid, work / "dashboard.log"

    try:
        return asyncio.run(measure(start, settings, changes, shot))
    finally:
        for proc, log in procs:
            proc.terminate()
            proc.wait(30)
            log.close()


def _wait_up(url: str, log: Path) -> None:
    """Until the dashboard answers its page (it starts listening before its first database read)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:  # it answers (the redirect that sets the cookie, followed without it)
            return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer: {log.read_text()[-3000:]}")
        time.sleep(0.05)  # polling a condition with a deadline


if __name__ == "__main__":
    main()
