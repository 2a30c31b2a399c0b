"""`greenchannel dashboard`: the operators' live page.

Where each panel reads from:
- **Risk levels** (the map's colours): the `gc.region.risk` topic itself, from the beginning,
  into the same as-of `RiskBook` the worker keeps, so a change reaches the page as soon as it is
  on the topic, without waiting for the projector, and with the worker's rules (a record without
  `effective_at` from its record time; an adcode naming no region ignored, as the worker
  dead-letters it).
- **Dead letters**: the `gc.deadletter` topic itself (the projector does not keep them).
- **Consumer lag**: the broker: each group's committed offsets (the worker's `$GC_APP_ID`, the
  projector's `$GC_APP_ID-projector`) against the end of each input topic.
- **Everything else** (passes and their places on the map, the checkpoint board, the flow
  counts, search): the database the projector fills (`GC_DATABASE_URL`), read every second;
  a panel's event goes out only when its figures changed. The panels read the aggregates the
  database keeps as the projector writes (`models.store.db.counted_*`, migration 0002), so a
  refresh costs the same at 10,000 passes as at a million. History and search need the
  database: the topics hold no index by plate or shipment.

Live updates are server-sent events (`streams.web.sse`); the page ships its own assets, ECharts
4.9.0 and its maps included (`scripts/vendor-echarts.sh`). It asks every request for its token and
refuses foreign Hosts and cross-site requests (`streams.web.secure_app`, `streams.web.Access`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter, deque
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlmodel import Session, select

from models.mapregions import feature_levels
from models.passes import ACTIVE
from models.records import LEVEL_RANK, Unparseable, format_time, load_object, parse_risk
from models.reference import RiskBook
from models.store.db import (
    counted_board,
    counted_hours,
    counted_places,
    counted_rejections,
    counted_statuses,
    find_passes,
    get_pass_events,
    make_engine,
)
from models.store.tables import Checkpoint, Pass, Shipment
from routing import Gazetteer

from .handlers import Topics
from .metrics import group_lag
from .projector import group_id as projector_group
from .settings import Settings
from .topics import ensure_topics
from .web import CSP, Access, Hub, announced, html_page, secure_app, sse, start_site, stop_site
from .worker.compat import refresh_metadata

__all__ = ["Dashboard", "make_app", "cmd_dashboard", "VENDOR"]

log = logging.getLogger("greenchannel.dashboard")
STATIC = Path(__file__).with_name("static")
VENDOR = STATIC / "vendor" / "echarts-4.9.0"


def map_features() -> list[str]:
    """The adcodes of the map's prefecture regions (ids of the vendored china-cities.json)."""
    path = VENDOR / "china-cities.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `make env` (scripts/vendor-echarts.sh fetches it)")
    return [f["id"] for f in orjson.loads(path.read_bytes())["features"]]


