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
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlmodel import Session, func, select

from models.store.db import checkpoint_dwell, count_by, make_engine
from models.operators import risk_entry
from models.passes import ACTIVE, InvalidToken, verify_token
from models.records import format_time, parse_time
from models.store.tables import Pass, PassEvent, Shipment
from routing import Gazetteer

from .broker import TansuBroker, ensure_topics, free_port
from .handlers import Topics, clock_command
from .keys import load_public_key
from .settings import Settings
from .simulator import Scenario
from .station_web import announced_url

__all__ = ["run_demo"]

ROOT = Path(__file__).resolve().parents[1]


class Observer:
    """Everything the demo reads back from the output topics."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.decisions: dict[str, dict] = {}
        self.dead = 0
        self.status: list[dict] = []
        self.status_ids: set[str] = set()   # CloudEvents ids: one pass_event row each
        self.answered: set[str] = set()
        self.routes: dict[str, dict] = {}   # pass_id -> current route
        self.tokens: dict[str, str] = {}
        self.suspended: set[str] = set()
        self.last: dict[str, str] = {}      # pass_id -> its latest status
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
        outcomes = Counter(d["decision"] if d["decision"] == "rejected" else d["priority"]
                           for d in self.decisions.values())
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


async def _play(settings: Settings, env: dict, shipments: int, seed: int, console: Console,
                after_wave1=lambda routes: None) -> dict:
    topics = Topics.with_prefix(settings.topic_prefix)
    obs = Observer(topics)
    consumer = AIOKafkaConsumer(**settings.connection.kwargs(), enable_auto_commit=False)
    await consumer.start()
    parts = [TopicPartition(t, p) for t in (topics.decisions, topics.status, topics.deadletter)
             for p in range(settings.partitions)]
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)

    async def consume() -> None:
        while True:
            for tp, records in (await consumer.getmany(timeout_ms=100)).items():
                for r in records:
                    obs.take(tp.topic, r.value, r.headers)

    reader = asyncio.get_running_loop().create_task(consume())
    producer = AIOKafkaProducer(**settings.connection.kwargs(), linger_ms=2)
    await producer.start()
    scenario = Scenario(seed=seed)
    rng = random.Random(seed)
    sent = scans_sent = 0
    started = time.monotonic()
    phase = "starting"
    public_key = None
    visited: dict[str, set[str]] = {}
    scan_no = 0

    async def send(topic: str, key: str, body: dict | bytes) -> None:
        await producer.send(topic, body if isinstance(body, bytes) else orjson.dumps(body), key=key.encode())

    async def drive(pass_id: str, decision_plate: str, limit: float) -> None:
        """Scan the truck through the checkpoints of its current route, up to a fraction of them."""
        nonlocal scans_sent, scan_no
        if pass_id in obs.suspended:
            return
        route = obs.routes[pass_id]
        cps = route["checkpoints"]
        seen = visited.setdefault(pass_id, set())
        todo = [c for c in cps if c["checkpoint_id"] not in seen][: max(0, int(len(cps) * limit + 0.999)) - len(seen)]
        for cp in todo:
            # A checkpoint verifies the token offline before it scans (人、车、证一致).
            try:
                verify_token(obs.tokens[pass_id], public_key)
            except InvalidToken:
                continue
            eta = parse_time(cp["eta"])
            plate = decision_plate if rng.random() > 0.03 else decision_plate[:-1] + "0"
            base = {"checkpoint_id": cp["checkpoint_id"], "pass_id": pass_id, "plate": plate}
            scan_no += 1
            await send(topics.scans, pass_id, {**base, "scan_id": f"d{scan_no}a", "kind": "arrival",
                                               "scanned_at": format_time(eta)})
            scans_sent += 1
            if plate != decision_plate:  # held, inspected, scanned again with the right plate
                scan_no += 1
                await send(topics.scans, pass_id, {**base, "plate": decision_plate, "scan_id": f"d{scan_no}r",
                                                   "kind": "arrival", "scanned_at": format_time(eta)})
                scans_sent += 1
            seen.add(cp["checkpoint_id"])
            if cp is cps[-1]:
                break
            scan_no += 1
            dwell = timedelta(seconds=rng.choice([rng.randint(90, 600), rng.randint(600, 1500)]))
            await send(topics.scans, pass_id, {**base, "plate": decision_plate, "scan_id": f"d{scan_no}d",
                                               "kind": "departure", "scanned_at": format_time(eta + dwell)})
            scans_sent += 1

    async def drive_back_and_out(the_pass: dict) -> None:
        """A multi-trip truck at its destination drives home through the same border checkpoints,
        in reverse, and out again: trip 2, verified like the first (until its pass expires)."""
        nonlocal scans_sent, scan_no
        pass_id = the_pass["pass_id"]
        cps = obs.routes[pass_id]["checkpoints"]
        if pass_id in obs.suspended or cps[-1]["checkpoint_id"] not in visited.get(pass_id, ()):
            return
        start, arrived = parse_time(the_pass["valid_from"]), parse_time(cps[-1]["eta"])
        leave = arrived + timedelta(hours=2)  # unloaded and loaded again
        home = leave + (arrived - start)
        borders = cps[:-1]

        def dwell() -> timedelta:
            return timedelta(minutes=rng.randint(2, 20))

        scans = [(cps[-1], "departure", leave)]
        for cp in reversed(borders):  # the way back: the same border checkpoints, in reverse
            back = leave + (arrived - parse_time(cp["eta"]))
            scans += [(cp, "arrival", back), (cp, "departure", back + dwell())]
        for cp in borders:  # and out again
            out = home + timedelta(hours=2) + (parse_time(cp["eta"]) - start)
            scans += [(cp, "arrival", out), (cp, "departure", out + dwell())]
        scans.append((cps[-1], "arrival", home + timedelta(hours=2) + (arrived - start)))
        for cp, kind, when in scans:
            try:  # verified offline before each scan, as on the way out
                verify_token(obs.tokens[pass_id], public_key)
            except InvalidToken:
                return
            scan_no += 1
            await send(topics.scans, pass_id, {"checkpoint_id": cp["checkpoint_id"], "pass_id": pass_id,
                                               "plate": the_pass["plate"], "scan_id": f"d{scan_no}{kind[0]}",
                                               "kind": kind, "scanned_at": format_time(when)})
            scans_sent += 1

    async def send_risk(adcode: str, level: str, at) -> None:
        """The operator's change, validated as `greenchannel risk set` validates it."""
        entry = risk_entry(adcode, level, at=at, is_region=Gazetteer.default().names_region)
        await send(topics.risk, entry["adcode"], entry)

    with Live(obs.table(phase, sent, scans_sent, started), console=console, refresh_per_second=4) as live:
        async def refresh() -> None:
            while True:
                live.update(obs.table(phase, sent, scans_sent, started))
                await asyncio.sleep(0.25)

        painter = asyncio.get_running_loop().create_task(refresh())
        try:
            phase = "operators load the key-enterprise list and risk levels"
            for entry in scenario.enterprise_entries():
                await send(topics.enterprises, entry["credit_code"], entry)
            opening = scenario.start - timedelta(hours=1)
            for adcode, level in (("4201", "high"), ("4202", "medium"), ("4403", "medium"), ("3301", "medium")):
                await send_risk(adcode, level, opening)
            await producer.flush()
            public_key = load_public_key(settings.keys_path)

            async def wave(numbers: range, what: str) -> None:
                nonlocal sent
                for n in numbers:
                    await send(topics.requests, f"SHP-{seed}-{n:07d}",
                               scenario.malformed(n) if n % 100 == 99 else scenario.request(n))
                    sent += 1
                await producer.flush()
                await _wait(lambda: len(obs.decisions) + obs.dead >= sent, 120, what)

            half = shipments // 2
            phase = "firms send requests (wave 1)"
            await wave(range(half), "wave 1 decisions")

            phase = "trucks reach the first checkpoints"
            wave1 = [d["pass"] for d in obs.decisions.values() if d["pass"]]
            await asyncio.to_thread(after_wave1, [p["route"] for p in wave1])
            for p in wave1:
                await drive(p["pass_id"], p["plate"], 0.5)
            await producer.flush()

            phase = "operator: Hunan (43) becomes high risk"
            change_at = scenario.start + timedelta(minutes=half, seconds=30)
            await send_risk("43", "high", change_at)
            await producer.flush()
            await _wait(lambda: time.monotonic() - obs.last_status > 1.5, 60, "re-evaluation to settle")

            phase = "firms send requests (wave 2)"
            await wave(range(half, shipments), "wave 2 decisions")

            phase = "trucks drive on to their destinations"
            for d in obs.decisions.values():
                if d["pass"]:
                    await drive(d["pass"]["pass_id"], d["pass"]["plate"], 1.0)
            await producer.flush()
            await _wait(lambda: len(obs.answered) >= scans_sent, 120, "scan answers")

            phase = "multi-trip trucks drive home and out again"
            for d in obs.decisions.values():
                if d["pass"] and d["pass"]["trip"] == "multi":
                    await drive_back_and_out(d["pass"])
            await producer.flush()
            await _wait(lambda: len(obs.answered) >= scans_sent, 120, "scan answers")

            phase = "the channel's clock passes the end of every pass's validity"
            await _tick_past_validity(producer, topics, obs, settings.partitions)
            phase = "done"
            live.update(obs.table(phase, sent, scans_sent, started))
        finally:
            painter.cancel()
            reader.cancel()
            await producer.stop()
            await consumer.stop()
    elapsed = time.monotonic() - started
    return {"sent": sent, "scans": scans_sent, "elapsed": elapsed, "observer": obs}


