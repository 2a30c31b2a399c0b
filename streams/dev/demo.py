"""`greenchannel demo`: the whole system on one machine, with simulated firms and checkpoints.

Starts the embedded broker, a worker process and a projector process beside it (and, after the
first wave of requests, a checkpoint station for the two busiest border crossings), then plays a
day of February 2020: firms request passes, checkpoints verify tokens offline and scan trucks
along their routes, and an operator raises Hunan to high risk half-way through. Ends with a
report read back from the database the projector wrote, once it holds every decision and
status event the demo saw on the topics.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlmodel import Session, func, select

from models.operators import risk_entry
from models.passes import ACTIVE, InvalidToken, verify_token
from models.records import format_time, parse_time
from models.store.db import checkpoint_dwell, count_by, make_engine
from models.store.tables import Pass, PassEvent, Shipment
from routing import Gazetteer

from ..handlers import Topics, clock_command
from ..keys import load_public_key
from ..settings import Settings
from ..station.web import announced_url
from ..topics import ensure_topics
from .broker import TansuBroker, free_port
from .road import (
    BY_GATEWAY,
    CROSSING,
    ROAD_TRUCKS,
    Road,
    crossed,
    departed,
    first_border,
    first_crossings,
    followed,
    keep_time,
    put_on_the_road,
    road_day,
    road_requests,
    send_crossings,
)
from .simulator import Scenario

__all__ = ["run_demo"]

ROOT = Path(__file__).resolve().parents[2]


class Observer:
    """Everything the demo reads back from the output topics."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.decisions: dict[str, dict] = {}
        self.dead = 0
        self.status: list[dict] = []
        self.status_ids: set[str] = set()  # CloudEvents ids: one pass_event row each
        self.answered: set[str] = set()
        self.routes: dict[str, dict] = {}  # pass_id -> current route
        self.tokens: dict[str, str] = {}
        self.suspended: set[str] = set()
        self.last: dict[str, str] = {}  # pass_id -> its latest status
        self.clock_expired = 0
        self.last_status = time.monotonic()

    def take(self, topic: str, value: bytes, headers=()) -> None:
        obj = orjson.loads(value)
        if topic == self.topics.decisions:
            self.decisions[obj["shipment_id"]] = obj
            if obj["pass"]:
                self.routes[obj["pass"]["pass_id"]] = obj["pass"]["route"]
                self.tokens[obj["pass"]["pass_id"]] = obj["pass"]["token"]
        elif topic == self.topics.deadletter:
            self.dead += 1
        else:
            self.status.append(obj)
            self.status_ids.add(dict(headers or ()).get("ce_id", b"").decode())
            self.last_status = time.monotonic()
            self.last[obj["pass_id"]] = obj["status"]
            self.clock_expired += obj["cause"].startswith("clock:")
            if obj["cause"].startswith("scan:"):
                self.answered.add(obj["cause"][5:])
            if obj["status"] == "rerouted":
                self.routes[obj["pass_id"]] = obj["route"]
                self.tokens[obj["pass_id"]] = obj["token"]
                self.suspended.discard(obj["pass_id"])
            elif obj["status"] == "suspended":
                self.suspended.add(obj["pass_id"])

    def table(self, phase: str, sent: int, scans: int, started: float) -> Table:
        t = Table(title=f"greenchannel demo — {phase}", show_header=False)
        outcomes = Counter(
            d["decision"] if d["decision"] == "rejected" else d["priority"] for d in self.decisions.values()
        )
        statuses = Counter(s["status"] for s in self.status)
        elapsed = time.monotonic() - started
        t.add_row("requests sent", str(sent))
        t.add_row("decisions", f"{len(self.decisions)}  ({len(self.decisions) / max(elapsed, 1e-9):.0f}/s)")
        t.add_row("approved by class", "  ".join(f"{k} {outcomes[k]}" for k in ("P0", "P1", "P2", "P3")))
        t.add_row("rejected", str(outcomes["rejected"]))
        t.add_row("dead letters", str(self.dead))
        t.add_row("scans answered", f"{len(self.answered)}/{scans}")
        t.add_row("status events", "  ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
        return t


async def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"demo: timed out waiting for {what}")
        await asyncio.sleep(0.05)


