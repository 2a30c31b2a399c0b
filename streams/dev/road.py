"""The demo's road: trucks left on the road after the played day, for a person to follow.

When the day's report is printed the channel's clock stands just past the last validity of the
day's passes (`demo._tick_past_validity`), so every pass of the day has ended. The road's requests
are dated at that clock, as a firm asking then would date them; a request dated on the played day
would be older than the pass retention and dead-lettered. The demo firm sends the first of them
through the firms' gateway (its portal lists them, and it can hand their drivers their pass
pages); the others go on the firms' topic. Once they are decided, a checkpoint station is started
for the border crossings they reach first, its clock at their departure, so that they are its
expected arrivals.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from sqlmodel import Session, col, select

from models.daily import CHINA_STANDARD_TIME
from models.firms import channel_shipment_id
from models.records import format_time
from models.store.db import make_engine
from models.store.tables import Pass, PassEvent, Shipment

from ..handlers import Topics, clock_command
from ..settings import Settings
from .simulator import Scenario

__all__ = [
    "Road",
    "RoadTruck",
    "road_requests",
    "put_on_the_road",
    "first_crossings",
    "followed",
    "road_day",
    "crossed",
    "send_crossings",
    "keep_time",
    "departed",
    "first_border",
]

ROAD_TRUCKS = 40
BY_GATEWAY = 8  # the first ones: the demo firm's, through its gateway
_CLASSES = ("P0", "P1", "P2", "P3")  # drawn in turn: goods the catalog admits, a key enterprise receiving
# The demo firm's trucks run one corridor, a convoy: 广州市天河区 → 郑州市金水区 (three border crossings,
# around Hubei and Hunan). Most of them cross the first border before the station opens there, so
# that its public crossing times have enough vehicles to show a figure (5, `models.crossings`).
CORRIDOR = ({"adcode": "440106"}, {"adcode": "410105"})
LEFT_FOR_THE_STATION = 2  # the convoy's first trucks: the followed one and one more, expected there
# The road's trucks were asked for and left this long before the channel's clock, so that the
# convoy's crossings, dated in that half hour, are not ahead of the channel's time (a scan may be
# 5 minutes ahead of it at most: `models.passes.scan_time_refusal`).
CROSSING = timedelta(minutes=30)


@dataclass(frozen=True)
class RoadTruck:
    """A request left on the road: its body, and the shipment id the channel knows it by."""

    body: dict
    shipment_id: str
    by_gateway: bool


@dataclass
class Road:
    """The road's trucks once decided: their passes, by shipment id, in the order sent."""

    trucks: list[RoadTruck]
    passes: dict[str, Pass]
    departure: datetime
    opened: datetime | None = None  # the channel's time when the station opens (after the convoy's crossings)

    def gateway_passes(self) -> list[Pass]:
        return [self.passes[t.shipment_id] for t in self.trucks if t.by_gateway and t.shipment_id in self.passes]

    def routes(self) -> list[dict]:
        return [p.route for p in self.passes.values() if p.route]


def road_requests(seed: int, numbers: range, departure: datetime, firm: str, firm_shipper: str) -> list[RoadTruck]:
    """The road's requests, asked for and leaving at `departure`; the first BY_GATEWAY the demo
    firm's own convoy (its shipper its own credit code, its ids its own, one corridor)."""
    scenario, trucks = Scenario(seed=seed), []
    for i, n in enumerate(numbers):
        body = scenario.request(n, kind=_CLASSES[i % len(_CLASSES)])
        body["submitted_at"] = body["departure_at"] = format_time(departure)
        if i < BY_GATEWAY:
            body["shipment_id"] = f"ROAD-{n:05d}"
            body["shipper"] = {"credit_code": firm_shipper, "name": "示范物流 Demo Logistics"}
            body["origin"], body["destination"] = dict(CORRIDOR[0]), dict(CORRIDOR[1])
            trucks.append(RoadTruck(body, channel_shipment_id(firm, body["shipment_id"]), True))
        else:
            trucks.append(RoadTruck(body, body["shipment_id"], False))
    return trucks