async def _tick_past_validity(producer: AIOKafkaProducer, topics: Topics, obs: Observer, partitions: int) -> None:
    """The demo's day is in 2020, so its worker keeps no wall clock (GC_CLOCK_SECONDS=0): the demo
    moves the channel's clock itself, as a worker's clock would, to just after the last validity
    of its passes. Every pass not ended by then expires without a scan."""
    ends = [parse_time(d["pass"]["valid_until"]) for d in obs.decisions.values() if d["pass"]]
    if not ends:
        return
    still = sum(status in ACTIVE for status in obs.last.values())
    want = obs.clock_expired + still
    tick = clock_command(max(ends) + timedelta(seconds=1))
    for p in range(partitions):
        await producer.send(topics.pass_events, tick, key=b"clock", partition=p)
    await producer.flush()
    await _wait(lambda: obs.clock_expired >= want, 60, f"{still} passes expired by the clock")


def _projected(engine, obs: Observer, timeout: float, alive) -> tuple[bool, str]:
    """Wait until the database holds a row for every decision and status event seen on the topics."""
    want = (len(obs.decisions), len(obs.status_ids))
    deadline = time.monotonic() + timeout
    while True:
        with Session(engine) as session:
            got = (session.exec(select(func.count()).select_from(Shipment)).one(),
                   session.exec(select(func.count()).select_from(PassEvent)).one())
        if got[0] >= want[0] and got[1] >= want[1]:
            return True, ""
        if time.monotonic() > deadline or not alive():
            return False, (f"{got[0]}/{want[0]} decisions and {got[1]}/{want[1]} status events in the database "
                           f"after {timeout:.0f} s (projector {'running' if alive() else 'exited'})")
        time.sleep(0.1)  # polling a condition with a deadline