class DemoDay:
    """The played day: the demo's producer, its reader of the output topics, what it has sent, and
    which checkpoints each truck has passed."""

    def __init__(self, settings: Settings, seed: int) -> None:
        self.settings = settings
        self.seed = seed
        self.topics = Topics.with_prefix(settings.topic_prefix)
        self.obs = Observer(self.topics)
        self.scenario = Scenario(seed=seed)
        self.rng = random.Random(seed)
        self.sent = self.scans_sent = self.scan_no = 0
        self.phase = "starting"
        self.public_key = None
        self.visited: dict[str, set[str]] = {}  # pass_id -> the checkpoints its truck has passed
        self.clock: datetime | None = None  # the channel's clock once the day is played

    async def open(self) -> None:
        """Read the decisions, status events and dead letters from the beginning; open the producer."""
        settings, topics = self.settings, self.topics
        self.consumer = AIOKafkaConsumer(**settings.connection.kwargs(), enable_auto_commit=False)
        await self.consumer.start()
        parts = [
            TopicPartition(t, p)
            for t in (topics.decisions, topics.status, topics.deadletter)
            for p in range(settings.partitions)
        ]
        self.consumer.assign(parts)
        await self.consumer.seek_to_beginning(*parts)
        self.reader = asyncio.get_running_loop().create_task(self._consume())
        self.producer = AIOKafkaProducer(**settings.connection.kwargs(), linger_ms=2)
        await self.producer.start()
        self.started = time.monotonic()

    async def _consume(self) -> None:
        while True:
            for tp, records in (await self.consumer.getmany(timeout_ms=100)).items():
                for r in records:
                    self.obs.take(tp.topic, r.value, r.headers)

    async def close(self) -> None:
        self.reader.cancel()
        await self.producer.stop()
        await self.consumer.stop()

    def table(self) -> Table:
        return self.obs.table(self.phase, self.sent, self.scans_sent, self.started)

    async def paint(self, live: Live) -> None:
        while True:
            live.update(self.table())
            await asyncio.sleep(0.25)

    async def send(self, topic: str, key: str, body: dict | bytes) -> None:
        await self.producer.send(topic, body if isinstance(body, bytes) else orjson.dumps(body), key=key.encode())

    async def play(self, shipments: int, after_wave1) -> None:
        """The day's phases, in order; `after_wave1` gets the routes of wave 1's passes."""
        self.phase = "operators load the key-enterprise list and risk levels"
        await self.load_reference_data()
        half = shipments // 2
        self.phase = "firms send requests (wave 1)"
        await self.wave(range(half), "wave 1 decisions")

        self.phase = "trucks reach the first checkpoints"
        wave1 = [d["pass"] for d in self.obs.decisions.values() if d["pass"]]
        await asyncio.to_thread(after_wave1, [p["route"] for p in wave1])
        for p in wave1:
            await self.drive(p["pass_id"], p["plate"], 0.5)
        await self.producer.flush()

        self.phase = "operator: Hunan (43) becomes high risk"
        await self.send_risk("43", "high", self.scenario.start + timedelta(minutes=half, seconds=30))
        await self.producer.flush()
        await _wait(lambda: time.monotonic() - self.obs.last_status > 1.5, 60, "re-evaluation to settle")

        self.phase = "firms send requests (wave 2)"
        await self.wave(range(half, shipments), "wave 2 decisions")
        await self.drive_to_destinations()
        await self.drive_multi_trips_home_and_out()

        self.phase = "the channel's clock passes the end of every pass's validity"
        self.clock = await _tick_past_validity(self.producer, self.topics, self.obs, self.settings.partitions)
        self.phase = "done"

    async def load_reference_data(self) -> None:
        """The key-enterprise list and the opening risk levels; then the key pair the checkpoints verify with."""
        for entry in self.scenario.enterprise_entries():
            await self.send(self.topics.enterprises, entry["credit_code"], entry)
        opening = self.scenario.start - timedelta(hours=1)
        for adcode, level in (("4201", "high"), ("4202", "medium"), ("4403", "medium"), ("3301", "medium")):
            await self.send_risk(adcode, level, opening)
        await self.producer.flush()
        self.public_key = load_public_key(self.settings.keys_path)

    async def send_risk(self, adcode: str, level: str, at) -> None:
        """The operator's change, validated as `greenchannel risk set` validates it."""
        entry = risk_entry(adcode, level, at=at, is_region=Gazetteer.default().names_region)
        await self.send(self.topics.risk, entry["adcode"], entry)

    async def wave(self, numbers: range, what: str) -> None:
        """Firms send these requests (every hundredth malformed); wait for all their decisions."""
        for n in numbers:
            await self.send(
                self.topics.requests,
                f"SHP-{self.seed}-{n:07d}",
                self.scenario.malformed(n) if n % 100 == 99 else self.scenario.request(n),
            )
            self.sent += 1
        await self.producer.flush()
        await _wait(lambda: len(self.obs.decisions) + self.obs.dead >= self.sent, 120, what)

    async def drive_to_destinations(self) -> None:
        self.phase = "trucks drive on to their destinations"
        for d in self.obs.decisions.values():
            if d["pass"]:
                await self.drive(d["pass"]["pass_id"], d["pass"]["plate"], 1.0)
        await self.producer.flush()
        await _wait(lambda: len(self.obs.answered) >= self.scans_sent, 120, "scan answers")

    async def drive_multi_trips_home_and_out(self) -> None:
        self.phase = "multi-trip trucks drive home and out again"
        for d in self.obs.decisions.values():
            if d["pass"] and d["pass"]["trip"] == "multi":
                await self.drive_back_and_out(d["pass"])
        await self.producer.flush()
        await _wait(lambda: len(self.obs.answered) >= self.scans_sent, 120, "scan answers")

    def verified(self, pass_id: str) -> bool:
        """A checkpoint verifies the token offline before it scans (人、车、证一致)."""
        try:
            verify_token(self.obs.tokens[pass_id], self.public_key)
        except InvalidToken:
            return False
        return True

    async def scan(self, base: dict, suffix: str, kind: str, at) -> None:
        """An arrival shows the pass's current token (a plate alone proves nothing: `no_token`); the
        departure after it needs none."""
        self.scan_no += 1
        body = {**base, "scan_id": f"d{self.scan_no}{suffix}", "kind": kind, "scanned_at": format_time(at)}
        if kind == "arrival":
            body["token"] = self.obs.tokens[base["pass_id"]]
        await self.send(self.topics.scans, base["pass_id"], body)
        self.scans_sent += 1

    async def drive(self, pass_id: str, decision_plate: str, limit: float) -> None:
        """Scan the truck through the checkpoints of its current route, up to a fraction of them."""
        if pass_id in self.obs.suspended:
            return
        cps = self.obs.routes[pass_id]["checkpoints"]
        seen = self.visited.setdefault(pass_id, set())
        todo = [c for c in cps if c["checkpoint_id"] not in seen][: max(0, int(len(cps) * limit + 0.999)) - len(seen)]
        for cp in todo:
            if not self.verified(pass_id):
                continue
            eta = parse_time(cp["eta"])
            plate = decision_plate if self.rng.random() > 0.03 else decision_plate[:-1] + "0"
            base = {"checkpoint_id": cp["checkpoint_id"], "pass_id": pass_id, "plate": plate}
            await self.scan(base, "a", "arrival", eta)
            if plate != decision_plate:  # held, inspected, scanned again with the right plate
                await self.scan({**base, "plate": decision_plate}, "r", "arrival", eta)
            seen.add(cp["checkpoint_id"])
            if cp is cps[-1]:
                break
            dwell = timedelta(seconds=self.rng.choice([self.rng.randint(90, 600), self.rng.randint(600, 1500)]))
            await self.scan({**base, "plate": decision_plate}, "d", "departure", eta + dwell)

    async def drive_back_and_out(self, the_pass: dict) -> None:
        """A multi-trip truck at its destination drives home through the same border checkpoints,
        in reverse, and out again: trip 2, verified like the first (until its pass expires)."""
        pass_id = the_pass["pass_id"]
        cps = self.obs.routes[pass_id]["checkpoints"]
        if pass_id in self.obs.suspended or cps[-1]["checkpoint_id"] not in self.visited.get(pass_id, ()):
            return
        for cp, kind, when in self.trip_home_and_out(the_pass, cps):
            if not self.verified(pass_id):  # verified offline before each scan, as on the way out
                return
            base = {"checkpoint_id": cp["checkpoint_id"], "pass_id": pass_id, "plate": the_pass["plate"]}
            await self.scan(base, kind[0], kind, when)

    def trip_home_and_out(self, the_pass: dict, cps: list[dict]) -> list[tuple[dict, str, datetime]]:
        """The scans of the way home (the border checkpoints in reverse) and out again to the destination."""
        start, arrived = parse_time(the_pass["valid_from"]), parse_time(cps[-1]["eta"])
        leave = arrived + timedelta(hours=2)  # unloaded and loaded again
        home = leave + (arrived - start)
        borders = cps[:-1]

        def dwell() -> timedelta:
            return timedelta(minutes=self.rng.randint(2, 20))

        scans = [(cps[-1], "departure", leave)]
        for cp in reversed(borders):  # the way back: the same border checkpoints, in reverse
            back = leave + (arrived - parse_time(cp["eta"]))
            scans += [(cp, "arrival", back), (cp, "departure", back + dwell())]
        for cp in borders:  # and out again
            out = home + timedelta(hours=2) + (parse_time(cp["eta"]) - start)
            scans += [(cp, "arrival", out), (cp, "departure", out + dwell())]
        scans.append((cps[-1], "arrival", home + timedelta(hours=2) + (arrived - start)))
        return scans


