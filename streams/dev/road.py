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
from models.store.tables import Pass, Shipment

from ..handlers import Topics
from ..settings import Settings
from .simulator import Scenario

__all__ = ["Road", "RoadTruck", "road_requests", "put_on_the_road", "first_crossings", "followed", "road_day"]

ROAD_TRUCKS = 40
BY_GATEWAY = 8  # the first ones: the demo firm's, through its gateway
# They leave as they are asked for: at the channel's clock, so that their passes are valid by the
# only clock the demo's pages have (the channel's, the last status event's time).
DEPARTURE = timedelta(0)
_CLASSES = ("P0", "P1", "P2", "P3")  # drawn in turn: goods the catalog admits, a key enterprise receiving


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

    def gateway_passes(self) -> list[Pass]:
        return [self.passes[t.shipment_id] for t in self.trucks if t.by_gateway and t.shipment_id in self.passes]

    def routes(self) -> list[dict]:
        return [p.route for p in self.passes.values() if p.route]


def road_requests(seed: int, numbers: range, clock: datetime, firm: str, firm_shipper: str) -> list[RoadTruck]:
    """The road's requests, dated at the channel's clock; the first BY_GATEWAY the demo firm's own
    (its shipper its own credit code, its id its own)."""
    scenario, trucks = Scenario(seed=seed), []
    for i, n in enumerate(numbers):
        body = scenario.request(n, kind=_CLASSES[i % len(_CLASSES)])
        body["submitted_at"] = format_time(clock)
        body["departure_at"] = format_time(clock + DEPARTURE)
        if i < BY_GATEWAY:
            body["shipment_id"] = f"ROAD-{n:05d}"
            body["shipper"] = {"credit_code": firm_shipper, "name": "示范物流 Demo Logistics"}
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


def road_day(road: Road) -> str:
    """The day the road's trucks leave, as `greenchannel report --day` takes it (China Standard Time)."""
    return road.departure.astimezone(CHINA_STANDARD_TIME).date().isoformat()


def followed(road: Road) -> Pass | None:
    """The truck a person follows: the demo firm's first pass that crosses a border."""
    return next((p for p in road.gateway_passes() if _first_border(p.route)), None)


def first_crossings(road: Road, n: int = 2) -> list[str]:
    """The border crossings the station serves: the first one of the followed truck, then the
    ones most road trucks cross first."""
    firsts = [c for c in map(_first_border, road.routes()) if c]
    truck = followed(road)
    mine = _first_border(truck.route) if truck else None
    ranked = sorted(set(firsts), key=lambda c: (-firsts.count(c), c))
    return ([mine] if mine else []) + [c for c in ranked if c != mine][: n - bool(mine)]


def _first_border(route: dict | None) -> str | None:
    ids = (c["checkpoint_id"] for c in (route or {}).get("checkpoints", []))
    return next((c for c in ids if c.startswith("BX-")), None)