async def _leave_on_the_road(settings: Settings, seed: int, numbers: range) -> None:
    """More requests of the demo's firms, never driven: passes a person can check at the station."""
    topics, scenario = Topics.with_prefix(settings.topic_prefix), Scenario(seed=seed)
    producer = AIOKafkaProducer(**settings.connection.kwargs(), linger_ms=2)
    await producer.start()
    try:
        for n in numbers:
            body = scenario.request(n)
            await producer.send(topics.requests, orjson.dumps(body), key=body["shipment_id"].encode())
    finally:
        await producer.stop()


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
        ever = {status: n for status, n in session.exec(
            select(PassEvent.status, func.count(func.distinct(PassEvent.pass_id))).group_by(PassEvent.status))}
        # A multi-trip pass reaching its destination completes a trip and stays valid (the demo
        # drives it home and out again): counted apart from the delivered single-trip passes.
        trips_done = session.exec(select(func.count(func.distinct(PassEvent.pass_id)))
                                  .where(PassEvent.reason == "trip_completed")).one()
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
    """A page the demo serves, for a person to open."""
    name: str
    url: str


def busiest_checkpoints(routes: list[dict], n: int = 2) -> list[str]:
    """The border checkpoints most routes cross."""
    crossings = Counter(c["checkpoint_id"] for r in routes for c in r["checkpoints"] if c["checkpoint_id"].startswith("BX-"))
    return [cp for cp, _ in crossings.most_common(n)]