async def _play(
    settings: Settings, shipments: int, seed: int, console: Console, after_wave1=lambda routes: None
) -> dict:
    """Play the day with a live table of its figures; return what was sent and the observer."""
    day = DemoDay(settings, seed)
    await day.open()
    with Live(day.table(), console=console, refresh_per_second=4) as live:
        painter = asyncio.get_running_loop().create_task(day.paint(live))
        try:
            await day.play(shipments, after_wave1)
            live.update(day.table())
        finally:
            painter.cancel()
            await day.close()
    elapsed = time.monotonic() - day.started
    return {"sent": day.sent, "scans": day.scans_sent, "elapsed": elapsed, "observer": day.obs, "clock": day.clock}


async def _tick_past_validity(
    producer: AIOKafkaProducer, topics: Topics, obs: Observer, partitions: int
) -> datetime | None:
    """The demo's day is in 2020, so its worker keeps no wall clock (GC_CLOCK_SECONDS=0): the demo
    moves the channel's clock itself, as a worker's clock would, to just after the last validity
    of its passes. Every pass not ended by then expires without a scan. Returns the clock's time."""
    ends = [parse_time(d["pass"]["valid_until"]) for d in obs.decisions.values() if d["pass"]]
    if not ends:
        return None
    still = sum(status in ACTIVE for status in obs.last.values())
    want = obs.clock_expired + still
    clock = max(ends) + timedelta(seconds=1)
    tick = clock_command(clock)
    for p in range(partitions):
        await producer.send(topics.pass_events, tick, key=b"clock", partition=p)
    await producer.flush()
    await _wait(lambda: obs.clock_expired >= want, 60, f"{still} passes expired by the clock")
    return clock


