"""What the benchmarks send: realistic shipment requests and the reference data they need.

The request mix is `streams.simulator.Scenario`'s (P0-P3 classes, Chinese addresses, adcodes
and coordinates, about 10% refused) with 1% malformed inputs, as in `make demo`. The
reference data is the demo's opening state: the key-enterprise list, Wuhan high risk and
Huangshi, Shenzhen, Hangzhou medium, so some routes have to go around Wuhan.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import orjson

from models.records import format_time
from streams.simulator import Scenario

__all__ = ["Message", "requests", "reference", "OPENING_RISK"]

OPENING_RISK = (("4201", "high"), ("4202", "medium"), ("4403", "medium"), ("3301", "medium"))


@dataclass(frozen=True, slots=True)
class Message:
    key: bytes
    value: bytes


def requests(count: int, *, seed: int = 2020, start: int = 0, tag: str = "") -> list[Message]:
    """Requests number start..start+count-1 of a seeded scenario; every 100th is malformed.

    `tag` goes into the shipment ids so two batches of one scenario never share an id.
    """
    scenario = Scenario(seed=seed)
    out = []
    for n in range(start, start + count):
        if n % 100 == 99:
            out.append(Message(f"BAD-{seed}{tag}-{n:07d}".encode(), scenario.malformed(n)))
            continue
        body = scenario.request(n)
        if tag:
            body["shipment_id"] = f"SHP-{seed}{tag}-{n:07d}"
        out.append(Message(body["shipment_id"].encode(), orjson.dumps(body)))
    return out


def reference(seed: int = 2020) -> tuple[list[Message], list[Message]]:
    """(enterprise entries, risk levels) to put on their topics before a worker starts."""
    scenario = Scenario(seed=seed)
    firms = [Message(e["credit_code"].encode(), orjson.dumps(e)) for e in scenario.enterprise_entries()]
    opening = format_time(scenario.start - timedelta(hours=1))
    risks = [Message(a.encode(), orjson.dumps({"adcode": a, "level": lv, "effective_at": opening}))
             for a, lv in OPENING_RISK]
    return firms, risks