async def _send(settings: Settings, trucks: list[RoadTruck], gateway_url: str, key: str) -> None:
    topics = Topics.with_prefix(settings.topic_prefix)
    producer = AIOKafkaProducer(**settings.connection.kwargs(), linger_ms=2)
    await producer.start()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
            for truck in trucks:
                if truck.by_gateway:
                    async with http.post(gateway_url + "v1/requests", json=truck.body) as r:
                        if r.status != 202:
                            raise RuntimeError(f"the gateway refused {truck.shipment_id}: {r.status} {await r.text()}")
                else:
                    body = orjson.dumps(truck.body)
                    await producer.send(topics.requests, body, key=truck.shipment_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


def _decided(database_url: str, trucks: list[RoadTruck], timeout: float) -> dict[str, Pass]:
    """Wait until the database holds every road truck's decision; their passes by shipment id."""
    engine, ids = make_engine(database_url), [t.shipment_id for t in trucks]
    deadline = time.monotonic() + timeout
    try:
        while True:
            with Session(engine) as s:
                decided = s.exec(select(Shipment).where(col(Shipment.shipment_id).in_(ids))).all()
                issued = [d.pass_id for d in decided if d.pass_id]
                passes = s.exec(select(Pass).where(col(Pass.pass_id).in_(issued))).all()
                if len(decided) == len(ids) and len(passes) == len(issued):
                    by_id = {p.pass_id: p for p in passes}
                    return {d.shipment_id: by_id[d.pass_id] for d in decided if d.pass_id}
            if time.monotonic() > deadline:
                raise TimeoutError(f"demo: {len(decided)} of the road's {len(ids)} decisions in the database")
            time.sleep(0.1)  # polling a condition with a deadline
    finally:
        engine.dispose()


def put_on_the_road(
    settings: Settings, trucks: list[RoadTruck], departure: datetime, gateway_url: str, key: str
) -> Road:
    """Send the road's requests and wait for their decisions in the database."""
    asyncio.run(_send(settings, trucks, gateway_url, key))
    return Road(trucks, _decided(settings.database_url, trucks, 120), departure)


def crossed(road: Road) -> list[Pass]:
    """The convoy's trucks that have crossed its first border before the station opens there."""
    return [p for p in road.gateway_passes()[LEFT_FOR_THE_STATION:] if first_border(p.route)]


def crossing_scans(road: Road, rng: random.Random) -> list[dict]:
    """Their arrival and departure at that crossing, within CROSSING after the departure: a verified
    arrival (its token) and a departure after a dwell of 4 to 18 minutes, as a checkpoint sends them."""
    scans = []
    for k, p in enumerate(crossed(road)):
        checkpoint, arrival = first_border(p.route), road.departure + timedelta(minutes=2 + 2 * k)
        base = {"checkpoint_id": checkpoint, "pass_id": p.pass_id, "plate": p.plate}
        departure = arrival + timedelta(minutes=rng.randint(4, 18))
        scans.append(
            {
                **base,
                "scan_id": f"road-{p.pass_id}-a",
                "kind": "arrival",
                "scanned_at": format_time(arrival),
                "token": p.token,
            }
        )
        scans.append(
            {**base, "scan_id": f"road-{p.pass_id}-d", "kind": "departure", "scanned_at": format_time(departure)}
        )
    return scans


async def send_crossings(settings: Settings, road: Road, rng: random.Random) -> None:
    """Send the convoy's scans at its first border (all dated before the channel's clock: taken)."""
    topics = Topics.with_prefix(settings.topic_prefix)
    producer = AIOKafkaProducer(**settings.connection.kwargs(), linger_ms=2)
    await producer.start()
    try:
        for scan in crossing_scans(road, rng):
            await producer.send(topics.scans, orjson.dumps(scan), key=scan["pass_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def tick(producer: AIOKafkaProducer, topics: Topics, partitions: int, at: datetime) -> None:
    """The channel's clock to `at`, on every partition."""
    for p in range(partitions):
        await producer.send(topics.pass_events, clock_command(at), key=b"clock", partition=p)


async def keep_time(settings: Settings, since: datetime, stop) -> None:
    """The channel's clock follows the wall clock from `since` (ticked every 10 s) until `stop`
    (a threading.Event) is set: a station's scans, dated by its clock, stay within the channel's time."""
    topics, started = Topics.with_prefix(settings.topic_prefix), time.monotonic()
    producer = AIOKafkaProducer(**settings.connection.kwargs(), linger_ms=2)
    await producer.start()
    try:
        while not await asyncio.to_thread(stop.wait, 10):
            await tick(producer, topics, settings.partitions, since + timedelta(seconds=time.monotonic() - started))
            await producer.flush()
    finally:
        await producer.stop()


def departed(database_url: str, passes: list[Pass], timeout: float) -> None:
    """Wait until the database holds a departure with its dwell for each of `passes`."""
    engine, ids = make_engine(database_url), {p.pass_id for p in passes}
    deadline = time.monotonic() + timeout
    try:
        while True:
            with Session(engine) as s:
                q = select(PassEvent.pass_id).where(
                    col(PassEvent.pass_id).in_(ids), col(PassEvent.dwell_seconds).is_not(None)
                )
                if set(s.exec(q).all()) >= ids:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"demo: the convoy's departures not all in the database after {timeout:.0f} s")
            time.sleep(0.1)  # polling a condition with a deadline
    finally:
        engine.dispose()


def road_day(road: Road) -> str:
    """The day the road's trucks leave, as `greenchannel report --day` takes it (China Standard Time)."""
    return road.departure.astimezone(CHINA_STANDARD_TIME).date().isoformat()


def followed(road: Road) -> Pass | None:
    """The truck a person follows: the demo firm's first pass, when it crosses a border."""
    first = road.gateway_passes()[:1]
    return first[0] if first and first_border(first[0].route) else None


def first_crossings(road: Road, n: int = 2) -> list[str]:
    """The border crossings the station serves: the first one of the followed truck, then the
    ones most road trucks cross first."""
    firsts = [c for c in map(first_border, road.routes()) if c]
    truck = followed(road)
    mine = first_border(truck.route) if truck else None
    ranked = sorted(set(firsts), key=lambda c: (-firsts.count(c), c))
    return ([mine] if mine else []) + [c for c in ranked if c != mine][: n - bool(mine)]


def first_border(route: dict | None) -> str | None:
    """The first border crossing (`BX-…`) of a route, or None."""
    ids = (c["checkpoint_id"] for c in (route or {}).get("checkpoints", []))
    return next((c for c in ids if c.startswith("BX-")), None)