def _projected(engine, obs: Observer, timeout: float, alive) -> tuple[bool, str]:
    """Wait until the database holds a row for every decision and status event seen on the topics."""
    want = (len(obs.decisions), len(obs.status_ids))
    deadline = time.monotonic() + timeout
    while True:
        with Session(engine) as session:
            got = (
                session.exec(select(func.count()).select_from(Shipment)).one(),
                session.exec(select(func.count()).select_from(PassEvent)).one(),
            )
        if got[0] >= want[0] and got[1] >= want[1]:
            return True, ""
        if time.monotonic() > deadline or not alive():
            return False, (
                f"{got[0]}/{want[0]} decisions and {got[1]}/{want[1]} status events in the database "
                f"after {timeout:.0f} s (projector {'running' if alive() else 'exited'})"
            )
        time.sleep(0.1)  # polling a condition with a deadline


def _report(settings: Settings, played: dict, console: Console, projector_alive) -> bool:
    """The report, from the database; False if the projection did not catch up."""
    obs: Observer = played["observer"]
    engine = make_engine(settings.database_url)
    caught_up, why = _projected(engine, obs, 60, projector_alive)
    if not caught_up:
        console.print(f"[red]the projection did not catch up: {why}; the report below is partial[/red]")
    with Session(engine) as session:
        decisions = Counter()
        for s in session.exec(select(Shipment)):
            decisions[(s.decision, s.priority if s.decision == "approved" else s.reasons[0]["code"])] += 1
        statuses = count_by(session, Pass.status)
        ever = {
            status: n
            for status, n in session.exec(
                select(PassEvent.status, func.count(func.distinct(PassEvent.pass_id))).group_by(PassEvent.status)
            )
        }
        # A multi-trip pass reaching its destination completes a trip and stays valid (the demo
        # drives it home and out again): counted apart from the delivered single-trip passes.
        trips_done = session.exec(
            select(func.count(func.distinct(PassEvent.pass_id))).where(PassEvent.reason == "trip_completed")
        ).one()
        trips_total = session.exec(select(func.count()).where(PassEvent.reason == "trip_completed")).one()
        dwell = checkpoint_dwell(session)

    t = Table(title="greenchannel demo report (from the database)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("requests sent", str(played["sent"]))
    for cls in ("P0", "P1", "P2", "P3"):
        t.add_row(f"approved {cls}", str(decisions[("approved", cls)]))
    for (decision, why), n in sorted(decisions.items()):
        if decision == "rejected":
            t.add_row(f"rejected: {why}", str(n))
    t.add_row("dead letters", str(obs.dead))
    t.add_row("passes delivered (single trip)", str(statuses.get("delivered", 0)))
    t.add_row("multi-trip passes, a trip completed", str(trips_done))
    t.add_row("multi-trip trips completed", str(trips_total))
    t.add_row("passes expired", f"{statuses.get('expired', 0)} ({obs.clock_expired} by the clock, without a scan)")
    t.add_row("passes ever held", str(ever.get("held", 0)))
    t.add_row("passes rerouted", str(ever.get("rerouted", 0)))
    t.add_row("passes ever suspended", str(ever.get("suspended", 0)))
    total = sum(n for _, n, _, _ in dwell)
    mean = sum(n * avg for _, n, avg, _ in dwell) / total if total else 0.0
    over = sum(o for *_, o in dwell)
    t.add_row("checkpoint departures", str(total))
    t.add_row("mean checkpoint dwell", f"{mean / 60:.1f} min")
    t.add_row("dwells over 15 min", f"{over} ({over / total:.0%})" if total else "0")
    t.add_row("wall time", f"{played['elapsed']:.1f} s")
    console.print(t)
    return caught_up


@dataclass
class Page:
    """A page the demo serves, for a person to open; `kind` names it in GC_DATA_DIR/demo/demo.json."""

    kind: str
    name: str
    url: str


def busiest_checkpoints(routes: list[dict], n: int = 2) -> list[str]:
    """The border checkpoints most routes cross."""
    crossings = Counter(
        c["checkpoint_id"] for r in routes for c in r["checkpoints"] if c["checkpoint_id"].startswith("BX-")
    )
    return [cp for cp, _ in crossings.most_common(n)]


def _start_station(env: dict, data_dir: Path, console: Console, ids: list[str], clock) -> tuple[subprocess.Popen, Page]:
    """A station for these checkpoints, its clock on the demo's day."""
    args = ["--port", "0", "--clock", format_time(clock)] + [a for cp in ids for a in ("--id", cp)]
    proc = _start("checkpoint", env, data_dir, console, *args)
    url = announced_url(data_dir / "checkpoint.log", lambda: proc.poll() is None)
    name = f"checkpoint station {' + '.join(ids)}"
    return proc, Page("station", name, url + "?token=" + quote(env["GC_STATION_TOKEN"]))


def run_demo(
    settings: Settings, *, shipments: int = 300, seed: int = 2020, broker_url: str | None = None, serve: bool = False
) -> int:
    console = Console()
    data_dir = _fresh_data_dir(settings)
    broker = None
    if broker_url is None:
        broker = TansuBroker(log_path=data_dir / "broker.log").start()
        broker_url = broker.url
        console.print(f"embedded broker (Tansu) at {broker.bootstrap}")
    settings = settings.model_copy(
        update={
            "broker_url": broker_url,
            "database_url": f"sqlite:///{data_dir / 'greenchannel.db'}",
            "app_id": f"greenchannel-demo-{int(time.time())}",
            "key_dir": settings.keys_path.resolve(),
        }
    )
    env = _process_env(settings, data_dir)
    _prepare_topics_and_keys(settings)
    procs = {name: _start(name, env, data_dir, console) for name in ("worker", "projector")}
    pages: list[Page] = []  # each page the demo serves: one line each to add another
    port = free_port()
    procs["dashboard"] = _start("dashboard", env, data_dir, console, "--port", str(port))
    pages.append(
        Page("dashboard", "operators' dashboard", f"http://127.0.0.1:{port}/?token={quote(env['GC_DASHBOARD_TOKEN'])}")
    )
    console.print(f"[bold]dashboard at {pages[0].url}[/bold] (open it while the demo runs)")
    procs["gateway"], page, gateway = _start_gateway(settings, env, data_dir, console, seed)
    pages.append(page)
    public = "public crossing times (open data; its feed: /public/v1/crossings)"
    pages.append(Page("public", public, gateway.url + "public/crossings"))

    def start_pages(routes: list[dict]) -> None:
        procs["checkpoint"], page = _start_station(
            env, data_dir, console, busiest_checkpoints(routes), Scenario(seed=seed).start + timedelta(hours=4)
        )
        pages.append(page)
        console.print(f"[bold]{page.name} at {page.url}[/bold]")

    try:
        played = asyncio.run(_play(settings, shipments, seed, console, after_wave1=start_pages))
        caught_up = _report(settings, played, console, lambda: procs["projector"].poll() is None)
        road = None
        if serve and played["clock"] is not None:
            road = _road(settings, env, data_dir, console, procs, pages, played["clock"], seed, shipments, gateway)
        _print_pages(settings, pages, data_dir, console, road)
        if serve:
            _serve(settings, road, console)
    finally:
        _stop(procs, broker)
    return 0 if caught_up else 1


DEMO_FIRM = "demo-logistics"


def _start_gateway(settings: Settings, env: dict, data_dir: Path, console: Console, seed: int):
    """The firms' gateway, with a demo firm that carries for the scenario's first shippers and a
    key of its own, printed for a person to sign in to the portal or call the API with curl."""
    from models.store import firms as rows
    from models.store.db import init_db

    scenario = Scenario(seed=seed)
    shippers = list(dict.fromkeys(scenario.request(n)["shipper"]["credit_code"] for n in range(40)))[:8]
    engine = make_engine(settings.database_url)
    init_db(engine)
    now = datetime.now(UTC)
    with Session(engine) as s:
        rows.create_firm(
            s,
            firm_id=DEMO_FIRM,
            name="示范物流 Demo Logistics",
            credit_code=shippers[0],
            acts_for=shippers[1:],
            requests_per_minute=600,
            now=now,
        )
        key = rows.create_key(s, firm_id=DEMO_FIRM, now=now)
    engine.dispose()
    port = free_port()
    proc = _start("gateway", env, data_dir, console, "--port", str(port))
    url = f"http://127.0.0.1:{port}/"
    console.print(f"[bold]firms' gateway at {url}[/bold] (API docs {url}docs); firm {DEMO_FIRM}'s API key: {key.text}")
    page = Page("portal", f"firms' portal (firm {DEMO_FIRM}, key {key.text}; API docs {url}docs)", url)
    return proc, page, DemoGateway(url, key.text, shippers[0])


@dataclass(frozen=True)
class DemoGateway:
    """The demo's gateway: its address, and the demo firm's key and own credit code."""

    url: str
    key: str
    shipper: str


def _fresh_data_dir(settings: Settings) -> Path:
    """GC_DATA_DIR/demo, without the last demo's database and station stores."""
    data_dir = Path(settings.data_dir).resolve() / "demo"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "greenchannel.db").unlink(missing_ok=True)
    (data_dir / "demo.json").unlink(missing_ok=True)
    shutil.rmtree(data_dir / "stations", ignore_errors=True)  # a station's store of the last demo's passes
    return data_dir