def _start_station(env: dict, data_dir: Path, console: Console, routes: list[dict], clock) -> tuple[subprocess.Popen, Page]:
    """A station for the busiest checkpoints of wave 1, its clock on the demo's day."""
    ids = busiest_checkpoints(routes)
    args = ["--port", "0", "--clock", format_time(clock)] + [a for cp in ids for a in ("--id", cp)]
    proc = _start("checkpoint", env, data_dir, console, *args)
    url = announced_url(data_dir / "checkpoint.log", lambda: proc.poll() is None)
    return proc, Page(f"checkpoint station {' + '.join(ids)}", url)


def run_demo(settings: Settings, *, shipments: int = 300, seed: int = 2020, broker_url: str | None = None,
             serve: bool = False) -> int:
    console = Console()
    data_dir = Path(settings.data_dir).resolve() / "demo"
    data_dir.mkdir(parents=True, exist_ok=True)
    database = data_dir / "greenchannel.db"
    database.unlink(missing_ok=True)
    shutil.rmtree(data_dir / "stations", ignore_errors=True)  # a station's store of the last demo's passes
    broker = None
    if broker_url is None:
        broker = TansuBroker(log_path=data_dir / "broker.log").start()
        broker_url = broker.url
        console.print(f"embedded broker (Tansu) at {broker.bootstrap}")
    settings = settings.model_copy(update={
        "broker_url": broker_url, "database_url": f"sqlite:///{database}",
        "app_id": f"greenchannel-demo-{int(time.time())}", "key_dir": settings.keys_path.resolve()})
    env = {**os.environ, "GC_BROKER_URL": settings.broker_url, "GC_DATABASE_URL": settings.database_url,
           "GC_APP_ID": settings.app_id, "GC_KEY_DIR": str(settings.keys_path), "GC_PARTITIONS": str(settings.partitions),
           "GC_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT),
           # The demo's day is in February 2020: it moves the channel's clock itself (_play).
           "GC_CLOCK_SECONDS": "0"}
    topics = Topics.with_prefix(settings.topic_prefix)
    asyncio.run(ensure_topics(settings.connection, topics.public() + [topics.pass_events],
                              partitions=settings.partitions))
    from .keys import load_signer
    load_signer(settings.keys_path)  # the worker and the checkpoints share this key pair
    procs = {name: _start(name, env, data_dir, console) for name in ("worker", "projector")}
    pages: list[Page] = []  # each page the demo serves: one line each to add another
    port = free_port()
    procs["dashboard"] = _start("dashboard", env, data_dir, console, "--port", str(port))
    pages.append(Page("operators' dashboard", f"http://127.0.0.1:{port}/"))
    console.print(f"[bold]dashboard at {pages[0].url}[/bold] (open it while the demo runs)")

    def start_pages(routes: list[dict]) -> None:
        procs["checkpoint"], page = _start_station(env, data_dir, console, routes, Scenario(seed=seed).start
                                                   + timedelta(hours=4))
        pages.append(page)
        console.print(f"[bold]{page.name} at {page.url}[/bold]")

    try:
        played = asyncio.run(_play(settings, env, shipments, seed, console, after_wave1=start_pages))
        caught_up = _report(settings, played, console, lambda: procs["projector"].poll() is None)
        for page in pages:
            console.print(f"[bold]{page.name}[/bold]: {page.url}")
        if serve:
            asyncio.run(_leave_on_the_road(settings, seed, range(shipments, shipments + 40)))
            console.print("40 more requests sent, their trucks left on the road (expected at the stations); "
                          f"print a pass with GC_DATABASE_URL={settings.database_url} greenchannel pass print PASS_ID")
            console.print("serving the demo until Ctrl-C")
            from .cli import wait_for_stop
            wait_for_stop()
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if broker:
            broker.stop()
    return 0 if caught_up else 1


def _start(command: str, env: dict, data_dir: Path, console: Console, *args: str) -> subprocess.Popen:
    """`greenchannel COMMAND ARGS…` as a process, its output in data_dir/COMMAND.log."""
    with open(data_dir / f"{command}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", command, *args], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
    console.print(f"{command} pid {proc.pid}, log {data_dir / f'{command}.log'}")
    return proc