class Dashboard:
    """The page's state: what the topics and the database say, and the hub that pushes changes."""

    def __init__(self, settings: Settings, *, refresh_seconds: float = 1.0) -> None:
        self.settings, self.refresh_seconds = settings, refresh_seconds
        self.topics = Topics.with_prefix(settings.topic_prefix)
        self.engine = make_engine(settings.database_url)
        self.gazetteer = Gazetteer.default()
        self.hub = Hub()
        self.book = RiskBook()
        self.features = map_features()
        self.levels: dict[str, int] = {}
        self.declared: list[dict] = []
        self.dead: deque[dict] = deque(maxlen=12)
        self.dead_by_topic: Counter[str] = Counter()
        self.panels: dict[str, object] = {"passes": [], "checkpoints": [], "board": [], "flow": {}, "lag": {}}

    def state(self) -> dict:
        return {"levels": self.levels, "declared": self.declared, "dead": self._dead(), **self.panels}

    def _dead(self) -> dict:
        return {"latest": list(self.dead)[::-1], "by_topic": dict(self.dead_by_topic)}

    # --- risk levels and dead letters, from the topics -------------------------------------------------
    async def follow_topics(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            **s.connection.kwargs(),
            enable_auto_commit=False,
            isolation_level=s.isolation_level,
            fetch_max_wait_ms=s.fetch_wait_ms,
        )
        await consumer.start()
        try:
            await refresh_metadata(consumer)
            parts = [
                TopicPartition(t, p)
                for t in (self.topics.risk, self.topics.deadletter)
                for p in consumer.partitions_for_topic(t) or ()
            ]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                self.take(batch)
        finally:
            await consumer.stop()

    def take(self, batch: dict) -> None:
        risk_changed = dead_changed = False
        for tp, records in batch.items():
            for r in records:
                if tp.topic == self.topics.risk:
                    risk_changed |= self._take_risk(r)
                else:
                    dead_changed = True
                    self._take_dead(r)
        if risk_changed:
            self.recolour()
        if dead_changed:
            self.hub.publish("dead", self._dead())

    def _take_risk(self, r) -> bool:
        try:
            obj = load_object(r.value)
            risk = parse_risk(obj, timestamp_ms=r.timestamp, is_region=self.gazetteer.names_region)
        except Unparseable:
            return False  # dead-lettered by the worker
        return self.book.apply(risk)

    def _take_dead(self, r) -> None:
        try:
            body = load_object(r.value)
        except Unparseable:
            return
        self.dead_by_topic[body.get("topic", "?")] += 1
        self.dead.append({k: body.get(k) for k in ("topic", "key", "error", "at", "partition", "offset")})

    def recolour(self) -> None:
        """Publish the map regions whose level changed (and the declared levels)."""
        now = datetime.now(UTC)
        levels = feature_levels(self.book, self.features, now)
        changed = {f: n for f, n in levels.items() if self.levels.get(f) != n}
        self.levels = levels
        self.declared = [
            {"adcode": a, "level": lv, "rank": LEVEL_RANK[lv], "name": self.gazetteer.region_name(a) or a}
            for a, lv in self.book.snapshot(now).items()
        ]
        if changed:
            self.hub.publish("levels", {"changed": changed, "declared": self.declared, "sent": time.time()})

    # --- the database -----------------------------------------------------------------------------------
    async def follow_database(self) -> None:
        while True:
            try:
                panels = await asyncio.to_thread(self.read_database)
            except Exception as exc:  # noqa: BLE001 — the projector may not have made the schema yet
                log.warning("database not readable yet: %s: %s", type(exc).__name__, exc)
            else:
                for name, value in panels.items():
                    if self.panels.get(name) != value:
                        self.panels[name] = value
                        self.hub.publish(name, value)
            self.recolour()  # a level declared for later comes into force
            await asyncio.sleep(self.refresh_seconds)  # a refresh period, not a synchronisation

    def read_database(self) -> dict:
        with Session(self.engine) as session:
            checkpoints = {c.checkpoint_id: c for c in session.exec(select(Checkpoint))}
            return {
                "passes": self._places(counted_places(session, ACTIVE), checkpoints),
                "checkpoints": [
                    [c.checkpoint_id, c.name, round(c.lon, 4), round(c.lat, 4)] for c in checkpoints.values()
                ],
                "board": counted_board(session),
                "flow": {
                    "hours": counted_hours(session),
                    "rejections": counted_rejections(session),
                    "statuses": {k or "none": n for k, n in counted_statuses(session).items()},
                },
            }

    def _places(self, rows, checkpoints: dict) -> list[list]:
        """[lon, lat, passes] per place: the last checkpoint of each pass, else its issuing county."""
        places: Counter[tuple[float, float]] = Counter()
        for checkpoint, issuer, n in rows:
            c = checkpoints.get(checkpoint) if checkpoint else None
            place = (c.lon, c.lat) if c else _lonlat(self.gazetteer, issuer)
            if place:
                places[(round(place[0], 3), round(place[1], 3))] += n
        return [[lon, lat, n] for (lon, lat), n in sorted(places.items())]

    # --- consumer lag, from the broker ---------------------------------------------------------------
    async def follow_lag(self, every: float = 2.0) -> None:
        s, t = self.settings, self.topics
        groups = {
            s.app_id: [t.requests, t.gateway_requests, t.scans, t.risk, t.enterprises, t.keys],
            projector_group(s): [t.decisions, t.status, t.risk, t.enterprises],
        }
        admin = AIOKafkaAdminClient(**s.connection.kwargs())
        consumer = AIOKafkaConsumer(**s.connection.kwargs(), enable_auto_commit=False)
        await admin.start()
        await consumer.start()
        try:
            await refresh_metadata(consumer)
            while True:
                try:
                    lag = {group: await self._lag(admin, consumer, group, names) for group, names in groups.items()}
                except Exception as exc:  # noqa: BLE001 — a broker restarting: try at the next tick
                    log.warning("consumer lag not read: %s: %s", type(exc).__name__, exc)
                else:
                    if lag != self.panels.get("lag"):
                        self.panels["lag"] = lag
                        self.hub.publish("lag", lag)
                await asyncio.sleep(every)  # a sampling period, not a synchronisation
        finally:
            await consumer.stop()
            await admin.close()

    @staticmethod
    async def _lag(admin, consumer, group: str, names: list[str]) -> dict[str, int]:
        parts = [TopicPartition(n, p) for n in names for p in consumer.partitions_for_topic(n) or ()]
        lag: Counter[str] = Counter({n: 0 for n in names})
        for tp, (behind, _) in (await group_lag(admin, consumer, group, parts)).items():
            lag[tp.topic] += behind
        return dict(lag)

    # --- search ---------------------------------------------------------------------------------------
    def search(self, text: str) -> list[dict]:
        """Passes by pass id, plate or shipment id, each with its whole timeline."""
        with Session(self.engine) as session:
            found = find_passes(session, text.strip())
            if not found:  # a rejected request has no pass: show its decision
                shipment = session.get(Shipment, text.strip())
                return [] if shipment is None else [{"shipment": _shipment(shipment), "pass": None, "events": []}]
            return [self._story(session, p) for p in found]

    def _story(self, session: Session, p: Pass) -> dict:
        shipment = session.get(Shipment, p.shipment_id) if p.shipment_id else None
        route = p.route or {}
        return {
            "shipment": _shipment(shipment) if shipment else None,
            "pass": {
                "pass_id": p.pass_id,
                "plate": p.plate,
                "priority": p.priority,
                "status": p.status,
                "valid_from": _iso(p.valid_from),
                "valid_until": _iso(p.valid_until),
                "trip": p.trip,
                "route": [self.gazetteer.region_name(a) or a for a in route.get("adcodes", ())],
                "distance_km": route.get("distance_km"),
            },
            "events": [
                {
                    "at": _iso(e.at),
                    "status": e.status,
                    "checkpoint_id": e.checkpoint_id,
                    "reason": e.reason,
                    "dwell_seconds": e.dwell_seconds,
                    "dwell_exceeded": e.dwell_exceeded,
                }
                for e in get_pass_events(session, pass_id=p.pass_id)
            ],
        }