def _process_env(settings: Settings, data_dir: Path) -> dict:
    """The environment of the demo's worker, projector and pages."""
    return {
        **{k: v for k, v in os.environ.items() if k not in ("GC_DASHBOARD_TOKEN_FILE", "GC_STATION_TOKEN_FILE")},
        "GC_BROKER_URL": settings.broker_url,
        "GC_DATABASE_URL": settings.database_url,
        "GC_APP_ID": settings.app_id,
        "GC_KEY_DIR": str(settings.keys_path),
        "GC_PARTITIONS": str(settings.partitions),
        "GC_DATA_DIR": str(data_dir),
        "PYTHONPATH": str(ROOT),
        # The demo's day is in February 2020: it moves the channel's clock itself (DemoDay.play).
        "GC_CLOCK_SECONDS": "0",
        # The public crossing times' "now": the latest crossing of the demo's day, not the wall clock.
        "GC_PUBLIC_CLOCK": "channel",
        # The pages' tokens, made here so that the demo prints addresses a person can click (each
        # page takes it once from the URL, then from its cookie); in the environment, not in `ps`.
        "GC_DASHBOARD_TOKEN": secrets.token_urlsafe(32),
        "GC_STATION_TOKEN": secrets.token_urlsafe(32),
    }


def _prepare_topics_and_keys(settings: Settings) -> None:
    topics = Topics.with_prefix(settings.topic_prefix)
    asyncio.run(
        ensure_topics(settings.connection, topics.public() + [topics.pass_events], partitions=settings.partitions)
    )
    from ..keys import load_signer

    load_signer(settings.keys_path)  # the worker and the checkpoints share this key pair


