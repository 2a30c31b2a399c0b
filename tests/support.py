"""What the broker-free tests share: the core wired with a fixed test key, and schema validators."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator, FormatChecker

from models.decide import Decider
from models.passes import Signer
from models.policy import load_catalog
from models.reference import EnterpriseBook, RiskBook
from models.tracking import Tracker
from routing import Gazetteer, RegionGraph, RoutePlanner
from streams.handlers import Pipeline, Topics

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
T = Topics.with_prefix("gc.")


def validator(name):
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()),
                                format_checker=FormatChecker())


def make_pipeline() -> Pipeline:
    graph = RegionGraph.default()
    decider = Decider(catalog=load_catalog(), gazetteer=Gazetteer.default(), graph=graph,
                      planner=RoutePlanner(graph), risk=RiskBook(), enterprises=EnterpriseBook(),
                      signer=Signer(KEY, "test"))
    return Pipeline(decider, Tracker(decider, KEY.public_key()), T, partitions=4)
