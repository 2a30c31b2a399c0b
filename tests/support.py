"""What the broker-free tests share: the core wired with a fixed test key, and schema validators."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator, FormatChecker

from models.decide import Decider
from datetime import datetime, timedelta, timezone

from models.passes import PassState, Signer
from models.policy import load_catalog
from models.reference import EnterpriseBook, RiskBook
from models.tracking import Tracker
from routing import Gazetteer, RegionGraph, RoutePlanner
from models.records import format_time
from streams.handlers import Pipeline, Topics

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
T = Topics.with_prefix("gc.")


def validator(name):
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()),
                                format_checker=FormatChecker())


DEPARTURE = datetime(2020, 2, 25, 8, 0, tzinfo=timezone.utc)


def make_tracker(signer: Signer | None = None, keys=None) -> Tracker:
    """The core with no risk levels or key enterprises in force yet, signing with `signer`."""
    graph = RegionGraph.default()
    decider = Decider(catalog=load_catalog(), gazetteer=Gazetteer.default(), graph=graph,
                      planner=RoutePlanner(graph), risk=RiskBook(), enterprises=EnterpriseBook(),
                      signer=signer or Signer(KEY, "test"))
    return Tracker(decider, KEY.public_key() if keys is None else keys)


def make_pipeline() -> Pipeline:
    tracker = make_tracker()
    return Pipeline(tracker.decider, tracker, T, partitions=4)


def wuhan_to_guangzhou(tracker: Tracker, **fields) -> PassState:
    """A pass from Wuhan (420111) to Guangzhou (440106) on the shortest route, valid 48 h from
    DEPARTURE; `fields` override any of its fields."""
    d = tracker.decider
    route = d.planner.plan(d.gazetteer.locate("420111"), d.gazetteer.locate("440106"), departure=DEPARTURE)
    base = dict(pass_id="420111000001", shipment_id="S-1", plate="鄂A12345", priority="P1",
                shipper="91420100MA4K0000X1", consignee="91440101MA5C0000X2", origin="420111",
                destination="440106", trip="one_way", valid_from=format_time(DEPARTURE),
                valid_until=format_time(DEPARTURE + timedelta(hours=48)),
                departure_at=format_time(DEPARTURE), route=route.to_dict())
    return PassState(**{**base, **fields})