def _road(settings, env, data_dir, console, procs, pages, clock, seed, shipments, gateway) -> Road:
    """Leave trucks on the road (streams.dev.road) and move the station to the crossings they reach
    first, its clock at their departure: they are its expected arrivals."""
    left = clock - CROSSING
    trucks = road_requests(seed, range(shipments, shipments + ROAD_TRUCKS), left, DEMO_FIRM, gateway.shipper)
    road = put_on_the_road(settings, trucks, left, gateway.url, gateway.key)
    asyncio.run(send_crossings(settings, road, random.Random(seed)))
    departed(settings.database_url, crossed(road), 60)
    road.opened = clock
    _stop({"checkpoint": procs.pop("checkpoint")} if "checkpoint" in procs else {}, None)
    procs["checkpoint"], station = _start_station(env, data_dir, console, first_crossings(road), road.opened)
    pages[:] = [p for p in pages if p.kind != "station"] + [station]
    if (truck := followed(road)) is not None:
        asyncio.run(_expected_at(station.url, truck.pass_id, 60))
        from ..gateway.driver import driver_url

        url = driver_url(settings, gateway.url, truck.pass_id)
        pages.append(Page("driver", f"the driver's page of pass {truck.pass_id} (plate {truck.plate})", url))
    console.print(
        f"{len(trucks)} more requests sent ({BY_GATEWAY} by {DEMO_FIRM} through the gateway, a convoy), their "
        f"trucks leaving at {format_time(left)}; {len(road.passes)} passes issued; {len(crossed(road))} of the "
        f"convoy crossed its first border by the channel's clock, {format_time(clock)}, when the station opens "
        "there and the channel's clock starts to follow the wall clock"
    )
    return road