def _shipment(s: Shipment) -> dict:
    return {
        "shipment_id": s.shipment_id,
        "decision": s.decision,
        "priority": s.priority,
        "decided_at": _iso(s.decided_at),
        "reasons": [r.get("text") for r in s.reasons or ()],
    }


def _iso(at: datetime | None) -> str | None:
    return None if at is None else format_time(at)  # SQLite hands back naive UTC: format_time reads it as UTC


def _lonlat(gazetteer: Gazetteer, adcode: str | None) -> tuple[float, float] | None:
    place = gazetteer.locate(adcode) if adcode else None
    return None if place is None else (place.lon, place.lat)


# --- the web app -------------------------------------------------------------------------------------------


# ECharts writes style attributes into its tooltips: styles inline are let in, scripts never.
DASHBOARD_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def make_app(board: Dashboard, access: Access) -> web.Application:
    """The page and its reads (GET only: the dashboard changes nothing) behind `access`."""
    app = secure_app(access, csp=DASHBOARD_CSP)

    async def events(request: web.Request) -> web.StreamResponse:
        return await sse(request, board.hub, first=[("state", board.state())])

    async def state(request: web.Request) -> web.Response:
        return web.json_response(board.state(), dumps=lambda v: orjson.dumps(v).decode())

    async def search(request: web.Request) -> web.Response:
        text = request.query.get("q", "")
        if not text.strip():
            raise web.HTTPBadRequest(text="?q= a pass id, a plate or a shipment id")
        found = await asyncio.to_thread(board.search, text)
        return web.json_response({"query": text, "found": found}, dumps=lambda v: orjson.dumps(v).decode())

    app.router.add_get("/", html_page(STATIC / "dashboard.html"))
    app.router.add_get("/events", events)
    app.router.add_get("/state", state)
    app.router.add_get("/search", search)
    app.router.add_static("/static/", STATIC)
    return app


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    access: Access,
    started=lambda url: None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the dashboard until `stop` is set (or forever); `started(url)` once it listens."""
    board = Dashboard(settings)
    app = make_app(board, access)
    t = board.topics
    await ensure_topics(
        settings.connection,
        [t.risk, t.deadletter, t.requests, t.scans, t.enterprises, t.decisions, t.status],
        partitions=settings.partitions,
        replication_factor=settings.replication_factor,
    )
    runner = await start_site(app, host, port)
    tasks = [asyncio.create_task(c) for c in (board.follow_topics(), board.follow_database(), board.follow_lag())]
    started(announced(access, host, runner.addresses[0][1]))
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stop_site(runner, board.hub)  # open pages' EventSource retries elsewhere
        board.engine.dispose()


def cmd_dashboard(settings: Settings, args, access: Access) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(
            settings,
            host=args.host,
            port=args.port,
            access=access,
            stop=stop,
            started=lambda url: print(f"dashboard at {url}", flush=True),
        )

    asyncio.run(main())
    return 0