async def _expected_at(station_url: str, pass_id: str, timeout: float) -> None:
    """Wait until the station lists the pass among its expected arrivals (it has read the log)."""
    import aiohttp

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(station_url) as r:  # its token link: the cookie
            r.raise_for_status()
        api = station_url.split("?", 1)[0] + "api/state"

        async def expected() -> bool:
            async with http.get(api) as r:
                return pass_id in {a["pass_id"] for a in (await r.json())["arrivals"]}

        deadline = time.monotonic() + timeout
        while not await expected():
            if time.monotonic() > deadline:
                raise TimeoutError(f"demo: the station does not expect pass {pass_id} after {timeout:.0f} s")
            await asyncio.sleep(0.2)  # polling a condition with a deadline


def _print_pages(settings: Settings, pages: list[Page], data_dir: Path, console: Console, road: Road | None) -> None:
    """Each page's address, on the console and in data_dir/demo.json (for a script or a test), with
    the truck to follow and the settings that reach the demo's broker and database."""
    for page in pages:
        console.print(f"[bold]{page.name}[/bold]: {page.url}")
    truck = followed(road) if road is not None else None
    summary = {
        "env": {
            "GC_BROKER_URL": settings.broker_url,
            "GC_DATABASE_URL": settings.database_url,
            "GC_KEY_DIR": str(settings.keys_path),
            "GC_PARTITIONS": str(settings.partitions),
        },
        "day": road_day(road) if road is not None else None,
        "pages": {p.kind: {"name": p.name, "url": p.url} for p in pages},
        "follow": {
            "pass_id": truck.pass_id,
            "plate": truck.plate,
            "shipment_id": truck.shipment_id,
            "checkpoint": first_border(truck.route),
        }
        if truck
        else None,
    }
    (data_dir / "demo.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))


def _serve(settings: Settings, road: Road | None, console: Console) -> None:
    """Serve the pages until Ctrl-C."""
    if road is not None and (truck := followed(road)) is not None:
        at = f"GC_DATABASE_URL={settings.database_url}"
        console.print(
            f"follow pass {truck.pass_id} (plate {truck.plate}): the portal lists it, the driver's page shows it, "
            f"the station expects it; print it with `{at} greenchannel pass print {truck.pass_id} --pdf pass.pdf`; "
            f"the day's report: `{at} greenchannel report --day {road_day(road)} --pdf day.pdf`"
        )
    console.print("serving the demo until Ctrl-C")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if road is not None and road.opened is not None:
        asyncio.run(keep_time(settings, road.opened, stop))  # until stopped
    else:
        stop.wait()


def _stop(procs: dict[str, subprocess.Popen], broker: TansuBroker | None) -> None:
    for proc in procs.values():
        proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if broker:
        broker.stop()


def _start(command: str, env: dict, data_dir: Path, console: Console, *args: str) -> subprocess.Popen:
    """`greenchannel COMMAND ARGS…` as a process, its output in data_dir/COMMAND.log."""
    with open(data_dir / f"{command}.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", command, *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    console.print(f"{command} pid {proc.pid}, log {data_dir / f'{command}.log'}")
    return proc
